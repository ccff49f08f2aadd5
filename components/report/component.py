"""KFP wrapper of the report step: every step's output in, the run report out as an HTML artifact (the KFP UI shows it)."""
from kfp import dsl

from components.common import images
from components.report.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
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
    from components.report import logic

    folders = {"manifest": manifest.path, "downloads": downloads.path, "validation": validation.path,
               "examples": examples.path, "filtered": filtered.path, "model": model.path,
               "evaluation": evaluation.path, "pushed": pushed.path}
    print(f"report: {logic.run(folders, page.path)}")
