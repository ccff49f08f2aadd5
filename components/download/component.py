"""KFP wrapper of the download step: the manifest in, images + ledger out."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
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
    """Fetches every image of the manifest with retries and keeps a per-URL ledger.

    Args:
        manifest: Folder written by ingest (manifest.parquet).
        downloads: Folder with images/, ledger.parquet and download_summary.json.
        store: Local folder or gs:// prefix keeping images and ledger across runs ("" for none).
        workers: Parallel downloads.
        timeout: Seconds allowed to connect and for each read of a request; its total deadline is 3 x this.
        max_attempts: Attempts per URL for transient failures.
        max_bytes: Largest body accepted, in bytes.
        allow_private: Allow private and loopback addresses (True for the demo, False on a cluster).
        min_ok: Stop the run when fewer than this share of the URLs gave an image (always when none did).
    """
    from components.download import logic

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
