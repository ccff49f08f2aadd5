"""metrics.json (contract 5) as tables: the per-AU rows, the overall line and each figure as every table prints it
(evaluate's report.md and console, the run report, a sweep's comparison)."""
from __future__ import annotations

import math

from components.common import labels


def format_number(x, digits: int = 3) -> str:
    """A figure as the tables print it: "-" for none or NaN, integers as they are, others to `digits` places."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def table_rows(metrics: dict, counts: bool = False) -> tuple[list[str], list[list[str]]]:
    """The per-label table of a metrics.json as (head, rows of strings); counts adds TP, FP, TN and FN at 0.5."""
    if metrics["task"] == "va":
        head = ["target", "examples", "MSE", "RMSE", "CCC"]
        rows = [[n] + [format_number(metrics[n][k]) for k in ("examples", "mse", "rmse", "ccc")]
                for n in labels.VA_COLUMNS]
        rows.append(["mean", format_number(metrics["examples"]), format_number(metrics["mean_mse"]), "",
                     format_number(metrics["mean_ccc"])])
        return head, rows
    confusion = ("tp", "fp", "tn", "fn") if counts else ()
    head = (["AU", "name", "pos", "neg", "unk"] + [c.upper() for c in confusion]
            + ["P@0.5", "R@0.5", "F1@0.5", "AUC", "thr", "P@thr", "R@thr", "F1@thr"])
    rows = []
    d0, dt = metrics["at_default"], metrics["at_tuned"]
    for a, b in zip(d0["per_label"], dt["per_label"]):
        rows.append([f"AU{a['au']}", a.get("name", ""), str(a["positives"]), str(a["negatives"]), str(a["unknown"])]
                    + [format_number(a[c]) for c in confusion]
                    + [format_number(a[k]) for k in ("precision", "recall", "f1", "auc")]
                    + [format_number(b["threshold"], 2)] + [format_number(b[k]) for k in ("precision", "recall", "f1")])
    for avg in ("micro", "macro"):
        a, b = d0[avg], dt[avg]
        rows.append([avg, "", "", "", ""] + [format_number(a[c], 1) for c in confusion]
                    + [format_number(a[k]) for k in ("precision", "recall", "f1", "auc")]
                    + [""] + [format_number(b[k]) for k in ("precision", "recall", "f1")])
    return head, rows


def overall_line(metrics: dict) -> str:
    """Accuracy, partial accuracy and exact match at 0.5 and tuned thresholds ("" for the va task)."""
    return "".join(overall_lines(metrics))


def overall_lines(metrics: dict) -> list[str]:
    """overall_line as a list: its one line for the au task, none for va."""
    if metrics["task"] == "va":
        return []
    d0, dt = metrics["at_default"], metrics["at_tuned"]
    return [
        f"accuracy {format_number(d0['accuracy'])} (tuned {format_number(dt['accuracy'])}), "
        f"partial accuracy {format_number(d0['partial_accuracy'])} (tuned {format_number(dt['partial_accuracy'])}), "
        f"exact match {format_number(d0['exact_match'])} (tuned {format_number(dt['exact_match'])})"
    ]


def format_table(metrics: dict) -> str:
    """The per-AU table of a metrics.json (plain text, for a terminal)."""
    head, rows = table_rows(metrics)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    numeric = [i for i, h in enumerate(head) if h not in ("AU", "name", "target")]

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    title = f"{metrics['split']} split, {metrics['examples']} examples"
    if metrics["task"] == "au":
        title += "; thr = per-AU threshold tuned on the validation split"
    out = [title, line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out + overall_lines(metrics))


def slice_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """metrics.json's "slices" as (head, rows): each measured slice's examples, macro F1 and AUC at 0.5 and at the
    tuned thresholds, then each slice too small to measure (no rows when the metrics have no slices)."""
    slices = metrics.get("slices") or {}
    head = ["slice", "value", "examples", "F1@0.5", "AUC", "F1@thr", "AUs"]
    rows = [[m["feature"], m["value"], str(m["examples"]), format_number(m.get("macro_f1")),
             format_number(m.get("macro_auc")), format_number(m.get("macro_f1_tuned")), str(m.get("aus_measured", ""))]
            for m in slices.get("measured", [])]
    rows += [[m["feature"], m["value"], str(m["examples"]), "too small", "", "", ""]
             for m in slices.get("too_small", [])]
    return head, rows


def worst_slice(metrics: dict) -> dict | None:
    """The worst measured slice of a metrics.json ({"feature", "value", "examples", "macro_f1", ...}), or None."""
    return (metrics.get("slices") or {}).get("worst")


def slice_notes(metrics: dict) -> list[str]:
    """One line per slice feature that could not be made, with why (none when every one was)."""
    slices = metrics.get("slices") or {}
    return [f"{u['feature']}: not sliced, {u['reason']}" for u in slices.get("unavailable", [])]
