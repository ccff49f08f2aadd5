"""Sweeps: one pass of the data steps, then a train -> evaluate run per point of a grid of parameters, and a comparison.

Locally (`pipeline.py sweep`) the data steps (ingest, download, validate, convert, filter) run once with
kfp.local; each grid point then runs train and evaluate on the filtered examples (a `dsl.importer`
of that folder), one after another, each in its own folder; the comparison table, the loss curves
of every run in one plot, and the push of the best run end it. On a cluster (`pipeline.py
sweep-submit`) a data run runs the data steps once and publishes the filtered examples; then every
point is a run of train -> evaluate -> push on them (a `dsl.importer` of that URI), all in one KFP
experiment, each pushing into its own candidate registry; `pipeline.py sweep-pick` then compares them
and pushes the best, as a local sweep does.

Only parameters that train or evaluate read, and no data step nor push, may vary: the data steps are
shared by every point, and the registry is where the sweep pushes.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import time

from pipeline import defaults

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
LOSS_CURVES = "loss_curves.png"
# The steps a sweep runs once, and those it runs per point: the DAG's own tasks, wired as in the DAG.
DATA_STEPS = ("ingest", "download", "validate", "convert", "filter-examples")
POINT_STEPS = ("train", "evaluate")
SELECTION = "macro F1 at threshold 0.5 on the test split (ties: macro AUC)"
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class SweepError(ValueError):
    """A grid or sweep the user asked for that cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its folder and run name, and the parameters it sets."""

    name: str
    values: dict

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


# --- the grid ---------------------------------------------------------------------------------


def add_grid_arguments(parser) -> None:
    """--grid and --max-points (pipeline.py sweep and sweep-submit)."""
    g = parser.add_argument_group("sweep")
    g.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="A train or evaluate parameter and its values, e.g. --grid batch_size=32,64,128 (repeatable: "
                        "the sweep runs every combination). Data-step parameters (aus, policy, faces...) cannot vary: "
                        "the data steps run once for the whole sweep.")
    g.add_argument("--max-points", type=int, default=defaults.SWEEP_MAX_POINTS, metavar="N",
                   help="Refuse a grid of more points than this (default: %(default)s)")


def given_flags(args) -> dict:
    """The pipeline parameters typed as flags, without those a --preset brings: a grid may vary a preset's value."""
    import argparse

    from pipeline.params import pipeline_arguments

    return pipeline_arguments(argparse.Namespace(**{**vars(args), "preset": None}))


def add_push_argument(parser) -> None:
    """--push (pipeline.py sweep and sweep-pick)."""
    parser.add_argument("--push", choices=defaults.SWEEP_PUSH_MODES, default=defaults.SWEEP_PUSH,
                        help="Which models go to the registry: best (the highest macro F1 at threshold 0.5 on the "
                             "test split, then macro AUC), all (best last, so LATEST names it) or none; each only when "
                             "blessed, unless --force-push (default: %(default)s)")



def _dag_tasks():
    from pipeline.dag import au_pipeline

    return au_pipeline.pipeline_spec.root.dag.tasks


def _parameters_of(step: str) -> set[str]:
    """The pipeline parameters the DAG feeds into a step."""
    return {v.component_input_parameter for v in _dag_tasks()[step].inputs.parameters.values()
            if v.component_input_parameter}


def sweepable_parameters() -> dict[str, type]:
    """Pipeline parameters a grid may vary, with their types: those train or evaluate read, and no data step nor push."""
    from pipeline.params import pipeline_parameters

    fixed = set().union(*(_parameters_of(s) for s in DATA_STEPS + ("push",)))
    varying = set().union(*(_parameters_of(s) for s in POINT_STEPS)) - fixed
    return {name: typ for name, typ, _, _ in pipeline_parameters() if name in varying}


def _why_fixed(name: str) -> str:
    data = [s for s in DATA_STEPS if name in _parameters_of(s)]
    if data:
        return (f"it is a parameter of {', '.join(data)}, a data step the sweep runs once for all its points; "
                f"run one sweep per value (e.g. pipeline.py sweep --{name.replace('_', '-')} VALUE --grid ...)")
    if name in _parameters_of("push"):
        return "it says where and how the sweep pushes, the same for every point; give it as a flag"
    return "it is not a parameter of train or evaluate"


def _parse_value(name: str, typ: type, text: str):
    text = text.strip()
    if typ is bool:
        if text.lower() not in _BOOLS:
            raise SweepError(f"--grid {name}: {text!r} is not a boolean; use true or false")
        return _BOOLS[text.lower()]
    try:
        value = typ(text)
    except ValueError:
        raise SweepError(f"--grid {name}: {text!r} is not {'an' if typ is int else 'a'} {typ.__name__}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepError(f"--grid {name}: {text!r} is not a finite number")
    return value


def parse_grid(texts: list[str], fixed: dict | None = None, max_points: int = defaults.SWEEP_MAX_POINTS) -> dict:
    """{parameter: [values]} from --grid NAME=V1,V2,... (names as pipeline parameters, - or _), typed as the DAG's.

    fixed: the parameters given as flags (given_flags), which a grid may not vary too.
    """
    from pipeline.params import pipeline_parameters

    fixed = fixed or {}
    known = {name for name, _, _, _ in pipeline_parameters()}
    sweepable = sweepable_parameters()
    grid: dict[str, list] = {}
    if not texts:
        raise SweepError("give at least one --grid NAME=V1,V2 (e.g. --grid batch_size=32,64 --grid learning_rate=0.01,0.001)")
    for text in texts:
        key, sep, values = text.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise SweepError(f"--grid {text!r}: expected NAME=V1,V2,..., e.g. --grid learning_rate=0.01,0.001")
        if name not in known:
            raise SweepError(f"--grid {text!r}: {name!r} is not a pipeline parameter; those a sweep may vary: "
                             f"{', '.join(sorted(sweepable))}")
        if name not in sweepable:
            raise SweepError(f"--grid {text!r}: {name} cannot vary in a sweep: {_why_fixed(name)}")
        if name in grid:
            raise SweepError(f"--grid {name} is given twice; give all its values once: --grid {name}=V1,V2,...")
        if name in fixed:
            raise SweepError(f"{name} is given both as --{name.replace('_', '-')} and in --grid; keep one")
        parts = [v for v in values.split(",")]
        if not values.strip() or any(not v.strip() for v in parts):
            raise SweepError(f"--grid {text!r}: an empty value; expected NAME=V1,V2,... with no empty item")
        parsed = [_parse_value(name, sweepable[name], v) for v in parts]
        if len(set(parsed)) != len(parsed):
            raise SweepError(f"--grid {text!r}: a value is repeated; each point must differ")
        grid[name] = parsed
    if fixed.get("task", defaults.TRAIN_TASK) != "au" or "va" in grid.get("task", []):
        raise SweepError("a sweep compares Action Unit models by the study's measures (F1, AUC...); "
                         "task va is not supported: sweep with --task au")
    n = math.prod(len(v) for v in grid.values())
    if n > max_points:
        raise SweepError(f"the grid has {n} points, more than --max-points {max_points}; "
                         "narrow it or raise --max-points")
    return grid


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_") or "_"


def grid_points(grid: dict) -> list[Point]:
    """Every combination, the last key varying fastest; names are numbered so each folder and run is distinct."""
    keys = list(grid)
    points = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys)), 1):
        values = dict(zip(keys, combo))
        name = f"{i:02d}-" + "-".join(f"{k}={_slug(v)}" for k, v in values.items())
        points.append(Point(name, values))
    return points


def point_parameters(params: dict, point: Point) -> dict:
    """The parameters of one point's run: the sweep's, the point's values, and its own checkpoint folder."""
    out = {**params, **point.values}
    if out.get("checkpoint_dir"):
        # Points sharing one checkpoint folder would resume from each other's epochs.
        from components.common import storage

        out["checkpoint_dir"] = storage.join(out["checkpoint_dir"], point.name)
    return out


# --- locally ----------------------------------------------------------------------------------


def sub_pipeline(name: str, steps: tuple[str, ...], params: dict, imported: dict | None = None, platform=None,
                 publish_to: str | None = None):
    """A @dsl.pipeline running `steps` of the DAG, wired exactly as the DAG wires them (read from its spec).

    params: every pipeline parameter's value (baked in as constants). imported: {(producer step,
    output): path or URI} for the artifacts of steps not in `steps`; each comes in through a dsl.importer.
    platform: sets each task's image and resources (pipeline.platform; a cluster's). publish_to: the filtered
    examples are also copied there (the publish step), for the point runs of a cluster sweep to import.
    """
    from kfp import dsl

    from pipeline.dag import STEPS

    spec = _dag_tasks()
    imported = imported or {}

    @dsl.pipeline(name=name, description=defaults.PIPELINE_DESCRIPTION)
    def part():
        made, importers = {}, {}
        for step in (s for s in STEPS if s in steps):
            task_spec = spec[step]
            kwargs = {}
            for arg, v in task_spec.inputs.parameters.items():
                kwargs[arg] = params[v.component_input_parameter]
            for arg, a in task_spec.inputs.artifacts.items():
                source = (a.task_output_artifact.producer_task, a.task_output_artifact.output_artifact_key)
                if source[0] in made:
                    kwargs[arg] = made[source[0]].outputs[source[1]]
                    continue
                if source not in imported:
                    raise SweepError(f"step {step} needs {source[1]} of {source[0]}, which this part neither runs nor imports")
                if source not in importers:
                    importers[source] = dsl.importer(artifact_uri=imported[source], artifact_class=dsl.Dataset,
                                                     reimport=False)
                kwargs[arg] = importers[source].output
            task = STEPS[step](**kwargs)
            for dep in task_spec.dependent_tasks:
                if dep in made:
                    task.after(made[dep])
            made[step] = task
        if publish_to:
            from components.publish.component import publish

            made["publish"] = publish(source=made["filter-examples"].outputs["filtered"], destination=publish_to)
        if platform is not None:
            for step, task in made.items():
                platform.configure(step, task)

    return part


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
    from pipeline.local import RunResult, StepRecord, step_json, write_summary
    from pipeline.report import write_report

    if push not in defaults.SWEEP_PUSH_MODES:
        raise SweepError(f"--push {push!r}: expected one of {', '.join(defaults.SWEEP_PUSH_MODES)}")
    started = time.monotonic()
    params = _with_defaults(arguments)
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

    filtered = data["filter-examples"].outputs["filtered"]
    results = []
    for i, point in enumerate(points, 1):
        run_dir = os.path.join(sweep_dir, point.name)
        say(f"\npoint {i}/{len(points)}: {point.label} -> {run_dir}")
        part = sub_pipeline(f"{defaults.PIPELINE_NAME}-point", POINT_STEPS, point_parameters(params, point),
                            {("filter-examples", "filtered"): filtered})
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
        # (the report step is left to pipeline.report, which writes the point's report.html beside it).
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


# --- the comparison ---------------------------------------------------------------------------


def _read_json(folder, name: str) -> dict:
    from components.common import storage

    if not folder:
        return {}
    try:
        return json.loads(storage.read_text(storage.join(str(folder), name)))
    except Exception:  # noqa: BLE001 - a missing or unreadable file reads as "not there", for a local folder or gs://
        return {}


def load_point(point: Point, status: str, model: str | None, evaluation: str | None, error: str = "",
               seconds: dict | None = None) -> dict:
    """A point's entry of sweep.json, with its measures (from metrics.json) and losses (from history.json)."""
    metrics = _read_json(evaluation, "metrics.json")
    history = _read_json(model, "history.json")
    blessing = _read_json(evaluation, "blessing.json")
    if status == "succeeded" and "at_default" not in metrics:
        status, error = "failed", error or f"no metrics.json in {evaluation}"
    entry = {
        "name": point.name,
        "parameters": dict(point.values),
        "status": status,
        "error": error,
        "model": model,
        "evaluation": evaluation,
        "seconds": {k: round(v, 2) for k, v in (seconds or {}).items()},
        "measures": measures(metrics) if "at_default" in metrics else {},
        "blessed": blessing.get("blessed"),
        "epochs": len(history.get("epochs") or []) or None,
        "best_val_loss": history.get("best_val_loss"),
        "loss": (history.get("metrics") or {}).get("loss") or [],
        "val_loss": (history.get("metrics") or {}).get("val_loss") or [],
        "_metrics": metrics,
    }
    return entry


def measures(metrics: dict) -> dict:
    """The study's measures of one run at threshold 0.5: accuracy, partial accuracy, macro P/R/F1/AUC, total TP/FP/TN/FN."""
    d, t = metrics["at_default"], metrics["at_tuned"]
    out = {"accuracy": d["accuracy"], "partial_accuracy": d["partial_accuracy"]}
    out.update({k: d["macro"][k] for k in ("precision", "recall", "f1", "auc")})
    out.update({k: d["micro"][k] for k in ("tp", "fp", "tn", "fn")})  # micro counts are the sums over the AUs
    out["f1_tuned"] = t["macro"]["f1"]
    return out


def _score(entry: dict) -> tuple[float, float]:
    m = entry.get("measures") or {}

    def num(x):
        return x if isinstance(x, (int, float)) and not math.isnan(x) else -math.inf

    return num(m.get("f1")), num(m.get("auc"))


def choose_best(entries: list[dict]) -> dict | None:
    """The succeeded point with the highest macro F1 at 0.5 (then macro AUC; then the first in grid order)."""
    done = [e for e in entries if e["status"] == "succeeded" and e.get("measures")]
    if not done:
        return None
    return max(done, key=lambda e: (_score(e), -entries.index(e)))


def comparison_table(record: dict, entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(head, rows): each point's varied parameters and the study's measures, formatted as evaluate formats them."""
    from components.evaluate.logic import format_number, table_rows

    keys = list(record["grid"])
    head = (["run"] + keys + ["status", "accuracy", "partial acc", "P", "R", "F1", "AUC", "TP", "FP", "TN", "FN",
                              "F1@thr", "blessed", "epochs", "best val loss", "train s", "evaluate s"])
    rows = []
    for e in entries:
        best = " (best)" if e["name"] == record.get("best") else ""
        cells = [e["name"] + best] + [str(e["parameters"].get(k, "")) for k in keys] + [e["status"]]
        m = e.get("_metrics") or {}
        if "at_default" in m:
            t_head, t_rows = table_rows(m, counts=True)
            macro = dict(zip(t_head, next(r for r in t_rows if r[0] == "macro")))
            micro = dict(zip(t_head, next(r for r in t_rows if r[0] == "micro")))
            cells += [format_number(m["at_default"]["accuracy"]), format_number(m["at_default"]["partial_accuracy"]),
                      macro["P@0.5"], macro["R@0.5"], macro["F1@0.5"], macro["AUC"],
                      micro["TP"], micro["FP"], micro["TN"], micro["FN"], macro["F1@thr"],
                      {True: "yes", False: "no"}.get(e.get("blessed"), "-")]
        else:
            cells += ["-"] * 12
        secs = e.get("seconds") or {}
        cells += [format_number(e.get("epochs")), format_number(e.get("best_val_loss")),
                  format_number(secs.get("train"), 1) if "train" in secs else "-",
                  format_number(secs.get("evaluate"), 1) if "evaluate" in secs else "-"]
        rows.append(cells)
    return head, rows


_TABLE_NOTE = ("P, R, F1 and AUC: macro over the AUs at threshold 0.5; TP/FP/TN/FN: summed over the AUs at 0.5; "
               "F1@thr: macro F1 at the per-AU thresholds tuned on the validation split; labels 999 left out of "
               "every count; all on the test split.")


def format_console(record: dict, entries: list[dict]) -> str:
    """The comparison as plain text: the table, the best run and where it went."""
    head, rows = comparison_table(record, entries)
    numeric = set(range(len(record["grid"]) + 2, len(head)))
    widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"sweep of {len(entries)} runs; data steps once ({record['data']['seconds']:.1f}s)",
           line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out += _outcome_lines(record)
    return "\n".join(out)


def _outcome_lines(record: dict) -> list[str]:
    out = []
    best = record.get("best")
    if best:
        out.append(f"best: {best}, by {SELECTION}")
    elif record.get("points") is not None:
        out.append("best: none (no point finished)")
    for p in record.get("pushed") or []:
        out.append(f"{p['name']}: {p['message']}")
    if record.get("push_mode") == "none":
        out.append("nothing pushed (--push none)")
    if record.get("error"):
        out.append(f"errors: {record['error']}")
    for e in record.get("points") or []:
        if e["status"] != "succeeded":
            out.append(f"{e['name']} failed: {e['error']}")
    return out


def format_markdown(record: dict, entries: list[dict]) -> str:
    head, rows = comparison_table(record, entries)
    grid = "; ".join(f"{k} = {', '.join(str(v) for v in vs)}" for k, vs in record["grid"].items())
    md = [f"# Sweep: {grid}", ""]
    if record.get("fixed"):
        md += ["Fixed: " + ", ".join(f"`{k}={v}`" for k, v in sorted(record["fixed"].items())), ""]
    md += [f"Data steps, once for every run: {'ok' if record['data']['ok'] else 'FAILED'}, "
           f"{record['data']['seconds']:.1f}s. Whole sweep: {record.get('seconds', 0):.1f}s.", ""]
    md += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    md += ["", _TABLE_NOTE, ""]
    md += [f"- {line}" for line in _outcome_lines(record)]
    md += ["", f"![train and validation loss of every run]({LOSS_CURVES})", ""]
    return "\n".join(md)


def plot_loss_curves(entries: list[dict], path: str) -> str:
    """Train (solid) and validation (dashed) loss per epoch of every run, one colour per run, in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    try:
        colours = plt.get_cmap("tab10" if len(entries) <= 10 else "tab20")
        drawn = 0
        for i, e in enumerate(entries):
            colour = colours(i % colours.N)
            # One legend entry per run (its colour); the line style says train or validation.
            if e.get("loss"):
                ax.plot(range(1, len(e["loss"]) + 1), e["loss"], "o-", markersize=3, color=colour, label=e["name"])
                drawn += 1
            if e.get("val_loss"):
                ax.plot(range(1, len(e["val_loss"]) + 1), e["val_loss"], "o--", markersize=3, color=colour,
                        label=None if e.get("loss") else e["name"])
        if not drawn:
            ax.text(0.5, 0.5, "no run finished training", ha="center", va="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (masked binary cross-entropy)")
        ax.set_title("training (solid) and validation (dashed) loss of each run")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, loc="upper right", ncol=1 + len(entries) // 12)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def write_comparison(folder: str, record: dict, entries: list[dict]) -> dict:
    """sweep.json, sweep.md and loss_curves.png in folder; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = {"json": os.path.join(folder, SWEEP_JSON), "markdown": os.path.join(folder, SWEEP_MD),
             "loss_curves": plot_loss_curves(entries, os.path.join(folder, LOSS_CURVES))}
    record["comparison"] = paths
    public = {**record, "points": [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries]}
    with open(paths["json"] + ".tmp", "w") as f:
        json.dump(public, f, indent=2, default=str)
    os.replace(paths["json"] + ".tmp", paths["json"])
    with open(paths["markdown"], "w") as f:
        f.write(format_markdown(record, entries))
    return paths


# --- the push ---------------------------------------------------------------------------------


def push_points(entries: list[dict], best: dict | None, mode: str, params: dict, output_dir) -> list[dict]:
    """Pushes the best (or every finished point, best last so LATEST names it) through the push step's logic.

    Each model is pushed only when blessed, unless force_push; output_dir(entry) is where its push.json goes.
    """
    from components.push import logic as push_logic
    from pipeline.local import step_figures

    if mode == "none" or best is None:
        return []
    if mode == "best":
        chosen = [best]
    else:
        done = [e for e in entries if e["status"] == "succeeded" and e.get("measures")]
        chosen = sorted(done, key=lambda e: (_score(e), -entries.index(e)))
    pushed = []
    for e in chosen:
        start = time.monotonic()
        out = output_dir(e)
        done = _read_json(out, push_logic.PUSH_FILE)
        if done.get("pushed"):
            # Picked before (sweep-pick again, once more runs have finished): the same model is not pushed twice.
            rec = dict(done, message=f"already pushed as version {done['version']} ({done['uri']})")
        else:
            rec = None
        try:
            rec = rec or push_logic.run(e["model"], e["evaluation"], out, destination=params["registry"],
                                 model_name=params["model_name"], force=params["force_push"],
                                 keep=params["keep_versions"])
        except push_logic.PushError as err:
            rec = {"pushed": False, "message": f"not pushed: {err}", "reasons": []}
        failed = [r for r in rec.get("reasons", []) if r.startswith("fail")]
        message = rec["message"] + (f" ({'; '.join(failed)})" if failed and not rec["pushed"] else "")
        entry = {"name": e["name"], "pushed": rec["pushed"], "version": rec.get("version"), "uri": rec.get("uri"),
                 "message": message, "output": out}
        e["_push"] = {"seconds": time.monotonic() - start, "output": out,
                      "figures": step_figures("push", {"pushed": out})}
        pushed.append(entry)
    return pushed


# --- on a cluster -----------------------------------------------------------------------------


def candidate_registry(registry: str, sweep_id: str, point: Point) -> str:
    """Where a cluster sweep's run pushes its model: its own registry beside the live one's models."""
    from components.common import storage

    return storage.join(registry, defaults.SWEEP_CANDIDATES, sweep_id, point.name)


def shared_examples_uri(pipeline_root: str, sweep_id: str) -> str:
    """Where a cluster sweep's data run publishes the filtered examples that every point run imports."""
    from components.common import storage

    return storage.join(pipeline_root, defaults.SWEEP_CANDIDATES, sweep_id, "examples")


def cluster_data_part(params: dict, examples_uri: str, platform):
    """The data run of a cluster sweep: the data steps once, the filtered examples published to examples_uri."""
    return sub_pipeline(f"{defaults.PIPELINE_NAME}-sweep-data", DATA_STEPS, _with_defaults(params), platform=platform,
                        publish_to=examples_uri)


def cluster_runs(params: dict, grid: dict, sweep_id: str, run_prefix: str) -> list[tuple[str, dict, Point]]:
    """(run name, parameters, point) per grid point: each pushes, forced, into its candidate registry only."""
    out = []
    for point in grid_points(grid):
        p = point_parameters(params, point)
        p["registry"] = candidate_registry(params["registry"], sweep_id, point)
        p["force_push"] = True  # every model lands in its candidate registry, so sweep-pick can compare all of them
        out.append((f"{run_prefix}-{point.name}", p, point))
    return out


def cluster_point_part(point_params: dict, examples_uri: str, platform):
    """A point run of a cluster sweep: train -> evaluate -> push on the examples the data run published."""
    return sub_pipeline(f"{defaults.PIPELINE_NAME}-sweep-point", POINT_STEPS + ("push",), _with_defaults(point_params),
                        imported={("filter-examples", "filtered"): examples_uri}, platform=platform)


def _with_defaults(params: dict) -> dict:
    from pipeline.params import pipeline_parameters

    return {**{name: default for name, _, default, _ in pipeline_parameters()}, **params}


def pick(plan: dict, out_dir: str, push: str = defaults.SWEEP_PUSH, force: bool | None = None, say=print) -> dict:
    """Compares the runs of a submitted sweep from their candidate registries and pushes the best to the live one."""
    from components.common import storage
    from components.push import registry as model_registry

    entries = []
    for p in plan["points"]:
        point = Point(p["name"], p["parameters"])
        root = model_registry.model_root(p["registry"], plan["model_name"])
        try:
            version = model_registry.read_latest(root)
        except Exception as e:  # noqa: BLE001 - a registry that cannot be read is a point without a model
            version, why = None, f"{root} cannot be read ({e})"
        else:
            why = f"no model in {root} yet: its run ({p.get('run_url') or p.get('run_id')}) is still going or failed"
        if not version:
            entries.append(load_point(point, "failed", None, None, why))
            continue
        folder = storage.join(root, version)
        entry = load_point(point, "succeeded", folder, folder)
        entry["seconds"] = {"train": _read_json(folder, "model_config.json").get("train_seconds")}
        entry["seconds"] = {k: v for k, v in entry["seconds"].items() if v is not None}
        entries.append(entry)
    record = {
        "sweep_id": plan["sweep_id"],
        "grid": plan["grid"],
        "fixed": plan.get("fixed", {}),
        "selection": SELECTION,
        "push_mode": push,
        "data": {"ok": True, "error": "", "seconds": 0.0,
                 "note": "on the cluster: the data run " + str((plan.get("data_run") or {}).get("run_url", "")) + ", once"},
        "points": entries,
    }
    best = choose_best(entries)
    record["best"] = best["name"] if best else None
    params = {"registry": plan["registry"], "model_name": plan["model_name"],
              "force_push": plan.get("force_push", False) if force is None else force,
              "keep_versions": plan.get("keep_versions", defaults.PUSH_KEEP)}
    record["pushed"] = push_points(entries, best, push, params, lambda e: os.path.join(out_dir, e["name"], "push"))
    for e in entries:
        e.pop("_push", None)
    record["ok"] = all(e["status"] == "succeeded" for e in entries)
    record["error"] = "" if record["ok"] else "points without a model: " + ", ".join(
        e["name"] for e in entries if e["status"] != "succeeded")
    write_comparison(out_dir, record, entries)
    say("\n" + format_console(record, entries))
    return record
