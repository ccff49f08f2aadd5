"""A folder (or gs:// prefix) of images as a manifest: one row per image file, its path or URI as the url, no labels."""
from __future__ import annotations

import os

from components.common import labels, manifest, storage
from components.common.errors import StepRefusal

# The files a listing keeps (by extension, any case); anything else in the folder is left out and counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class ListingError(StepRefusal):
    """A folder that cannot be listed, or holds no image; the message names it and what to do."""


def is_listing_source(source: str) -> bool:
    """Whether a source names a folder of images (a local folder, or a gs:// prefix that is not a sheet)."""
    if storage.is_gcs(source):
        return not source.lower().endswith((".xlsx", ".csv"))
    return os.path.isdir(source)


def list_images(images: str) -> tuple[list[str], int]:
    """(the image files under a local folder or gs:// prefix, sorted, hidden ones left out; how many other files
    were left out)."""
    if storage.is_gcs(images):
        files = list(storage.list_files(images.rstrip("/") + "/"))
    elif os.path.isdir(images):
        root = os.path.abspath(images)
        files = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(os.path.join(folder, n) for n in sorted(names) if not n.startswith("."))
    else:
        raise ListingError(f"{images} is not a folder: give a folder of images or a gs://BUCKET/PREFIX of them")
    kept = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return kept, len(files) - len(kept)


def write_manifest(images: str, output_dir: str) -> dict:
    """Writes output_dir/manifest.parquet (key, url, row) listing the images under `images`; returns
    {"source", "images", "skipped"}. Each url is the file's absolute path or gs:// URI; key is labels.image_key(url)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, skipped = list_images(images)
    if not files:
        raise ListingError(f"{images} holds no image ({', '.join(IMAGE_EXTENSIONS)}; {skipped} other files): "
                           "nothing to annotate; check the folder")
    table = pa.table({"key": pa.array([labels.image_key(f) for f in files], pa.string()),
                      "url": pa.array(files, pa.string()),
                      "row": pa.array(range(1, len(files) + 1), pa.int64())})
    path = manifest.manifest_path(output_dir)
    if not storage.is_gcs(path):
        os.makedirs(output_dir, exist_ok=True)
    out = pa.BufferOutputStream()
    pq.write_table(table, out)
    storage.write_bytes(path, out.getvalue().to_pybytes())
    return {"source": images, "images": len(files), "skipped": skipped}
