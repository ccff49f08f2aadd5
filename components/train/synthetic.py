"""Small contract-3 examples folders with a learnable signal, for train's tests and benchmark (no demo set needed)."""
from __future__ import annotations

import io
import os

import numpy as np

from components.common import examples as ex
from components.common import labels


def draw(active: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image: noise, plus a bright square at AU j's own place wherever AU j is active."""
    img = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
    k = len(active)
    cols = int(np.ceil(np.sqrt(k)))
    cell = size // cols
    half = max(1, cell // 3)
    for j, on in enumerate(active):
        if on:
            cy, cx = (j // cols) * cell + cell // 2, (j % cols) * cell + cell // 2
            img[max(0, cy - half): cy + half, max(0, cx - half): cx + half] = (230, 220, 40)
    return img


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_examples(
    out_dir: str,
    counts: dict | None = None,
    *,
    size: int = 32,
    au_ids=(1, 2, 4, 12),
    prevalence: float = 0.35,
    unknown_rate: float = 0.0,
    with_va: bool = False,
    shards: int = 1,
    seed: int = 0,
) -> dict:
    """Writes `<split>-*.tfrecord` shards and examples_summary.json; returns the summary.

    Valence is the share of active AUs mapped to -1..1 and arousal its negative, so the
    regression task is learnable too.
    """
    import tensorflow as tf

    counts = counts or {"train": 64, "validation": 16, "test": 16}
    rng = np.random.default_rng(seed)
    au_ids = [int(a) for a in au_ids]
    os.makedirs(out_dir, exist_ok=True)
    summary = {"au_ids": au_ids, "policy": "mask" if unknown_rate else "drop", "has_va": bool(with_va),
               "splits": {}, "counters": {}}
    for split in ex.SPLITS:
        n = int(counts.get(split, 0))
        active = rng.random((n, len(au_ids))) < prevalence
        au = active.astype(np.int64)
        au[rng.random(au.shape) < unknown_rate] = labels.UNKNOWN
        n_shards = max(1, min(shards, n)) if n else 0
        writers = [
            tf.io.TFRecordWriter(os.path.join(out_dir, ex.shard_name(split, i, n_shards))) for i in range(n_shards)
        ]
        for i in range(n):
            img = draw(active[i], size, rng)
            va = None
            if with_va:
                v = float(active[i].mean() * 2 - 1)
                va = [v, -v]
            example = ex.make_example(encode_jpeg(img), size, size, f"{split}-{i:05d}", au_ids, au[i].tolist(), va)
            writers[i % n_shards].write(example.SerializeToString())
        for w in writers:
            w.close()
        summary["splits"][split] = {
            "examples": n,
            "shards": n_shards,
            "au": {
                str(a): {
                    "positive": int((au[:, j] == 1).sum()),
                    "negative": int((au[:, j] == 0).sum()),
                    "unknown": int((au[:, j] == labels.UNKNOWN).sum()),
                }
                for j, a in enumerate(au_ids)
            },
        }
    ex.write_summary(out_dir, summary)
    return summary
