"""KFP wrapper of the download step: the manifest in, images + ledger out."""
from kfp import dsl

from components.common import images
from components.download.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def download(
    manifest: dsl.Input[dsl.Dataset],
    downloads: dsl.Output[dsl.Dataset],
    store: str,
    workers: int,
    timeout: float,
    max_attempts: int,
    max_bytes: int,
    allow_private: bool,
    min_ok: float,
):
    from components.common.errors import refusals
    from components.download import logic

    with refusals("download"):
        summary = logic.run(
            manifest_dir=manifest.path,
            output_dir=downloads.path,
            store=store,
            workers=workers,
            timeout=timeout,
            max_attempts=max_attempts,
            max_bytes=max_bytes,
            allow_private=allow_private,
            progress=logic.PROGRESS_LINES,  # the local console draws its bar from them
            min_ok=min_ok,
        )
    downloads.metadata.update({"total": summary["total"], "ok": summary["ok"], "failed": summary["failed"],
                               "transient_failed": summary["transient_failed"]})
