"""report.md of the evaluation folder: the verdict, its reasons, the live model compared with and the per-AU table."""
from __future__ import annotations

from components.common.metric_tables import format_number, overall_lines, slice_notes, slice_rows, table_rows


def format_report(metrics: dict, blessing: dict) -> str:
    """report.md: the verdict, its reasons, the headline numbers and the per-AU table."""
    head, rows = table_rows(metrics)
    md = [f"# Evaluation on the {metrics['split']} split ({metrics['examples']} examples)", ""]
    md.append(f"**{'Blessed' if blessing['blessed'] else 'Not blessed'}**")
    md.append("")
    md += [f"- {r}" for r in blessing["reasons"]]
    md.append("")
    base = blessing.get("baseline")
    if base:
        md.append(f"Live model compared with: version `{base['version']}` ({base['uri']}).")
        md.append("")
    md += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md.append("")
    if metrics["task"] == "au":
        md += [line for line in overall_lines(metrics)]
        md += ["", "P, R, F1 at threshold 0.5 and at the per-AU threshold `thr` tuned for F1 on the validation split; "
               "labels 999 (unknown) are left out of every count."]
    md += _slices_section(metrics)
    return "\n".join(md) + "\n"


def _slices_section(metrics: dict) -> list[str]:
    """The per-slice table of report.md, its worst slice first (nothing for a model without slices)."""
    slices = metrics.get("slices")
    if not slices:
        return []
    md = ["", f"## Slices (at least {slices['min_size']} examples to be measured)", ""]
    worst = slices.get("worst")
    if worst:
        md += [f"Worst slice: **{worst['feature']} = {worst['value']}** ({worst['examples']} examples), macro F1 "
               f"{format_number(worst['macro_f1'])} at 0.5.", ""]
    head, rows = slice_rows(metrics)
    if rows:
        md += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [f"- {line}" for line in slice_notes(metrics)]
    md += ["", slices.get("note", "")]
    return md
