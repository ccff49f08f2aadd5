"""KFP wrapper of the report step: every step's output in, the run report out as an HTML artifact (the KFP UI shows it)."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def report(
    manifest: dsl.Input[dsl.Dataset],
    downloads: dsl.Input[dsl.Dataset],
    validation: dsl.Input[dsl.Artifact],
    examples: dsl.Input[dsl.Dataset],
    filtered: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    pushed: dsl.Input[dsl.Artifact],
    page: dsl.Output[dsl.HTML],
):
    """Writes the run report: one self-contained HTML page of the run's outputs, shown in the KFP UI.

    Args:
        manifest: Folder written by ingest.
        downloads: Folder written by download.
        validation: Folder written by validate.
        examples: Folder written by convert.
        filtered: Folder written by filter.
        model: Folder written by train.
        evaluation: Folder written by evaluate.
        pushed: Folder written by push.
        page: The run report (HTML, images inlined).
    """
    from components.report import logic

    folders = {"manifest": manifest.path, "downloads": downloads.path, "validation": validation.path,
               "examples": examples.path, "filtered": filtered.path, "model": model.path,
               "evaluation": evaluation.path, "pushed": pushed.path}
    print(f"report: {logic.run(folders, page.path)}")
