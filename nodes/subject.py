"""SaveSubject and LoadSubject: a subject's reference features as a file in models/flexip_subjects,
reused without loading CLIP ViT-H and DINOv2-L again (the format: flexip_core.subject_file)."""
import os
import re

import folder_paths

from ..flexip_core.file_names import FileNameError, check_prefix
from ..flexip_core.subject_file import FlexIPSubjectError, load_subject, save_subject
from .errors import FlexIPInputError

FOLDER = "flexip_subjects"
EXTENSION = ".safetensors"
SAVE, LOAD = "FlexIPSaveSubject", "FlexIPLoadSubject"
# Registered at import, beside any "flexip_subjects:" entries of the user's extra_model_paths.yaml;
# only .safetensors files are listed (a subject is never anything else).
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
folder_paths.folder_names_and_paths[FOLDER] = (folder_paths.folder_names_and_paths[FOLDER][0], {EXTENSION})


def subjects_folder():
    """Where new subjects go: the first folder registered for flexip_subjects."""
    return os.path.abspath(folder_paths.get_folder_paths(FOLDER)[0])


def file_suffix(counter):
    return f"_{counter:05}{EXTENSION}"


def checked_prefix(prefix, folder, counter):
    """(subfolder, name) of a prefix whose file gets this counter, or the refusal naming node and input."""
    try:
        return check_prefix(prefix, folder, file_suffix(counter))
    except FileNameError as e:
        raise FlexIPInputError(SAVE, "filename_prefix", e.problem, e.fix) from None


def first_free_counter(folder, name):
    """1 + the highest counter of folder/name_#####.safetensors (1 if there is none)."""
    pattern = re.compile(re.escape(name) + r"_(\d{5,})" + re.escape(EXTENSION))
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return 1 + max((int(m.group(1)) for f in names if (m := pattern.fullmatch(f))), default=0)


class SaveSubject:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Saves the subject's reference features (CLIP ViT-H and DINOv2-L outputs) to "
                   "models/flexip_subjects, so FlexIP Load Subject reuses the subject without loading the two "
                   "encoders again. Never overwrites: each save gets the next counter.")
    RETURN_TYPES = ("FLEXIP_REFERENCE",)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The same reference, unchanged, for the adapters of this graph.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flexip": ("FLEXIP", {"tooltip": "From FlexIPLoader: the one the Reference Encoder used (its config is "
                                  "recorded; the subject loads with every FlexIP file of that config)."}),
            "reference": ("FLEXIP_REFERENCE", {"tooltip": "From ReferenceEncoder: the subject to save."}),
            "filename_prefix": ("STRING", {"default": "subject", "tooltip": "File name in models/flexip_subjects, "
                                           "without extension; a counter is added (subject_00001.safetensors). "
                                           "'cats/tabby' saves in a subfolder. Refused: '..', absolute paths, control "
                                           "characters, the characters <>:\"|?*\\, Windows device names (CON, NUL, "
                                           "COM1, ...), folder names ending in a dot or space, names too long "
                                           "for the file system."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        # A typed prefix is refused when the prompt is queued, before any model loads (the first
        # counter stands in for the one the save takes). A linked prefix arrives as None here and
        # is checked by save().
        if filename_prefix is not None:
            try:
                checked_prefix(filename_prefix, subjects_folder(), 1)
            except FlexIPInputError as e:
                return str(e)
        return True

    def save(self, flexip, reference, filename_prefix):
        folder = subjects_folder()
        subfolder, name = checked_prefix(filename_prefix, folder, 1)
        counter = first_free_counter(subfolder, name)
        subfolder, name = checked_prefix(filename_prefix, folder, counter)  # a longer counter may not fit
        os.makedirs(subfolder, exist_ok=True)
        while True:  # another save may take a counter between the listing and the write
            path = os.path.join(subfolder, name + file_suffix(counter))
            try:
                save_subject(reference, flexip.config, path)
                break
            except FileExistsError:
                counter += 1
                checked_prefix(filename_prefix, folder, counter)
            except FlexIPSubjectError as e:
                raise FlexIPInputError(SAVE, "reference", e.problem, e.fix) from e
        saved_as = os.path.relpath(path, folder).replace(os.sep, "/")
        return {"ui": {"subject_name": [saved_as]}, "result": (reference,)}


class LoadSubject:
    CATEGORY = "FlexIP"
    DESCRIPTION = ("Loads a subject saved by FlexIP Save Subject (models/flexip_subjects): the reference features "
                   "without CLIP ViT-H, DINOv2-L or a reference image. The file must have been saved for the "
                   "connected FlexIP file's config.")
    RETURN_TYPES = ("FLEXIP_REFERENCE",)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The saved subject's CLIP [CLS] embeddings and DINOv2 patch tokens, for both adapters.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flexip": ("FLEXIP", {"tooltip": "From FlexIPLoader: the subject must have been saved for its config."}),
            "subject_name": (folder_paths.get_filename_list(FOLDER), {
                "tooltip": "A subject in models/flexip_subjects (or a 'flexip_subjects:' folder of "
                           "extra_model_paths.yaml), saved by FlexIP Save Subject."}),
        }}

    @classmethod
    def IS_CHANGED(cls, subject_name, **linked):
        # A file replaced under the same name is loaded again. ComfyUI also passes the linked
        # input (flexip) here, as None.
        path = folder_paths.get_full_path(FOLDER, subject_name)
        return os.path.getmtime(path) if path else ""

    @classmethod
    def VALIDATE_INPUTS(cls, subject_name):
        # Replaces ComfyUI's bare "Value not in list" with what to do about it.
        if folder_paths.get_full_path(FOLDER, subject_name) is None:
            return (f"{LOAD}, input 'subject_name': no subject '{subject_name}' in models/flexip_subjects. Fix: save "
                    "one with FlexIP Save Subject (or put a subject .safetensors file in "
                    "ComfyUI/models/flexip_subjects) and refresh the page (R).")
        return True

    def load(self, flexip, subject_name):
        path = folder_paths.get_full_path_or_raise(FOLDER, subject_name)
        try:
            return (load_subject(path, flexip.config),)
        except FlexIPSubjectError as e:
            raise FlexIPInputError(LOAD, "subject_name", f"{subject_name}: {e.problem}", e.fix) from e
