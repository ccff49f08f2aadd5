"""The run report from the step outputs' folders alone, as the report step makes it where no local runner watched."""
from __future__ import annotations

import os

# The output of each step that the report reads (contracts 1-6), in DAG order: the step's task name -> its output.
REPORT_INPUTS = {
    "ingest": "manifest",
    "download": "downloads",
    "validate": "validation",
    "convert": "examples",
    "filter-examples": "filtered",
    "train": "model",
    "evaluate": "evaluation",
    "push": "pushed",
}


def render_outputs(folders: dict[str, str], run_dir: str) -> str:
    """The HTML page of a run whose steps all succeeded (else this step would not run), from their output folders
    (output name -> folder, REPORT_INPUTS' names). Step times are not known here; the key figures are."""
    from pipeline.local import RunResult, StepRecord, step_figures
    from pipeline.report import render

    missing = sorted(set(REPORT_INPUTS.values()) - set(folders))
    if missing:
        raise ValueError(f"the report needs every step's output; missing: {', '.join(missing)}")
    steps = []
    for step, name in REPORT_INPUTS.items():
        outputs = {name: folders[name]}
        steps.append(StepRecord(step, "succeeded", None, outputs, figures=step_figures(step, outputs)))
    return render(RunResult(run_dir=run_dir, ok=True, steps=steps))


def run(folders: dict[str, str], output_path: str, run_dir: str = "") -> str:
    """Writes the page to output_path (a file); run_dir names the run (default: the folder two levels up, the run's
    folder in the pipeline root). Returns output_path."""
    run_dir = run_dir or os.path.dirname(os.path.dirname(os.path.abspath(output_path)))
    page = render_outputs(folders, run_dir)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(output_path + ".tmp", output_path)
    return output_path
