"""KFP wrapper of the validate step: TFDV statistics, schema and anomalies."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def validate(
    manifest: dsl.Input[dsl.Dataset],
    downloads: dsl.Input[dsl.Dataset],
    validation: dsl.Output[dsl.Artifact],
    statistics_view: dsl.Output[dsl.HTML],
    schema_uri: str,
    max_anomalies: int,
):
    """Computes TFDV statistics of labels and image metadata and checks them against the kept schema.

    Args:
        manifest: Folder written by ingest (manifest.parquet).
        downloads: Folder written by download (ledger.parquet).
        validation: Folder with statistics, schema, anomalies and validation_summary.json.
        statistics_view: TFDV's HTML view of the statistics and anomalies.
        schema_uri: Where the schema is kept between runs (local or gs://; "" to infer each run).
        max_anomalies: Most anomalies tolerated before the step stops.
    """
    from components.validate import logic

    logic.run(
        manifest_dir=manifest.path,
        downloads_dir=downloads.path,
        output_dir=validation.path,
        html_path=statistics_view.path,
        schema_uri=schema_uri,
        max_anomalies=max_anomalies,
    )
