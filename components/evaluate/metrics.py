"""The evaluate step's measures (pure NumPy): per-AU and overall classification figures, tuned thresholds, curve
points, regression figures, and metrics.json of an AU or a valence/arousal model."""
from __future__ import annotations

import math

import numpy as np

from components.common import labels
from components.common.evaluation import DEFAULT_THRESHOLD


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


def label_rows(m: dict, au_ids: list[int]) -> dict:
    """compute_metrics' per-label figures named: each gets its AU number and the AU's name."""
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
        "at_default": label_rows(compute_metrics(test["y_true"], test["scores"], DEFAULT_THRESHOLD), au_ids),
        "at_tuned": label_rows(compute_metrics(test["y_true"], test["scores"], tuned), au_ids),
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
