"""The local sweep (`pipeline.py sweep`): the data steps once with kfp.local, train -> evaluate per point, one after
another, each in its own folder; then the comparison and the push."""
from __future__ import annotations

import os
import time

from pipeline import defaults
from pipeline.sweep import SweepError
from pipeline.sweep.compare import SELECTION, choose_best, format_console, load_point, write_comparison
from pipeline.sweep.dag import DATA_STEPS, POINT_STEPS, sub_pipeline, with_defaults
from pipeline.sweep.grid import grid_points, point_parameters
from pipeline.sweep.push import push_points


def _run_part(pipeline_func, steps, run_dir: str, verbose: bool):
    """Runs a part of the DAG with the local runner; (ok, error, {step: StepRecord}) of its steps."""
    from pipeline.local import run_pipeline

    result = run_pipeline({}, run_dir, pipeline_func=pipeline_func, verbose=verbose)
    records = {s.name: s for s in result.steps if s.name in steps}
    ok = all(r.status == "succeeded" for r in records.values())
    failed = [r for r in records.values() if r.status == "failed"]
    error = "" if ok else (f"step {failed[0].name} failed; its log: {failed[0].log}" if failed
                           else result.error or "the pipeline stopped early")
    return ok, error, records


def run_local(arguments: dict, grid: dict, sweep_dir: str, push: str = defaults.SWEEP_PUSH, verbose: bool = False,
              say=print) -> dict:
    """The whole local sweep: data steps once, train -> evaluate per point, comparison, push. Returns sweep.json."""
    from pipeline.dag import STEPS
    from components.report.records import RunResult, StepRecord
    from pipeline.local import step_json, write_report, write_summary

    if push not in defaults.SWEEP_PUSH_MODES:
        raise SweepError(f"--push {push!r}: expected one of {', '.join(defaults.SWEEP_PUSH_MODES)}")
    started = time.monotonic()
    params = with_defaults(arguments)
    points = grid_points(grid)
    sweep_dir = os.path.abspath(sweep_dir)
    os.makedirs(sweep_dir, exist_ok=True)
    say(f"\ndata steps, once for all {len(points)} points: {os.path.join(sweep_dir, defaults.SWEEP_DATA_DIR)}")
    data_part = sub_pipeline(f"{defaults.PIPELINE_NAME}-data", DATA_STEPS, params)
    ok, error, data = _run_part(data_part, DATA_STEPS, os.path.join(sweep_dir, defaults.SWEEP_DATA_DIR), verbose)
    record = {
        "sweep_dir": sweep_dir,
        "grid": grid,
        "fixed": {k: v for k, v in arguments.items() if k not in grid},
        "selection": SELECTION,
        "push_mode": push,
        "data": {"ok": ok, "error": error, "seconds": round(sum(r.seconds for r in data.values()), 2),
                 "steps": [step_json(r) for r in data.values()]},
        "points": [],
    }
    if not ok:
        record.update(ok=False, error=f"the data steps failed, so no point ran: {error}",
                      seconds=round(time.monotonic() - started, 2))
        write_comparison(sweep_dir, record, [])
        return record

    # Each point imports the data part's filtered examples, and ingest's manifest for evaluate's URL-host slices.
    shared = {("filter-examples", "filtered"): data["filter-examples"].outputs["filtered"],
              ("ingest", "manifest"): data["ingest"].outputs["manifest"]}
    results = []
    for i, point in enumerate(points, 1):
        run_dir = os.path.join(sweep_dir, point.name)
        say(f"\npoint {i}/{len(points)}: {point.label} -> {run_dir}")
        part = sub_pipeline(f"{defaults.PIPELINE_NAME}-point", POINT_STEPS, point_parameters(params, point),
                            shared)
        p_ok, p_error, steps = _run_part(part, POINT_STEPS, run_dir, verbose)
        model = steps["train"].outputs.get("model")
        evaluation = steps["evaluate"].outputs.get("evaluation")
        entry = load_point(point, "succeeded" if p_ok else "failed", model, evaluation, p_error,
                           {s: steps[s].seconds for s in POINT_STEPS})
        entry["run_dir"] = run_dir
        entry["log"] = next((r.log for r in steps.values() if r.status == "failed"), "")
        entry["_steps"] = steps
        results.append(entry)

    best = choose_best(results)
    record["best"] = best["name"] if best else None
    record["pushed"] = push_points(results, best, push, params, lambda e: os.path.join(e["run_dir"], "push"))
    for entry in results:
        # Each point's run reads as a run of the whole DAG: the shared data steps, its train and evaluate, its push
        # (the report step is left to write_report, which writes the point's report.html beside it).
        known = {**data, **entry.pop("_steps")}
        pushed = entry.pop("_push", None)
        if pushed is not None:
            known["push"] = StepRecord("push", "succeeded", pushed["seconds"], {"pushed": pushed["output"]},
                                       figures=pushed["figures"])
        steps = [known.get(name) or StepRecord(name) for name in STEPS]
        run = RunResult(run_dir=entry["run_dir"], ok=entry["status"] == "succeeded", steps=steps, error=entry["error"])
        os.makedirs(run.run_dir, exist_ok=True)
        write_summary(run)
        entry["report"] = write_report(run)
    record["points"] = results
    record["ok"] = all(e["status"] == "succeeded" for e in results)
    record["error"] = "" if record["ok"] else "failed points: " + ", ".join(
        e["name"] for e in results if e["status"] != "succeeded")
    record["seconds"] = round(time.monotonic() - started, 2)
    write_comparison(sweep_dir, record, results)
    say("\n" + format_console(record, results))
    return record
