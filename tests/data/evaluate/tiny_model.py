"""Tiny contract-4 models and contract-3 examples for the evaluate, push and predict tests.

The images are flat colours; AU j of an image is active when its colour channel j is bright.
A model scores AU j as sigmoid(sum_c W[c, j] * mean_c + b[j]) of the image's mean R, G, B, so
the tests choose how good a model is by choosing W. Tests import it by its path
(tests/data is no package), which works under every pytest import mode.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from components.common import examples as ex

AU_IDS = [1, 2, 12]
# AU j follows channel j: a model that reads the right channel, sharply.
GOOD = (np.eye(3) * 12.0, np.full(3, -6.0))
# Reads the right channel weakly and a wrong one as much: clearly worse.
POOR = (np.eye(3) * 3.0 + np.roll(np.eye(3), 1, axis=0) * 3.0, np.full(3, -3.0))


def jpeg(rgb, size: int = 8, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(int(v) for v in rgb)).save(buf, format=fmt)
    return buf.getvalue()


def make_model(model_dir: str, weights=GOOD, au_ids=AU_IDS, task: str = "au", faces: dict | None = None) -> str:
    """Writes saved_model/ (serving_default: image_bytes -> probabilities or valence_arousal) and model_config.json."""
    import tensorflow as tf

    w, b = weights
    w = np.asarray(w, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(w)
            self.b = tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            def features(x):
                img = tf.image.resize(tf.cast(tf.io.decode_jpeg(x, channels=3), tf.float32) / 255.0, [8, 8])
                return tf.reduce_mean(img, axis=[0, 1])

            f = tf.map_fn(features, image_bytes, fn_output_signature=tf.TensorSpec([3], tf.float32))
            logits = tf.matmul(f, self.w) + self.b
            if task == "va":
                return {"valence_arousal": tf.tanh(logits)}
            return {"probabilities": tf.sigmoid(logits)}

    m = Tiny()
    os.makedirs(model_dir, exist_ok=True)
    tf.saved_model.save(m, os.path.join(model_dir, "saved_model"), signatures={"serving_default": m.serve})
    config = {"au_ids": list(au_ids) if task == "au" else [], "task": task, "image_size": 8, "backbone": "tiny"}
    if faces is not None:
        config["faces"] = faces
    with open(os.path.join(model_dir, "model_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(model_dir, "history.json"), "w") as f:
        json.dump({"loss": [1.0, 0.5]}, f)
    return model_dir


def make_examples(examples_dir: str, sizes=None, seed: int = 0, flip: float = 0.1, unknown: float = 0.15,
                  with_va: bool = False) -> str:
    """Writes test/validation/train shards of flat-colour images and examples_summary.json."""
    import tensorflow as tf

    sizes = sizes or {"train": 10, "validation": 60, "test": 80}
    rng = np.random.default_rng(seed)
    os.makedirs(examples_dir, exist_ok=True)
    summary = {"au_ids": AU_IDS, "policy": "mask", "has_va": with_va, "splits": {}, "counters": {}}
    for split, n in sizes.items():
        colours = rng.uniform(0, 1, size=(n, 3))
        au = (colours > 0.5).astype(int)
        au = np.where(rng.uniform(size=au.shape) < flip, 1 - au, au)
        au = np.where(rng.uniform(size=au.shape) < unknown, 999, au)
        path = os.path.join(examples_dir, ex.shard_name(split, 0, 1))
        with tf.io.TFRecordWriter(path) as w:
            for i in range(n):
                va = [float(colours[i, 0] * 2 - 1), float(colours[i, 1] * 2 - 1)] if with_va else None
                e = ex.make_example(jpeg(colours[i] * 255), 8, 8, f"{split}{i:04d}", AU_IDS, au[i].tolist(), va)
                w.write(e.SerializeToString())
        summary["splits"][split] = {
            "examples": n,
            "shards": 1,
            "au": {str(a): {"positive": int((au[:, j] == 1).sum()), "negative": int((au[:, j] == 0).sum()),
                            "unknown": int((au[:, j] == 999).sum())} for j, a in enumerate(AU_IDS)},
        }
    ex.write_summary(examples_dir, summary)
    return examples_dir


def make_evaluation(evaluation_dir: str, blessed: bool, reasons=("made by the test",)) -> str:
    """An evaluation folder as evaluate writes it, with a chosen verdict (for push tests)."""
    os.makedirs(evaluation_dir, exist_ok=True)
    with open(os.path.join(evaluation_dir, "blessing.json"), "w") as f:
        json.dump({"blessed": blessed, "reasons": list(reasons), "baseline": None}, f)
    with open(os.path.join(evaluation_dir, "metrics.json"), "w") as f:
        json.dump({"task": "au", "au_ids": AU_IDS,
                   "thresholds": {"default": 0.5, "tuned": {"1": 0.4, "2": 0.6, "12": 0.5}}}, f)
    with open(os.path.join(evaluation_dir, "report.md"), "w") as f:
        f.write("# report\n")
    return evaluation_dir

