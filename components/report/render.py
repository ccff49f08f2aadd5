"""The run report's renderer: one self-contained HTML page (images inlined) of a run's step records and outputs."""
from __future__ import annotations

import base64
import html
import os

from components.common import labels
from components.report.records import read_json

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.ok{color:#176f2c;font-weight:600}.bad{color:#a11;font-weight:600}
.muted{color:#777}img{max-width:100%;border:1px solid #eee;margin:.4em 0}.row{display:flex;gap:1em;flex-wrap:wrap}
.row img{max-width:48%}code{background:#f6f6f6;padding:0 3px}
.gallery{display:flex;gap:.5em;flex-wrap:wrap;margin:.3em 0 .8em}.gallery figure{margin:0;width:84px;font-size:.75em;text-align:center}
.gallery img{width:64px;height:64px;object-fit:contain;margin:0}
"""


def _img(folder, name: str, alt: str) -> str:
    """An <img> with the PNG inlined (the page travels alone), or a note that there is none."""
    try:
        with open(os.path.join(str(folder), name), "rb") as f:
            data = base64.b64encode(f.read()).decode()
    except (OSError, TypeError):
        return f'<p class="muted">no {html.escape(alt)} in this run</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list], left=1) -> str:
    """A table whose first `left` columns (or the columns numbered in a tuple `left`) are left-aligned (names), the
    rest right-aligned (numbers)."""
    lefts = set(left) if isinstance(left, tuple) else set(range(left))

    def cell(tag, i, v):
        cls = ' class="l"' if i in lefts else ""
        return f"<{tag}{cls}>{html.escape(str(v))}</{tag}>"

    out = ["<table><tr>" + "".join(cell("th", i, h) for i, h in enumerate(head)) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def _steps(result) -> str:
    # The report step on a cluster knows each step's outputs, not its time (None).
    timed = all(s.seconds is not None for s in result.steps)
    rows = [[s.name, s.status, f"{s.seconds:.1f}s" if s.seconds is not None else "-", s.figures or ""]
            for s in result.steps]
    total = f"{sum(s.seconds for s in result.steps):.1f}s" if timed else "-"
    rows.append(["total", "ok" if result.ok else "FAILED", total, result.error])
    return _table(["step", "status", "time", "key figures"], rows, left=(0, 1, 3))


def _coverage(ingest: dict) -> str:
    counts = ingest.get("au_counts") or {}
    if not counts:
        return '<p class="muted">ingest wrote no AU counts</p>'
    rows, unannotated = [], 0
    for name in labels.AU_COLUMNS:
        c = counts.get(name, {})
        n0, n1, n999 = int(c.get("0", 0)), int(c.get("1", 0)), int(c.get("999", 0))
        total = n0 + n1 + n999
        share = (n0 + n1) / total if total else 0.0
        unannotated += share < 0.01
        rows.append([name, labels.AU_NAMES.get(int(name[2:]), ""), n1, n0, n999, f"{share:.1%}"])
    return (f"<p>{ingest.get('kept', 0)} rows kept, {ingest.get('rejected', 0)} rejected. "
            f"<b>{unannotated} of {len(labels.AU_COLUMNS)} AUs are annotated on fewer than 1% of the images</b> "
            "(the study found 49 of 60 on EmotioNet).</p>"
            + _table(["AU", "name", "1", "0", "999", "annotated"], rows, left=2))


def _downloads(summary: dict) -> str:
    if not summary:
        return '<p class="muted">no download summary</p>'
    total = summary.get("total", 0)
    rows = [[c, n, f"{100.0 * n / total:.2f}%" if total else "-"]
            for c, n in summary.get("counts", {}).items() if n or c == "ok"]
    rows.append(["total", total, "100.00%"])
    return _table(["error class", "count", "share"], rows)


def _validation(summary: dict) -> str:
    if not summary:
        return '<p class="muted">no validation summary</p>'
    status = '<span class="ok">passed</span>' if summary.get("passed") else '<span class="bad">failed</span>'
    out = (f"<p>{status}: {summary.get('anomaly_count', 0)} anomalies (at most {summary.get('max_anomalies', 0)} "
           f"allowed); failure rate {summary.get('failure_rate', 0):.1%}; schema: "
           f"{html.escape(str((summary.get('schema') or {}).get('origin', '')))}.</p>")
    anomalies = summary.get("anomalies") or []
    if anomalies:
        out += _table(["feature", "anomaly"], [[a.get("feature", ""), a.get("description", "")] if isinstance(a, dict)
                                               else ["", a] for a in anomalies])
    return out


def _examples(summary: dict, title: str) -> str:
    if not summary:
        return ""
    from components.common.examples import SPLITS

    rows = [[split, summary["splits"][split]["examples"], summary["splits"][split]["shards"]]
            for split in SPLITS if split in summary["splits"]]
    from components.common.faces import format_counters

    faces = (f"<p>{html.escape(format_counters(summary['counters']))}</p>"
             if "faces_cropped" in summary.get("counters", {}) else "")
    return f"<h3>{html.escape(title)}</h3>" + _table(["split", "examples", "shards"], rows) + faces


def _metrics(metrics: dict) -> str:
    if not metrics:
        return '<p class="muted">no metrics in this run</p>'
    from components.common.metric_tables import overall_line, table_rows

    head, rows = table_rows(metrics, counts=True)
    overall = f"<p>{metrics.get('examples', '')} test examples. {html.escape(overall_line(metrics))}</p>"
    return overall + _table(head, rows, left=2)


def _slices(metrics: dict) -> str:
    """The per-slice table of metrics.json (evaluate's slices), the worst slice named, or a note without slices."""
    from components.common.metric_tables import format_number, slice_notes, slice_rows, worst_slice

    if not (metrics or {}).get("slices"):
        return '<p class="muted">no slices in this run</p>'
    head, rows = slice_rows(metrics)
    worst = worst_slice(metrics)
    line = (f"<p>Worst slice: <b>{html.escape(str(worst['feature']))} = {html.escape(str(worst['value']))}</b> "
            f"({worst['examples']} examples), macro F1 {format_number(worst['macro_f1'])} at 0.5. Slices of fewer than "
            f"{metrics['slices']['min_size']} examples are listed as too small.</p>" if worst else "")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in slice_notes(metrics))
    return line + _table(head, rows, left=2) + (f"<ul class=muted>{notes}</ul>" if notes else "")


def _face(error: dict, thumbnails: dict) -> str:
    """One wrong face: its thumbnail (base64 JPEG), probability, label and key (its slices in the tooltip)."""
    data = thumbnails.get(error.get("key"))
    slices = "; ".join(f"{k} {v}" for k, v in (error.get("slices") or {}).items())
    tip = html.escape(f"{error.get('key')} (AU{error.get('au')}, label {error.get('label')}) {slices}")
    img = (f'<img alt="{tip}" title="{tip}" src="data:image/jpeg;base64,{data}">' if data
           else '<span class="muted">no picture</span>')
    return (f"<figure>{img}<figcaption>p={float(error.get('probability', 0)):.2f}"
            f"{'' if 'au' not in error else ' AU' + html.escape(str(error['au']))}</figcaption></figure>")


def _errors(errors: dict) -> str:
    """The gallery of errors.json: per AU the most wrong false positives and negatives, then the worst slices'."""
    from components.common.evaluation import FALSE_NEGATIVE, FALSE_POSITIVE

    if not errors:
        return '<p class="muted">no errors gallery in this run</p>'
    thumbs = errors.get("thumbnails") or {}
    out = [f"<p class=muted>{html.escape(str(errors.get('note', '')))}.</p>"]
    for au in errors.get("per_au") or []:
        out.append(f"<h3>AU{html.escape(str(au['au']))} {html.escape(str(au.get('name', '')))}</h3>")
        for kind, title in ((FALSE_POSITIVE, "false positives (label 0)"), (FALSE_NEGATIVE, "false negatives (label 1)")):
            faces = au.get(kind) or []
            body = "".join(_face(e, thumbs) for e in faces) or '<span class="muted">none</span>'
            out.append(f"<div>{title}:</div><div class=gallery>{body}</div>")
    for s in errors.get("slices") or []:
        f1 = s.get("macro_f1")
        out.append(f"<h3>Slice {html.escape(str(s['feature']))} = {html.escape(str(s['value']))} "
                   f"({s.get('examples')} examples, macro F1 {'-' if f1 is None else f'{f1:.2f}'})</h3>")
        body = "".join(_face(e, thumbs) for e in s.get("errors") or []) or '<span class="muted">none</span>'
        out.append(f"<div class=gallery>{body}</div>")
    return "".join(out)


def _blessing(blessing: dict, push: dict) -> str:
    if not blessing:
        return '<p class="muted">no blessing in this run</p>'
    verdict = '<span class="ok">blessed</span>' if blessing.get("blessed") else '<span class="bad">not blessed</span>'
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in blessing.get("reasons", []))
    pushed = ""
    if push:
        pushed = (f"<p>Pushed: version <code>{html.escape(str(push.get('version')))}</code> to "
                  f"<code>{html.escape(str(push.get('uri')))}</code></p>" if push.get("pushed")
                  else f"<p>Not pushed: {html.escape('; '.join(map(str, push.get('reasons', []))))}</p>")
    return f"<p>{verdict}</p><ul>{reasons}</ul>{pushed}"


def render(result) -> str:
    """The report of a run (components.report.records.RunResult: a local run's, or one made from the step outputs
    alone) as one HTML page, images inlined."""
    from components.common.evaluation import BLESSING_FILE, ERRORS_FILE, METRICS_FILE, PR_FILE, ROC_FILE, SLICES_FILE
    from components.common.examples import EXAMPLES_SUMMARY_FILE
    from components.common.ledger import DOWNLOAD_SUMMARY_FILE
    from components.common.manifest import INGEST_SUMMARY_FILE
    from components.common.model import CURVES_FILE, HISTORY_FILE
    from components.common.registry import PUSH_FILE
    from components.common.validation import VALIDATION_SUMMARY_FILE

    out = {s.name: s.outputs for s in result.steps}
    manifest = (out.get("ingest") or {}).get("manifest")
    downloads = (out.get("download") or {}).get("downloads")
    validation = (out.get("validate") or {}).get("validation")
    examples_dir = (out.get("convert") or {}).get("examples")
    filtered = (out.get("filter-examples") or {}).get("filtered")
    model = (out.get("train") or {}).get("model")
    evaluation = (out.get("evaluate") or {}).get("evaluation")
    pushed = (out.get("push") or {}).get("pushed")
    history = read_json(model, HISTORY_FILE)
    title = f"Run {os.path.basename(result.run_dir.rstrip('/'))}: {'succeeded' if result.ok else 'FAILED'}"
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class=muted>pipeline root <code>{html.escape(result.run_dir)}</code></p>",
        "<h2>Steps</h2>", _steps(result),
        "<h2>Blessing</h2>", _blessing(read_json(evaluation, BLESSING_FILE), read_json(pushed, PUSH_FILE)),
        "<h2>Action Units on the test split</h2>", _metrics(read_json(evaluation, METRICS_FILE)),
        "<div class=row>", _img(evaluation, ROC_FILE, "ROC curves"), _img(evaluation, PR_FILE, "PR curves"), "</div>",
        "<h2>Slices of the test split</h2>", _slices(read_json(evaluation, METRICS_FILE)),
        _img(evaluation, SLICES_FILE, "macro F1 per slice"),
        "<h2>Faces the model got most wrong (test split)</h2>", _errors(read_json(evaluation, ERRORS_FILE)),
        "<h2>Training</h2>",
        (f"<p>{len(history.get('epochs') or [])} epochs; best validation loss "
         f"{history['best_val_loss']:.3f} at epoch {history.get('best_epoch')}.</p>"
         if history.get("best_val_loss") is not None else ""),
        _img(model, CURVES_FILE, "training curves"),
        "<h2>Examples</h2>", _examples(read_json(examples_dir, EXAMPLES_SUMMARY_FILE), "convert"),
        _examples(read_json(filtered, EXAMPLES_SUMMARY_FILE), "filter"),
        "<h2>Validation</h2>", _validation(read_json(validation, VALIDATION_SUMMARY_FILE)),
        "<h2>Downloads</h2>", _downloads(read_json(downloads, DOWNLOAD_SUMMARY_FILE)),
        "<h2>AU coverage of the sheet</h2>", _coverage(read_json(manifest, INGEST_SUMMARY_FILE)),
        "</body></html>",
    ]
    return "\n".join(parts)
