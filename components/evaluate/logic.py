"""The evaluate step: the study's measures per Action Unit and overall on the test split, and the blessing."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Sequence

import numpy as np

from components.common import examples as ex
from components.common import labels, storage
from components.common import model as model_contract
from components.common import progress as progress_lines
from components.common import registry as model_registry
from components.common.errors import StepRefusal
from components.common.evaluation import (BLESSING_FILE, EVALUATION_REPORT_FILE, METRICS_FILE, PR_FILE, ROC_FILE,
                                          VA_FILE)
from components.evaluate.params import SPEC

DEFAULT_THRESHOLD = 0.5
# The KFP UI draws a curve from at most this many points; more only slows the page.
MAX_CURVE_POINTS = 200


class EvaluateError(StepRefusal):
    """Input the evaluate step cannot use; the message says which file and what to do."""


# --------------------------------------------------------------------------------------------
# Measures (pure NumPy)
# --------------------------------------------------------------------------------------------


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as the Mann-Whitney U statistic needs)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of binary labels y; NaN when y holds one class only."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _counts_summary(tp: float, fp: float, tn: float, fn: float, auc: float) -> dict:
    # An undefined ratio counts as 0, as scikit-learn's zero_division=0 does.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": float(auc),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _check_labels(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must both be [N, K]")
    known = y_true != labels.UNKNOWN
    bad = known & (y_true != labels.NEGATIVE) & (y_true != labels.POSITIVE)
    if bad.any():
        raise ValueError(f"labels must be 0, 1 or {labels.UNKNOWN}; found {sorted(set(y_true[bad].tolist()))[:5]}")
    if np.isnan(y_score[known]).any():
        raise ValueError("scores hold NaN where the label is known")
    return y_true, y_score, known


def compute_metrics(y_true, y_score, threshold=0.5) -> dict:
    """The study's measures of a multi-label classifier, label 999 (unknown) excluded from every count.

    y_true: int [N, K] of 0, 1, 999. y_score: float [N, K]. threshold: one value or [K] (per
    label); a score >= threshold is predicted active. Returns `per_label` (K dicts), `micro`,
    `macro` (each with precision, recall, f1, auc, tp, fp, tn, fn; macro averages the per-label
    values, AUC over the labels that have both classes), `accuracy` (element-wise over known
    labels), `partial_accuracy` (per example the share of its known labels right, averaged over
    examples with a known label) and `exact_match` (share of those examples with every known
    label right).
    """
    y_true, y_score, known = _check_labels(y_true, y_score)
    n, k = y_true.shape
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(k, float(thr))
    if thr.shape != (k,):
        raise ValueError(f"threshold must be one value or {k} values, got shape {thr.shape}")
    pos = known & (y_true == labels.POSITIVE)
    neg = known & (y_true == labels.NEGATIVE)
    pred = y_score >= thr[None, :]
    tp = (pos & pred).sum(axis=0)
    fp = (neg & pred).sum(axis=0)
    tn = (neg & ~pred).sum(axis=0)
    fn = (pos & ~pred).sum(axis=0)

    per_label = []
    for j in range(k):
        auc = roc_auc(pos[known[:, j], j], y_score[known[:, j], j])
        d = _counts_summary(int(tp[j]), int(fp[j]), int(tn[j]), int(fn[j]), auc)
        d.update(threshold=float(thr[j]), positives=int(pos[:, j].sum()), negatives=int(neg[:, j].sum()),
                 unknown=int(n - known[:, j].sum()))
        per_label.append(d)

    micro = _counts_summary(int(tp.sum()), int(fp.sum()), int(tn.sum()), int(fn.sum()), roc_auc(pos[known], y_score[known]))
    macro = {}
    for name in ("precision", "recall", "f1", "tp", "fp", "tn", "fn"):
        macro[name] = float(np.mean([d[name] for d in per_label])) if k else float("nan")
    aucs = np.array([d["auc"] for d in per_label], dtype=np.float64)
    macro["auc"] = float(np.nanmean(aucs)) if k and not np.isnan(aucs).all() else float("nan")

    correct = (pos & pred) | (neg & ~pred)
    n_known = known.sum(axis=1)
    rows = n_known > 0
    n_correct = correct.sum(axis=1)
    return {
        "per_label": per_label,
        "micro": micro,
        "macro": macro,
        "accuracy": float(correct.sum() / known.sum()) if known.any() else float("nan"),
        "partial_accuracy": float(np.mean(n_correct[rows] / n_known[rows])) if rows.any() else float("nan"),
        "exact_match": float(np.mean(n_correct[rows] == n_known[rows])) if rows.any() else float("nan"),
        "examples": int(n),
        "examples_with_labels": int(rows.sum()),
        "known_labels": int(known.sum()),
    }


def tune_thresholds(y_true, y_score, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-label F1-optimal thresholds (unknowns excluded); `default` where a label has no known positive.

    A threshold is set midway between the last score predicted active and the next lower score,
    so it does not sit on a validation example's exact score.
    """
    y_true, y_score, known = _check_labels(y_true, y_score)
    out = np.full(y_true.shape[1], float(default))
    for j in range(y_true.shape[1]):
        y = y_true[known[:, j], j] == labels.POSITIVE
        s = y_score[known[:, j], j]
        n_pos = int(y.sum())
        if n_pos == 0:
            continue
        order = np.argsort(-s, kind="mergesort")
        s, y = s[order], y[order]
        tp = np.cumsum(y)
        fp = np.cumsum(~y)
        # Only the last index of a run of equal scores is a threshold one can set.
        last = np.r_[s[1:] != s[:-1], True]
        f1 = np.where(last, 2 * tp / (2 * tp + fp + (n_pos - tp)), -1.0)
        i = int(np.argmax(f1))
        out[j] = float((s[i] + s[i + 1]) / 2.0) if i + 1 < len(s) else float(s[i])
    return out


def curve_points(y, score) -> dict:
    """ROC (fpr, tpr) and precision-recall points of binary labels y over every distinct threshold."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = np.cumsum(~y)[last].astype(np.float64)
    n_pos, n_neg = float(y.sum()), float((~y).sum())
    thresholds = s[last]
    return {
        "threshold": np.r_[1.0 if not len(s) else max(1.0, float(s[0])), thresholds],
        "fpr": np.r_[0.0, fp / n_neg] if n_neg else np.r_[0.0, np.zeros_like(fp)],
        "tpr": np.r_[0.0, tp / n_pos] if n_pos else np.r_[0.0, np.zeros_like(tp)],
        "precision": np.r_[1.0, tp / np.maximum(tp + fp, 1)],
        "recall": np.r_[0.0, tp / n_pos] if n_pos else np.r_[0.0, np.zeros_like(tp)],
    }


def regression_metrics(y_true, y_pred) -> dict:
    """MSE, RMSE and Lin's concordance correlation coefficient of one continuous target."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if not len(t):
        return {"mse": float("nan"), "rmse": float("nan"), "ccc": float("nan"), "examples": 0}
    mse = float(np.mean((t - p) ** 2))
    denom = t.var() + p.var() + (t.mean() - p.mean()) ** 2
    ccc = float(2 * np.mean((t - t.mean()) * (p - p.mean())) / denom) if denom > 0 else float("nan")
    return {"mse": mse, "rmse": math.sqrt(mse), "ccc": ccc, "examples": int(len(t))}


# --------------------------------------------------------------------------------------------
# Blessing (pure)
# --------------------------------------------------------------------------------------------


def _fmt(x) -> str:
    return "undefined" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def headline(metrics: dict) -> dict:
    """The numbers a blessing compares: macro F1 and AUC at threshold 0.5 (AU), mean CCC (VA)."""
    if metrics["task"] == "va":
        return {"mean_ccc": metrics["mean_ccc"], "mean_mse": metrics["mean_mse"]}
    d = metrics["at_default"]
    return {"macro_f1": d["macro"]["f1"], "macro_auc": d["macro"]["auc"], "micro_f1": d["micro"]["f1"],
            "accuracy": d["accuracy"]}


def judge(
    candidate: dict,
    baseline: dict | None,
    task: str,
    min_macro_f1: float,
    min_macro_auc: float,
    tolerance: float,
    notes: Sequence[str] = (),
) -> dict:
    """Blessed when the absolute thresholds hold and the candidate is not worse than the live model by more than tolerance.

    candidate / baseline: `headline` numbers; baseline None judges on the thresholds alone.
    notes: what was found about the live model; they open the reasons.
    Returns {"blessed", "reasons", "checks"}: one reason per check, passed or not.
    """
    checks = []

    def check(name, passed, value, limit, text):
        checks.append({"check": name, "passed": bool(passed), "value": value, "limit": limit})
        reasons.append(("pass: " if passed else "fail: ") + text)

    reasons: list[str] = list(notes)
    if task == "va":
        reasons.append("valence/arousal model: the F1 and AUC thresholds do not apply; judged on CCC against the live model")
        if baseline is not None:
            c, b = candidate["mean_ccc"], baseline["mean_ccc"]
            ok = not _nan(c) and (_nan(b) or c >= b - tolerance)
            check("live_mean_ccc", ok, c, None if _nan(b) else b - tolerance,
                  f"mean CCC {_fmt(c)} vs the live model's {_fmt(b)} (tolerance {tolerance})")
    else:
        f1, auc = candidate["macro_f1"], candidate["macro_auc"]
        check("min_macro_f1", not _nan(f1) and f1 >= min_macro_f1, f1, min_macro_f1,
              f"macro F1 {_fmt(f1)} {'>=' if not _nan(f1) and f1 >= min_macro_f1 else '<'} minimum {min_macro_f1}")
        if _nan(auc):
            check("min_macro_auc", False, None, min_macro_auc,
                  "macro AUC is undefined: no AU has both classes among the known test labels")
        else:
            check("min_macro_auc", auc >= min_macro_auc, auc, min_macro_auc,
                  f"macro AUC {_fmt(auc)} {'>=' if auc >= min_macro_auc else '<'} minimum {min_macro_auc}")
        if baseline is not None:
            bf1, bauc = baseline["macro_f1"], baseline["macro_auc"]
            ok = _nan(bf1) or (not _nan(f1) and f1 >= bf1 - tolerance)
            check("live_macro_f1", ok, f1, None if _nan(bf1) else bf1 - tolerance,
                  f"macro F1 {_fmt(f1)} vs the live model's {_fmt(bf1)}: "
                  + ("not worse by more than" if ok else "worse by more than") + f" the tolerance {tolerance}")
            if not _nan(bauc):
                ok = not _nan(auc) and auc >= bauc - tolerance
                check("live_macro_auc", ok, auc, bauc - tolerance,
                      f"macro AUC {_fmt(auc)} vs the live model's {_fmt(bauc)}: "
                      + ("not worse by more than" if ok else "worse by more than") + f" the tolerance {tolerance}")
    if baseline is None and not notes:
        reasons.append("no live model to compare with: judged on the thresholds alone")
    blessed = all(c["passed"] for c in checks)
    return {"blessed": blessed, "reasons": reasons, "checks": checks}


# --------------------------------------------------------------------------------------------
# Scoring a model on an examples folder
# --------------------------------------------------------------------------------------------


def _read_model_config(model_dir: str) -> dict:
    """model_config.json of a model folder (components.common.model), a problem with it as this step's EvaluateError."""
    try:
        return model_contract.read_model_config(model_dir)
    except model_contract.ModelError as e:
        raise EvaluateError(str(e)) from e


def _local_shards(examples_dir: str, split: str, workdir: str) -> list[str]:
    files = ex.shard_files(examples_dir, split)
    if storage.is_gcs(examples_dir):
        local = []
        for f in files:
            dst = os.path.join(workdir, "examples", model_registry.basename(f))
            storage.download_file(f, dst)
            local.append(dst)
        files = local
    return files


def score_split(signature, files: list[str], examples_au_ids: list[int], model_au_ids: list[int], task: str,
                batch_size: int, source: str = "", progress=None) -> dict:
    """Runs the model over the shards of one split: labels (in the model's AU order) and outputs.

    progress: a components.common.progress.Progress counting the batches, or None.
    """
    import tensorflow as tf

    spec = ex.feature_spec(len(examples_au_ids))
    if task == "va":
        # Varlen, so an example without valence/arousal is told apart from one with 0, 0.
        spec[ex.LABEL_VA] = tf.io.VarLenFeature(tf.float32)
    if task == "au":
        missing = [a for a in model_au_ids if a not in examples_au_ids]
        if missing:
            raise EvaluateError(
                f"the model predicts AU{', AU'.join(map(str, missing))}, which the examples in {source} do not label "
                f"(they have AUs {examples_au_ids}); evaluate on examples filtered to the model's AUs"
            )
        columns = [examples_au_ids.index(a) for a in model_au_ids]
    keys, y_true, scores = [], [], []
    dataset = tf.data.TFRecordDataset(files).batch(batch_size).map(lambda s: tf.io.parse_example(s, spec))
    try:
        for batch in dataset:
            ids = batch[ex.LABEL_AU_IDS].numpy()
            if ids.size and not (ids == np.asarray(examples_au_ids)[None, :]).all():
                raise EvaluateError(f"{source}: an example's label/au_ids differ from "
                                    f"{ex.EXAMPLES_SUMMARY_FILE}'s {examples_au_ids}")
            out = model_contract.run_signature(signature, list(batch[ex.IMAGE_ENCODED].numpy()), task)
            keys.extend(k.decode() for k in batch[ex.IMAGE_KEY].numpy())
            if task == "au":
                if out.ndim != 2 or out.shape[1] != len(model_au_ids):
                    raise EvaluateError(
                        f"the model returns probabilities of shape {out.shape}, but its model_config.json lists "
                        f"{len(model_au_ids)} AUs"
                    )
                y = batch[ex.LABEL_AU].numpy()[:, columns]
                bad = ~np.isin(y, labels.VALID_LABELS)
                if bad.any():
                    key = batch[ex.IMAGE_KEY].numpy()[np.flatnonzero(bad.any(axis=1))[0]].decode()
                    raise EvaluateError(f"{source}: example {key} has label {int(y[bad][0])}; labels must be 0, 1 or "
                                        f"{labels.UNKNOWN}. Re-run convert and filter")
                y_true.append(y)
            else:
                va = tf.sparse.to_dense(batch[ex.LABEL_VA], default_value=np.nan).numpy()
                if va.shape[1] < 2:
                    va = np.full((len(out), 2), np.nan)
                y_true.append(va[:, :2])
            if np.isnan(out).any():
                raise EvaluateError(f"{source}: the model returned NaN; it cannot be evaluated (was training unstable?)")
            scores.append(out.astype(np.float64))
            if progress is not None:
                progress.update()
    except model_contract.ModelError as e:
        raise EvaluateError(str(e)) from e
    except tf.errors.DataLossError as e:
        raise EvaluateError(f"{source}: a TFRecord shard is corrupt ({e}); re-run convert and filter") from e
    except tf.errors.InvalidArgumentError as e:
        raise EvaluateError(f"{source}: cannot read or score the examples ({e.message})") from e
    width = len(model_au_ids) if task == "au" else 2
    return {
        "keys": keys,
        "y_true": np.concatenate(y_true) if y_true else np.zeros((0, width)),
        "scores": np.concatenate(scores) if scores else np.zeros((0, width)),
    }


# --------------------------------------------------------------------------------------------
# Metrics file, report, plots
# --------------------------------------------------------------------------------------------


def _label_rows(m: dict, au_ids: list[int]) -> dict:
    for d, au in zip(m["per_label"], au_ids):
        d["au"] = int(au)
        d["name"] = labels.AU_NAMES.get(int(au), "")
    return m


def au_metrics(test: dict, validation: dict | None, au_ids: list[int]) -> dict:
    """metrics.json of an AU model: every figure at 0.5 and at the per-AU thresholds tuned on validation."""
    thresholds_note = "F1-optimal per AU on the validation split"
    if validation is not None and len(validation["y_true"]):
        tuned = tune_thresholds(validation["y_true"], validation["scores"])
        n_val = len(validation["y_true"])
    else:
        tuned = np.full(len(au_ids), DEFAULT_THRESHOLD)
        thresholds_note = "the validation split is empty: every tuned threshold is 0.5"
        n_val = 0
    return {
        "task": "au",
        "split": "test",
        "examples": int(len(test["y_true"])),
        "au_ids": list(au_ids),
        "thresholds": {
            "default": DEFAULT_THRESHOLD,
            "tuned": {str(a): float(t) for a, t in zip(au_ids, tuned)},
            "tuned_on": "validation",
            "validation_examples": n_val,
            "note": thresholds_note,
        },
        "at_default": _label_rows(compute_metrics(test["y_true"], test["scores"], DEFAULT_THRESHOLD), au_ids),
        "at_tuned": _label_rows(compute_metrics(test["y_true"], test["scores"], tuned), au_ids),
    }


def va_metrics(test: dict) -> dict:
    out = {"task": "va", "split": "test", "examples": int(len(test["y_true"]))}
    for i, name in enumerate(labels.VA_COLUMNS):
        t, p = test["y_true"][:, i], test["scores"][:, i]
        has = ~np.isnan(t)
        out[name] = regression_metrics(t[has], p[has])
    out["mean_ccc"] = float(np.mean([out[n]["ccc"] for n in labels.VA_COLUMNS]))
    out["mean_mse"] = float(np.mean([out[n]["mse"] for n in labels.VA_COLUMNS]))
    return out


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
    return "".join(_overall_lines(metrics))


def _overall_lines(metrics: dict) -> list[str]:
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
    return "\n".join(out + _overall_lines(metrics))


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
        md += [line for line in _overall_lines(metrics)]
        md += ["", "P, R, F1 at threshold 0.5 and at the per-AU threshold `thr` tuned for F1 on the validation split; "
               "labels 999 (unknown) are left out of every count."]
    return "\n".join(md) + "\n"


def _plot_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def curve_pngs(test: dict, au_ids: list[int]) -> dict[str, bytes]:
    """roc.png and pr.png: one curve per AU over its known test labels."""
    curves = []
    for j, au in enumerate(au_ids):
        known = test["y_true"][:, j] != labels.UNKNOWN
        y = test["y_true"][known, j] == labels.POSITIVE
        if y.any() and (~y).any():
            curves.append((au, curve_points(y, test["scores"][known, j]), roc_auc(y, test["scores"][known, j]), y.mean()))

    def roc(ax):
        for au, c, auc, _ in curves:
            ax.plot(c["fpr"], c["tpr"], label=f"AU{au} (AUC {auc:.2f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC per AU (test split)")
        if curves:
            ax.legend(fontsize=7, loc="lower right")

    def pr(ax):
        for au, c, _, prevalence in curves:
            ax.plot(c["recall"], c["precision"], label=f"AU{au} (base rate {prevalence:.2f})")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall per AU (test split)", ylim=(0, 1.02))
        if curves:
            ax.legend(fontsize=7, loc="lower left")

    return {ROC_FILE: _plot_png(roc), PR_FILE: _plot_png(pr)}


def va_png(test: dict) -> bytes:
    def draw(ax):
        for i, name in enumerate(labels.VA_COLUMNS):
            t, p = test["y_true"][:, i], test["scores"][:, i]
            has = ~np.isnan(t)
            ax.scatter(t[has], p[has], s=6, alpha=0.5, label=name)
        ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
        ax.set(xlabel="true", ylabel="predicted", title="Valence and arousal (test split)")
        ax.legend()

    return _plot_png(draw)


def _jsonable(x):
    """NaN (an undefined AUC) becomes null: strict JSON has no NaN."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _downsample(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(int)) if n else np.zeros(0, int)


def log_kfp(metrics: dict, blessing: dict, test: dict, kfp_metrics=None, kfp_classification_metrics=None) -> None:
    """Headline numbers to a KFP Metrics artifact; micro confusion matrix and ROC to ClassificationMetrics."""
    if kfp_metrics is not None:
        values = {"test_examples": metrics["examples"], "blessed": 1.0 if blessing["blessed"] else 0.0}
        if metrics["task"] == "va":
            for n in labels.VA_COLUMNS:
                for m in ("mse", "rmse", "ccc"):
                    values[f"{n}_{m}"] = metrics[n][m]
            values["mean_ccc"] = metrics["mean_ccc"]
        else:
            for prefix, key in (("", "at_default"), ("tuned_", "at_tuned")):
                d = metrics[key]
                for m in ("accuracy", "partial_accuracy", "exact_match"):
                    values[prefix + m] = d[m]
                for avg in ("micro", "macro"):
                    for m in ("precision", "recall", "f1", "auc"):
                        if prefix and m == "auc":
                            continue  # AUC does not depend on the threshold
                        values[f"{prefix}{avg}_{m}"] = d[avg][m]
        for name, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                kfp_metrics.log_metric(name, float(value))
    if kfp_classification_metrics is not None and metrics["task"] == "au":
        micro = metrics["at_default"]["micro"]
        kfp_classification_metrics.log_confusion_matrix(
            ["inactive", "active"], [[micro["tn"], micro["fp"]], [micro["fn"], micro["tp"]]]
        )
        known = test["y_true"] != labels.UNKNOWN
        y = test["y_true"][known] == labels.POSITIVE
        if y.any() and (~y).any():
            c = curve_points(y, test["scores"][known])
            idx = _downsample(len(c["fpr"]))
            kfp_classification_metrics.log_roc_curve(
                [float(v) for v in c["fpr"][idx]], [float(v) for v in c["tpr"][idx]],
                [float(min(v, 1.0)) for v in c["threshold"][idx]],
            )


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def _score_model(model_uri: str, config: dict, examples_dir: str, summary: dict, splits: Sequence[str],
                 workdir: str, batch_size: int, progress: bool = False, whose: str = "") -> dict:
    """Scores each split; progress prints progress lines of its batches (`<split> batches<whose>`)."""
    local_model = model_registry.fetch_local(model_uri, workdir)
    try:
        signature = model_contract.load_signature(local_model)
    except model_contract.ModelError as e:
        raise EvaluateError(str(e)) from e
    out = {}
    for split in splits:
        files = _local_shards(examples_dir, split, os.path.join(workdir, split))
        lines = None
        if progress and files:
            n = int(((summary.get("splits") or {}).get(split) or {}).get("examples") or 0)
            lines = progress_lines.Progress("evaluate", math.ceil(n / batch_size), f"{split} batches{whose}")
        out[split] = score_split(signature, files, [int(a) for a in summary["au_ids"]], config["au_ids"],
                                 config["task"], batch_size, source=f"{examples_dir} ({split} split)", progress=lines)
        if lines is not None:
            lines.close()
    return out


def _live_baseline(registry_uri: str, model_name: str, config: dict, examples_dir: str, summary: dict,
                   workdir: str, batch_size: int, progress: bool = False) -> tuple[dict | None, list[str]]:
    """The live model's version and scores on this test split, or None with the reason why it is not compared."""
    if not registry_uri:
        return None, ["no registry given: judged on the thresholds alone"]
    try:
        root = model_registry.model_root(registry_uri, model_name)
        live = model_registry.live_version(root)
    except model_registry.RegistryError as e:
        return None, [f"the live model cannot be read ({e}): judged on the thresholds alone"]
    if live is None:
        return None, [f"first model: {root} has no {model_registry.LATEST} yet, judged on the thresholds alone"]
    version, uri = live
    try:
        live_config = _read_model_config(uri)
    except EvaluateError as e:
        return None, [f"the live version {version} cannot be read ({e}): judged on the thresholds alone"]
    if live_config["task"] != config["task"]:
        return None, [f"the live version {version} is a {live_config['task']} model, this is a {config['task']} model: "
                      "not comparable, judged on the thresholds alone"]
    if config["task"] == "au" and sorted(live_config["au_ids"]) != sorted(config["au_ids"]):
        return None, [f"the live version {version} detects AUs {live_config['au_ids']}, this model {config['au_ids']}: "
                      "not comparable, judged on the thresholds alone"]
    try:
        scored = _score_model(uri, live_config, examples_dir, summary, ["test"], os.path.join(workdir, "live"),
                              batch_size, progress, whose=f" of the live model {version}")["test"]
    except EvaluateError as e:
        return None, [f"the live version {version} cannot be scored ({e}): judged on the thresholds alone"]
    if config["task"] == "va":
        m = va_metrics(scored)
    else:
        # Same column order as the candidate, so the per-AU numbers line up.
        order = [live_config["au_ids"].index(a) for a in config["au_ids"]]
        scored = {"y_true": scored["y_true"][:, order], "scores": scored["scores"][:, order]}
        m = {"task": "au", "at_default": _label_rows(compute_metrics(scored["y_true"], scored["scores"]), config["au_ids"])}
    note = f"live model: version {version} in {root}, scored on the same test split"
    return {"version": version, "uri": uri, **headline(m)}, [note]


def _no_test_example(examples_dir: str, summary: dict) -> str:
    """Why evaluate has nothing to measure, and what to change: the test fraction convert split with."""
    parameters = summary.get("parameters") or {}
    fraction = parameters.get("test_fraction")
    if fraction is None and parameters.get("source"):  # a filtered folder names the one convert wrote
        try:
            fraction = (ex.read_summary(parameters["source"]).get("parameters") or {}).get("test_fraction")
        except (OSError, ValueError):
            pass
    now = f" (it is {fraction})" if fraction is not None else ""
    return (f"the test split of {examples_dir} has no example (no test-*.tfrecord shard holds one): there is nothing "
            f"to measure the model on; convert with a larger --test-fraction{now}, or from more images")


def run(
    examples_dir: str,
    model_dir: str,
    output_dir: str,
    registry: str = SPEC.defaults.registry,
    model_name: str = SPEC.defaults.model_name,
    min_macro_f1: float = SPEC.defaults.min_macro_f1,
    min_macro_auc: float = SPEC.defaults.min_macro_auc,
    tolerance: float = SPEC.defaults.tolerance,
    batch_size: int = SPEC.defaults.batch_size,
    kfp_metrics=None,
    kfp_classification_metrics=None,
    report_path: str | None = None,
    progress: bool = False,
) -> dict:
    """Scores the model on the test split (thresholds tuned on validation), judges it, writes the evaluation folder.

    Returns {"metrics": ..., "blessing": ...} as written to metrics.json and blessing.json. Refuses
    (EvaluateError) a test split with no example, or whose every label is 999. progress prints
    progress lines of the batches scored (components.common.progress) for a pipeline's console.
    """
    if batch_size < 1:
        raise EvaluateError(f"batch size {batch_size} must be at least 1")
    try:
        summary = ex.read_summary(examples_dir)
    except FileNotFoundError as e:
        raise EvaluateError(str(e)) from e
    except ValueError as e:
        raise EvaluateError(
            f"{storage.join(examples_dir, ex.EXAMPLES_SUMMARY_FILE)} is not valid JSON ({e}); re-run filter") from e
    config = _read_model_config(model_dir)
    if config["task"] == "va" and not summary.get("has_va"):
        raise EvaluateError(f"the model predicts valence/arousal, but the examples in {examples_dir} have none "
                            f"({ex.EXAMPLES_SUMMARY_FILE}: has_va is false)")
    test_count = ((summary.get("splits") or {}).get("test") or {}).get("examples")
    if not ex.shard_files(examples_dir, "test") or test_count == 0:
        raise EvaluateError(_no_test_example(examples_dir, summary))
    with tempfile.TemporaryDirectory(prefix="evaluate-") as workdir:
        splits = ["test", "validation"] if config["task"] == "au" else ["test"]
        scored = _score_model(model_dir, config, examples_dir, summary, splits, os.path.join(workdir, "candidate"),
                              batch_size, progress)
        test = scored["test"]
        if not len(test["y_true"]):
            raise EvaluateError(_no_test_example(examples_dir, summary))
        if config["task"] == "au" and (test["y_true"] == labels.UNKNOWN).all():
            raise EvaluateError(
                f"every label of the test split of {examples_dir} is {labels.UNKNOWN} (not annotated): none of its "
                f"{len(test['y_true'])} examples is annotated for any of AU{', AU'.join(map(str, config['au_ids']))}, "
                "so no measure can be computed; keep AUs that the sheet annotates (--aus), or use a sheet whose "
                "images are annotated for these AUs"
            )
        if config["task"] == "au":
            metrics = au_metrics(test, scored.get("validation"), config["au_ids"])
        else:
            metrics = va_metrics(test)
        metrics["model"] = {k: config.get(k) for k in ("backbone", "image_size", "task", "au_ids") if k in config}
        baseline, notes = _live_baseline(registry, model_name, config, examples_dir, summary, workdir, batch_size,
                                         progress)
    verdict = judge(headline(metrics), baseline, config["task"], min_macro_f1, min_macro_auc, tolerance, notes)
    blessing = {
        "blessed": verdict["blessed"],
        "reasons": verdict["reasons"],
        "checks": verdict["checks"],
        "baseline": baseline,
        "candidate": headline(metrics),
        "criteria": {"min_macro_f1": min_macro_f1, "min_macro_auc": min_macro_auc, "tolerance": tolerance},
        "registry": registry,
        "model_name": model_name,
    }
    metrics, blessing = _jsonable(metrics), _jsonable(blessing)
    report = format_report(metrics, blessing)
    # A blessing left from an earlier run must not stand beside this run's files if this one dies midway.
    storage.delete(storage.join(output_dir, BLESSING_FILE))
    storage.write_text(storage.join(output_dir, METRICS_FILE), json.dumps(metrics, indent=2))
    storage.write_text(storage.join(output_dir, EVALUATION_REPORT_FILE), report)
    if config["task"] == "au":
        for name, png in curve_pngs(test, config["au_ids"]).items():
            storage.write_bytes(storage.join(output_dir, name), png)
    else:
        storage.write_bytes(storage.join(output_dir, VA_FILE), va_png(test))
    # Written last: push reads it, so its presence means the folder is whole.
    storage.write_text(storage.join(output_dir, BLESSING_FILE), json.dumps(blessing, indent=2))
    if report_path:
        os.makedirs(os.path.dirname(report_path) or ".", exist_ok=True)
        with open(report_path, "w", encoding="utf-8") as f:
            f.write(report)
    log_kfp(metrics, blessing, test, kfp_metrics, kfp_classification_metrics)
    return {"metrics": metrics, "blessing": blessing}
