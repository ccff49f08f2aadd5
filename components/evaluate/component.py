"""KFP wrapper of the evaluate step: the study's measures, and a blessing against the live model."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.GPU_IMAGE, install_kfp_package=False)
def evaluate(
    examples: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    classification_metrics: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.Markdown],
    registry: str,
    model_name: str,
    min_macro_f1: float,
    min_macro_auc: float,
    tolerance: float,
):
    """Scores the model on the test split and decides whether it is blessed.

    Args:
        examples: Folder written by filter.
        model: Folder written by train.
        evaluation: Folder with metrics.json, blessing.json, report.md and curve PNGs.
        metrics: Headline numbers for the KFP UI.
        classification_metrics: Confusion matrix and ROC for the KFP UI.
        report: Markdown report with the per-AU table.
        registry: Registry the live model is read from (local folder or gs://).
        model_name: Name of the model in the registry.
        min_macro_f1: Lowest macro F1 that can be blessed.
        min_macro_auc: Lowest macro AUC that can be blessed.
        tolerance: How much lower than the live model's macro F1 and AUC a blessed model's may be.
    """
    import os

    from components.evaluate import logic

    os.makedirs(evaluation.path, exist_ok=True)
    logic.run(
        examples_dir=examples.path,
        model_dir=model.path,
        output_dir=evaluation.path,
        registry=registry,
        model_name=model_name,
        min_macro_f1=min_macro_f1,
        min_macro_auc=min_macro_auc,
        tolerance=tolerance,
        kfp_metrics=metrics,
        kfp_classification_metrics=classification_metrics,
        report_path=report.path,
        progress=True,  # progress lines: the local console draws its bar from them
    )
