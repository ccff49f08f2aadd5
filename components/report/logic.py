"""The run report from the step outputs' folders alone, as the report step makes it where no local runner watched."""
from __future__ import annotations

import os

from components.report.params import REPORT_INPUTS, SPEC
from components.report.records import RunResult, StepRecord, step_figures
from components.report.render import render


def render_outputs(folders: dict[str, str], run_dir: str) -> str:
    """The HTML page of a run whose steps all succeeded (else this step would not run), from their output folders
    (output name -> folder, REPORT_INPUTS' names). Step times are not known here; the key figures are."""
    missing = sorted({name for name, _ in REPORT_INPUTS} - set(folders))
    if missing:
        raise ValueError(f"the report needs every step's output; missing: {', '.join(missing)}")
    steps = []
    for name, step in REPORT_INPUTS:
        outputs = {name: folders[name]}
        steps.append(StepRecord(step, "succeeded", None, outputs, figures=step_figures(step, outputs)))
    return render(RunResult(run_dir=run_dir, ok=True, steps=steps))


def run(folders: dict[str, str], output_path: str, run_name: str = SPEC.defaults.run_name) -> str:
    """Writes the page to output_path (a file); run_name names the run (default: the folder two levels up, the run's
    folder in the pipeline root). Returns output_path."""
    run_dir = run_name or os.path.dirname(os.path.dirname(os.path.abspath(output_path)))
    page = render_outputs(folders, run_dir)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(output_path + ".tmp", output_path)
    return output_path
