"""Runs the whole DAG on this machine with kfp.local (subprocesses in this environment) and summarises each step."""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field


@dataclass
class StepRecord:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)  # output name -> local path or value


@dataclass
class RunResult:
    run_dir: str
    ok: bool
    steps: list[StepRecord]
    error: str = ""

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)

    def output_path(self, step: str, output: str) -> str | None:
        s = self.step(step)
        return s.outputs.get(output) if s else None


def _describe(value):
    path = getattr(value, "path", None)
    if path is not None:
        return path
    return value


@contextlib.contextmanager
def _record_steps(records: dict[str, StepRecord]):
    """Wraps kfp.local's task dispatcher to time each task and keep its status and outputs.

    kfp.local only logs per-task status; the summary a user wants (status, time, where the
    outputs are) needs the same facts as data.
    """
    from kfp.local import status as kfp_status
    from kfp.local import task_dispatcher

    original = task_dispatcher.run_single_task_implementation

    def timed(*args, **kwargs):
        name = kwargs.get("component_name") or (args[1] if len(args) > 1 else "?")
        step = name.removeprefix("comp-")
        rec = records.setdefault(step, StepRecord(step))
        rec.status = "running"
        start = time.monotonic()
        try:
            outputs, st = original(*args, **kwargs)
        except BaseException:
            rec.status = "failed"
            rec.seconds = time.monotonic() - start
            raise
        rec.seconds = time.monotonic() - start
        rec.status = "succeeded" if st == kfp_status.Status.SUCCESS else "failed"
        rec.outputs = {k: _describe(v) for k, v in (outputs or {}).items()}
        return outputs, st

    task_dispatcher.run_single_task_implementation = timed
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original


def run_pipeline(arguments: dict, run_dir: str, pipeline_func=None) -> RunResult:
    """Runs the DAG with kfp.local's SubprocessRunner in this Python environment, pipeline root run_dir."""
    from kfp import local

    from pipeline.dag import STEPS

    if pipeline_func is None:
        from pipeline.dag import au_pipeline as pipeline_func
    os.makedirs(run_dir, exist_ok=True)
    # use_venv=False: every step runs with this interpreter, so the project's own, already
    # installed environment is what the steps import (no pip at run time).
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(run_dir), raise_on_error=False)
    records: dict[str, StepRecord] = {name: StepRecord(name) for name in STEPS}
    error = ""
    with warnings.catch_warnings():
        # kfp.local warns that our cluster images are not python images; they are not used here.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        with _record_steps(records):
            try:
                pipeline_func(**arguments)
            except Exception as e:  # kfp.local raises when the pipeline fails even with raise_on_error=False
                error = f"{type(e).__name__}: {e}"
    steps = [records[n] for n in STEPS]
    ok = all(s.status == "succeeded" for s in steps)
    if not ok and not error:
        failed = [s.name for s in steps if s.status == "failed"]
        error = f"step {failed[0]} failed; its log is above" if failed else "the pipeline stopped early"
    return RunResult(run_dir=run_dir, ok=ok, steps=steps, error=error)


def format_summary(result: RunResult) -> str:
    """Each step, its status, its time and where its outputs are."""
    lines = [f"{'step':<16} {'status':<10} {'time':>8}  outputs"]
    for s in result.steps:
        outs = "; ".join(f"{k}: {v}" for k, v in s.outputs.items()) if s.outputs else "-"
        t = f"{s.seconds:7.1f}s" if s.status not in ("not run",) else "       -"
        lines.append(f"{s.name:<16} {s.status:<10} {t:>8}  {outs}")
    total = sum(s.seconds for s in result.steps)
    lines.append(f"{'total':<16} {'ok' if result.ok else 'FAILED':<10} {total:7.1f}s  pipeline root: {result.run_dir}")
    return "\n".join(lines)


def write_summary(result: RunResult) -> str:
    path = os.path.join(result.run_dir, "run_summary.json")
    with open(path, "w") as f:
        json.dump(
            {
                "ok": result.ok,
                "error": result.error,
                "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 2),
                           "outputs": {k: str(v) for k, v in s.outputs.items()}} for s in result.steps],
            },
            f,
            indent=2,
        )
    return path
