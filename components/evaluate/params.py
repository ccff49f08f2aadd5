"""The evaluate step's one declaration: what it reads and writes, and its parameters."""
from components.common.params import MODEL_NAME, REGISTRY, Artifact, Param, StepSpec

SPEC = StepSpec(
    name="evaluate",
    description="Scores the model on the test split and decides whether it is blessed.",
    inputs=(
        Artifact("examples", "Folder written by filter."),
        Artifact("model", "Folder written by train."),
    ),
    outputs=(
        Artifact("evaluation", "Folder with metrics.json, blessing.json, report.md and curve PNGs.", flag="--output"),
        Artifact("metrics", "Headline numbers for the KFP UI.", flag="-"),
        Artifact("classification_metrics", "Confusion matrix and ROC for the KFP UI.", flag="-"),
        Artifact("report", "Markdown report with the per-AU table.", flag="-"),
    ),
    params=(
        REGISTRY,
        MODEL_NAME,
        Param("min_macro_f1", float, 0.5, "Lowest macro F1 (at threshold 0.5) that can be blessed."),
        Param("min_macro_auc", float, 0.7, "Lowest macro AUC that can be blessed."),
        Param("tolerance", float, 0.01, "How much lower than the live model's a blessed model's macro F1 and AUC (AU "
              "task) or mean CCC (valence/arousal) may be."),
        Param("batch_size", int, 64, "Images per call of the model's serving signature.", pipeline=None),
    ),
)
