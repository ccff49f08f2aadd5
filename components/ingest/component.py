"""KFP wrapper of the ingest step: the sheet in, the manifest out."""
from kfp import dsl

from components.common import images
from components.ingest.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def ingest(source: str, manifest: dsl.Output[dsl.Dataset]):
    from components.common.errors import refusals
    from components.ingest import logic

    with refusals("ingest"):
        summary = logic.run(source=source, output_dir=manifest.path)
    manifest.metadata.update({"rows_read": summary["rows_read"], "kept": summary["kept"], "rejected": summary["rejected"]})
