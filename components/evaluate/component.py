"""KFP wrapper of the evaluate step: the study's measures, and a blessing against the live model."""
from kfp import dsl

from components.common import images
from components.evaluate.params import SPEC


@dsl.component(base_image=images.GPU_IMAGE, install_kfp_package=False)
@SPEC.document
def evaluate(
    examples: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    manifest: dsl.Input[dsl.Dataset],
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    classification_metrics: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.Markdown],
    registry: str,
    model_name: str,
    min_macro_f1: float,
    min_macro_auc: float,
    tolerance: float,
    min_slice_size: int,
    min_slice_macro_f1: float,
    slice_tolerance: float,
    slice_by: str,
):
    import os

    from components.common.errors import refusals
    from components.evaluate import logic

    os.makedirs(evaluation.path, exist_ok=True)
    with refusals("evaluate"):
        logic.run(
            examples_dir=examples.path,
            model_dir=model.path,
            manifest=manifest.path,
            output_dir=evaluation.path,
            registry=registry,
            model_name=model_name,
            min_macro_f1=min_macro_f1,
            min_macro_auc=min_macro_auc,
            tolerance=tolerance,
            min_slice_size=min_slice_size,
            min_slice_macro_f1=min_slice_macro_f1,
            slice_tolerance=slice_tolerance,
            slice_by=slice_by,
            kfp_metrics=metrics,
            kfp_classification_metrics=classification_metrics,
            report_path=report.path,
            progress=True,  # progress lines: the local console draws its bar from them
        )
