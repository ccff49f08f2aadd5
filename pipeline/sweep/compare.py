"""The comparison of a sweep's runs: each run's measures, the best run, the table, sweep.md, sweep.json, the loss curves."""
from __future__ import annotations

import json
import math
import os

from components.common.evaluation import BLESSING_FILE, METRICS_FILE
from components.common.model import HISTORY_FILE
from pipeline.sweep.grid import Point

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
LOSS_CURVES = "loss_curves.png"
SELECTION = "macro F1 at threshold 0.5 on the test split (ties: macro AUC)"


def read_json(folder, name: str) -> dict:
    """The JSON file `name` in a local folder or gs:// prefix; {} when there is none or it cannot be read."""
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
    metrics = read_json(evaluation, METRICS_FILE)
    history = read_json(model, HISTORY_FILE)
    blessing = read_json(evaluation, BLESSING_FILE)
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
    worst = (metrics.get("slices") or {}).get("worst")
    out["worst_slice_f1"] = worst["macro_f1"] if worst else None
    out["worst_slice"] = f"{worst['feature']} = {worst['value']}" if worst else None
    return out


def score(entry: dict) -> tuple[float, float]:
    """What the best run is chosen by: (macro F1, macro AUC) at 0.5, a missing or NaN measure lowest."""
    m = entry.get("measures") or {}

    def num(x):
        return x if isinstance(x, (int, float)) and not math.isnan(x) else -math.inf

    return num(m.get("f1")), num(m.get("auc"))


def choose_best(entries: list[dict]) -> dict | None:
    """The succeeded point with the highest macro F1 at 0.5 (then macro AUC; then the first in grid order)."""
    done = [e for e in entries if e["status"] == "succeeded" and e.get("measures")]
    if not done:
        return None
    return max(done, key=lambda e: (score(e), -entries.index(e)))


def comparison_table(record: dict, entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(head, rows): each point's varied parameters and the study's measures, formatted as evaluate formats them."""
    from components.common.metric_tables import format_number, table_rows

    keys = list(record["grid"])
    head = (["run"] + keys + ["status", "accuracy", "partial acc", "P", "R", "F1", "AUC", "TP", "FP", "TN", "FN",
                              "F1@thr", "worst slice F1", "blessed", "epochs", "best val loss", "train s",
                              "evaluate s"])
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
                      micro["TP"], micro["FP"], micro["TN"], micro["FN"], macro["F1@thr"], _worst_slice(m),
                      {True: "yes", False: "no"}.get(e.get("blessed"), "-")]
        else:
            cells += ["-"] * 13
        secs = e.get("seconds") or {}
        cells += [format_number(e.get("epochs")), format_number(e.get("best_val_loss")),
                  format_number(secs.get("train"), 1) if "train" in secs else "-",
                  format_number(secs.get("evaluate"), 1) if "evaluate" in secs else "-"]
        rows.append(cells)
    return head, rows


def _worst_slice(metrics: dict) -> str:
    """The worst slice's macro F1 at 0.5 and which slice it is ("-" for a run without slices)."""
    from components.common.metric_tables import format_number, worst_slice

    w = worst_slice(metrics)
    return f"{format_number(w['macro_f1'])} ({w['feature']} {w['value']})" if w else "-"


_TABLE_NOTE = ("P, R, F1 and AUC: macro over the AUs at threshold 0.5; TP/FP/TN/FN: summed over the AUs at 0.5; "
               "F1@thr: macro F1 at the per-AU thresholds tuned on the validation split; worst slice F1: the lowest "
               "macro F1 at 0.5 of a test slice evaluate measured (components/evaluate/slices.py); labels 999 left "
               "out of every count; all on the test split.")


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
    """sweep.md: the grid, what was fixed, the table, the outcome and the loss curves."""
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
