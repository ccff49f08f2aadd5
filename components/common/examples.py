"""The tf.train.Example layout of contract 3 (convert, filter, train, evaluate all read and write it here)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterable, Sequence

SPLITS = ("train", "validation", "test")
SUMMARY_FILE = "examples_summary.json"
SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.tfrecord"
_SHARD_RE = re.compile(r"^(train|validation|test)-(\d{5})-of-(\d{5})\.tfrecord$")

# Feature keys, exactly as in DESIGN.md contract 3.
IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_KEY = "image/key"
LABEL_AU_IDS = "label/au_ids"
LABEL_AU = "label/au"
LABEL_VA = "label/va"


def shard_name(split: str, index: int, count: int) -> str:
    return SHARD_PATTERN.format(split=split, index=index, count=count)


def split_for_key(key: str, validation_fraction: float, test_fraction: float) -> str:
    """The split of an image, from its key's hash alone: the same on every run and every machine."""
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError(
            f"split fractions validation={validation_fraction} test={test_fraction}: each must be in [0, 1) "
            "and together below 1"
        )
    # Re-hash the key so the split is independent of any other use of the key's digits.
    u = int(hashlib.sha256(("split:" + key).encode()).hexdigest()[:15], 16) / float(16**15)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def shard_files(examples_dir: str, split: str) -> list[str]:
    """The shard files of one split in an examples folder (local or gs://), sorted."""
    from components.common import storage

    names = []
    for f in storage.list_files(examples_dir):
        m = _SHARD_RE.match(os.path.basename(f))
        if m and m.group(1) == split:
            names.append(f)
    return sorted(names)


def make_example(
    encoded: bytes,
    height: int,
    width: int,
    key: str,
    au_ids: Sequence[int],
    au: Sequence[int],
    va: Sequence[float] | None = None,
    image_format: str = "jpeg",
):
    """Builds one contract-3 tf.train.Example (image bytes must already be RGB JPEG)."""
    import tensorflow as tf

    if len(au_ids) != len(au):
        raise ValueError(f"image {key}: {len(au_ids)} AU ids but {len(au)} AU labels")
    feature = {
        IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        IMAGE_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_format.encode()])),
        IMAGE_HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(height)])),
        IMAGE_WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(width)])),
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
        LABEL_AU_IDS: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(a) for a in au_ids])),
        LABEL_AU: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in au])),
    }
    if va is not None:
        feature[LABEL_VA] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in va]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def example_to_dict(example) -> dict:
    """A tf.train.Example (or its serialized bytes) as plain Python values, for tests and tools."""
    import tensorflow as tf

    if isinstance(example, (bytes, bytearray)):
        example = tf.train.Example.FromString(bytes(example))
    f = example.features.feature
    out = {
        "encoded": f[IMAGE_ENCODED].bytes_list.value[0],
        "format": f[IMAGE_FORMAT].bytes_list.value[0].decode(),
        "height": int(f[IMAGE_HEIGHT].int64_list.value[0]),
        "width": int(f[IMAGE_WIDTH].int64_list.value[0]),
        "key": f[IMAGE_KEY].bytes_list.value[0].decode(),
        "au_ids": [int(v) for v in f[LABEL_AU_IDS].int64_list.value],
        "au": [int(v) for v in f[LABEL_AU].int64_list.value],
    }
    if LABEL_VA in f and len(f[LABEL_VA].float_list.value) == 2:
        out["va"] = [float(v) for v in f[LABEL_VA].float_list.value]
    return out


def feature_spec(num_aus: int, with_va: bool = False) -> dict:
    """tf.io.parse_example spec for an examples folder whose au_ids has num_aus entries."""
    import tensorflow as tf

    spec = {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_AU_IDS: tf.io.FixedLenFeature([num_aus], tf.int64),
        LABEL_AU: tf.io.FixedLenFeature([num_aus], tf.int64),
    }
    if with_va:
        spec[LABEL_VA] = tf.io.FixedLenFeature([2], tf.float32, default_value=[0.0, 0.0])
    return spec


def read_summary(examples_dir: str) -> dict:
    """examples_summary.json of an examples folder (written by convert and by filter)."""
    from components.common import storage

    path = storage.join(examples_dir, SUMMARY_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: {examples_dir} is not an examples folder written by convert or filter"
        )
    return json.loads(storage.read_text(path))


def write_summary(examples_dir: str, summary: dict) -> None:
    from components.common import storage

    storage.write_text(storage.join(examples_dir, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True))


def iter_examples(files: Iterable[str]):
    """Yields the serialized examples of TFRecord files, in order (eager, for small sets and tests)."""
    import tensorflow as tf

    for f in files:
        for record in tf.data.TFRecordDataset(f):
            yield record.numpy()
