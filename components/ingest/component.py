"""KFP wrapper of the ingest step: the sheet in, the manifest out."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def ingest(source: str, manifest: dsl.Output[dsl.Dataset]):
    """Reads the EmotioNet sheet, checks every row and writes the manifest.

    Args:
        source: The sheet (.xlsx or .csv, EmotioNet layout), a local path or gs:// URI.
        manifest: Folder with manifest.parquet, rejects.csv and ingest_summary.json.
    """
    from components.ingest import logic

    try:
        summary = logic.run(source=source, output_dir=manifest.path)
    except logic.SheetError as e:
        raise SystemExit(f"ingest: {e}") from None  # the message, not a traceback, in the step's log
    manifest.metadata.update({"rows_read": summary["rows_read"], "kept": summary["kept"], "rejected": summary["rejected"]})
