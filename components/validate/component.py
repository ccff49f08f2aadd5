"""KFP wrapper of the validate step: TFDV statistics, schema and anomalies."""
from kfp import dsl

from components.common import images
from components.validate.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def validate(
    manifest: dsl.Input[dsl.Dataset],
    downloads: dsl.Input[dsl.Dataset],
    validation: dsl.Output[dsl.Artifact],
    statistics_view: dsl.Output[dsl.HTML],
    schema_uri: str,
    max_anomalies: int,
):
    from components.common.errors import refusals
    from components.validate import logic

    with refusals("validate"):
        logic.run(
            manifest_dir=manifest.path,
            downloads_dir=downloads.path,
            output_dir=validation.path,
            html_path=statistics_view.path,
            schema_uri=schema_uri,
            max_anomalies=max_anomalies,
        )
