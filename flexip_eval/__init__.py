"""Evaluation of FlexIP (and of any other method run in ComfyUI): generate a benchmark through the
ComfyUI HTTP API on one or many servers, score it with the paper's metrics (flexip_core.metrics,
.aesthetic, .smoothness) and write a Markdown report with plots.

    python -m flexip_eval run SPEC.toml      # generate (resumable), score, report
    python -m flexip_eval score SPEC.toml    # score the images on disk again, report
"""
