"""Writes small manifest and downloads folders in the shape of contracts 1 and 2 (test data for convert and filter)."""
from __future__ import annotations

import hashlib
import io
import os

from components.common import labels
from components.common.ledger import COLUMNS as LEDGER_COLUMNS
from components.common.ledger import IMAGES_DIR, LEDGER_FILE
from components.common.manifest import MANIFEST_FILE

# Pillow format name -> the extension download gives the file.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}


def face_like(size: int, seed: int, mode: str = "RGB"):
    """A smooth image with a little noise (compresses like a photo, unlike pure noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    c = rng.uniform(0, 1, (3, 3))
    rgb = np.stack([c[i, 0] * x + c[i, 1] * y + c[i, 2] * (1 - x) * y for i in range(3)], axis=-1)
    rgb = np.clip(rgb * 200 + rng.normal(0, 6, rgb.shape) + 20, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def encode(image, image_format: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format, **params)
    return out.getvalue()


def write_dataset(root: str, images: list[bytes | None], au=None, va=None, failed: int = 0, seed: int = 0):
    """Writes root/manifest/manifest.parquet and root/downloads/{images/, ledger.parquet} for the given image bytes.

    images[i] is row i's downloaded bytes (None: status ok in the ledger but no file, as after
    a lost disk). au: (N, 60) labels (random 0/1/999 by default); va: (N, 2) or None. failed:
    extra manifest rows whose download failed. Returns (manifest_dir, downloads_dir, keys).
    """
    import numpy as np
    import pandas as pd
    from PIL import Image

    n = len(images) + failed
    rng = np.random.default_rng(seed)
    if au is None:
        au = rng.choice(np.array(labels.VALID_LABELS, dtype=np.int16), size=(n, 60), p=[0.6, 0.25, 0.15])
    au = np.asarray(au, dtype=np.int16).reshape(-1, 60)
    if len(au) < n:
        au = np.concatenate([au, np.zeros((n - len(au), 60), np.int16)])
    urls = [f"http://127.0.0.1:8000/faces/{seed}/{i}.img" for i in range(n)]
    keys = [labels.image_key(u) for u in urls]
    manifest = pd.DataFrame({"key": keys, "url": urls})
    for j, column in enumerate(labels.AU_COLUMNS):
        manifest[column] = au[:, j].astype(np.int16)
    manifest["row"] = np.arange(2, n + 2)
    if va is not None:
        va = np.asarray(va, dtype=np.float32).reshape(-1, 2)
        manifest["valence"] = np.concatenate([va[:, 0], np.full(n - len(va), np.nan, np.float32)])
        manifest["arousal"] = np.concatenate([va[:, 1], np.full(n - len(va), np.nan, np.float32)])
    manifest_dir = os.path.join(root, "manifest")
    downloads_dir = os.path.join(root, "downloads")
    os.makedirs(manifest_dir, exist_ok=True)
    os.makedirs(os.path.join(downloads_dir, IMAGES_DIR), exist_ok=True)
    manifest.to_parquet(os.path.join(manifest_dir, MANIFEST_FILE), index=False)

    rows = []
    for i, (key, url) in enumerate(zip(keys, urls)):
        data = images[i] if i < len(images) else None
        if i >= len(images):
            rows.append(dict(key=key, url=url, status="failed", error_class="http_404", http_status=404, attempts=1,
                             bytes=0, sha256="", format="", width=0, height=0, message="404 Not Found"))
            continue
        fmt, width, height = "jpg", 0, 0
        if data is not None:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    fmt, (width, height) = EXTENSIONS.get(im.format, "jpg"), im.size
            except Exception:  # noqa: BLE001 - the corrupt images of the tests are meant to fail here
                pass
            with open(os.path.join(downloads_dir, IMAGES_DIR, f"{key}.{fmt}"), "wb") as f:
                f.write(data)
        rows.append(dict(key=key, url=url, status="ok", error_class="ok", http_status=200, attempts=1,
                         bytes=len(data or b""), sha256=hashlib.sha256(data or b"").hexdigest(), format=fmt,
                         width=width, height=height, message=""))
    ledger = pd.DataFrame(rows)
    now = pd.Timestamp("2024-01-01T00:00:00Z")
    ledger["first_attempt"] = now
    ledger["last_attempt"] = now
    ledger[list(LEDGER_COLUMNS)].to_parquet(os.path.join(downloads_dir, LEDGER_FILE), index=False)
    return manifest_dir, downloads_dir, keys


def demo_images(n: int, size: int = 128, seed: int = 0, png_share: float = 0.3) -> list[bytes]:
    """n demo-like face images: RGB JPEG, with png_share of them PNG (which convert re-encodes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = face_like(size, seed * 1_000_003 + i)
        out.append(encode(image, "PNG") if rng.random() < png_share else encode(image, "JPEG", quality=90))
    return out
