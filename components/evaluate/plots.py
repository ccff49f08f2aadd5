"""The evaluation's pictures: ROC and precision-recall curves per AU (roc.png, pr.png), valence and arousal against
the truth (va.png)."""
from __future__ import annotations

import io

import numpy as np

from components.common import labels
from components.common.evaluation import PR_FILE, ROC_FILE
from components.evaluate.metrics import curve_points, roc_auc


def plot_png(draw, figsize=(7, 6), grid_axis: str = "both") -> bytes:
    """A PNG of one matplotlib Axes that draw(ax) fills (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=100)
    try:
        draw(ax)
        ax.grid(axis=grid_axis, alpha=0.3)
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

    return {ROC_FILE: plot_png(roc), PR_FILE: plot_png(pr)}


def va_png(test: dict) -> bytes:
    def draw(ax):
        for i, name in enumerate(labels.VA_COLUMNS):
            t, p = test["y_true"][:, i], test["scores"][:, i]
            has = ~np.isnan(t)
            ax.scatter(t[has], p[has], s=6, alpha=0.5, label=name)
        ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
        ax.set(xlabel="true", ylabel="predicted", title="Valence and arousal (test split)")
        ax.legend()

    return plot_png(draw)
