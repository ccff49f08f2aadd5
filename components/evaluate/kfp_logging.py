"""The evaluation in the KFP UI: headline numbers to a Metrics artifact, the micro confusion matrix and ROC curve to
ClassificationMetrics."""
from __future__ import annotations

import math

import numpy as np

from components.common import labels
from components.evaluate.metrics import curve_points

# The KFP UI draws a curve from at most this many points; more only slows the page.
MAX_CURVE_POINTS = 200


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
            slices = metrics.get("slices") or {}
            if slices.get("worst"):  # the slice table itself is in the Markdown report
                values["worst_slice_macro_f1"] = slices["worst"]["macro_f1"]
            values["slices_measured"] = len(slices.get("measured", []))
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
