"""API-format workflow templates with named placeholders.

Any input value of a workflow exported with ComfyUI's *Export (API)* may be a placeholder string:
"{{prompt}}" alone is replaced by the value itself, with its type (an int seed, a float control);
a placeholder inside a longer string ("a photo of {{subject}}") is replaced by the value's text.
The runner fills reference_image, prompt, seed, control and subject; a method's params fill the rest.
"""
import copy
import json
import re
from pathlib import Path

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
RUNNER_VALUES = ("reference_image", "prompt", "seed", "control", "subject")


def load_template(path):
    path = Path(path)
    try:
        workflow = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"workflow template {path} could not be read as JSON: {e}") from None
    if not isinstance(workflow, dict) or not all(isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        raise ValueError(f"{path} is not an API-format workflow (node id -> {{class_type, inputs}}): in ComfyUI use "
                         "Workflow > Export (API), then put placeholders such as \"{{prompt}}\" in its inputs")
    return workflow


def placeholders(workflow):
    """The names of every placeholder in the workflow's input values."""
    found = set()
    for node in workflow.values():
        for value in node.get("inputs", {}).values():
            if isinstance(value, str):
                found.update(PLACEHOLDER.findall(value))
    return found


def fill(workflow, values):
    """A copy of the workflow with every placeholder replaced; KeyError names the missing ones."""
    missing = placeholders(workflow) - set(values)
    if missing:
        raise KeyError(f"no value for the placeholders {sorted(missing)}: add them to the method's params")
    filled = copy.deepcopy(workflow)
    for node in filled.values():
        inputs = node.get("inputs", {})
        for name, value in inputs.items():
            if not isinstance(value, str):
                continue
            whole = PLACEHOLDER.fullmatch(value)
            if whole:
                inputs[name] = values[whole.group(1)]
            else:
                inputs[name] = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    return filled
