"""The evaluate step's one declaration: what it reads and writes, and its parameters."""
from components.common.params import MODEL_NAME, REGISTRY, Artifact, Param, StepSpec

SPEC = StepSpec(
    name="evaluate",
    description="Scores the model on the test split and decides whether it is blessed.",
    inputs=(
        Artifact("examples", "Folder written by filter."),
        Artifact("model", "Folder written by train."),
        # An input, not a path convert recorded: on a cluster that path is another step's and may not be readable
        # here. Optional on the CLI, where the one examples_summary.json names is read instead.
        Artifact("manifest", "Folder written by ingest (manifest.parquet): each example's URL, for the URL-host and "
                 "--slice-by slices.", required=False),
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
        # Slices (components/evaluate/slices.py). 30 examples: fewer hold a handful of positives per AU, whose F1
        # swings by more than any floor is worth. No floor by default: the demo's test split is small and a floor
        # is a deployment's choice. A slice may fall 0.1 below the live model's: ten times the whole split's
        # tolerance, as a slice of 30 is that much noisier; a larger fall is worth a look before it goes live.
        Param("min_slice_size", int, 30, "Examples a slice needs to be measured and judged; smaller ones are listed "
              "as too small."),
        Param("min_slice_macro_f1", float, 0.0, "Lowest macro F1 (at 0.5) the worst slice may have to be blessed "
              "(0 turns the floor off)."),
        Param("slice_tolerance", float, 0.1, "How much lower than the live model's a slice's macro F1 (at 0.5) may "
              "be before the model is refused."),
        Param("slice_by", str, "", "Columns to slice by as well, comma-separated: a column of the sheet (e.g. "
              "source_site, kept by ingest from a sheet with a header) or of the manifest (e.g. AU43); the URL's host is "
              "always a slice where the manifest can be read."),
    ),
)
