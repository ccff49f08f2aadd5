"""The tf.train.Example layout of contract 3 (convert, filter, train, evaluate all read and write it here)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterable, Sequence

SPLITS = ("train", "validation", "test")
EXAMPLES_SUMMARY_FILE = "examples_summary.json"  # written last by convert and filter: the folder is whole
SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.tfrecord"
_SHARD_RE = re.compile(r"^(train|validation|test)-(\d{5})-of-(\d{5})\.tfrecord$")

# Feature keys, exactly as in docs/architecture.md, contract 3.
IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_KEY = "image/key"
LABEL_AU_IDS = "label/au_ids"
LABEL_AU = "label/au"
LABEL_VA = "label/va"
# The counter of examples_summary.json that convert and filter both keep: the examples in the folder.
EXAMPLES_WRITTEN = "examples_written"


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
    face: dict | None = None,
):
    """Builds one contract-3 tf.train.Example (image bytes must already be RGB JPEG).

    The fields are filled once, by encode_example (which the Beam steps use without TensorFlow).
    """
    import tensorflow as tf

    return tf.train.Example.FromString(encode_example(encoded, height, width, key, au_ids, au, va, image_format, face))


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
    from components.common import faces

    if faces.FACE_STATUS in f:
        out["face_status"] = f[faces.FACE_STATUS].bytes_list.value[0].decode()
    if faces.FACE_SCALE in f:
        out["face_scale"] = f[faces.FACE_SCALE].bytes_list.value[0].decode()
    for name, field in ((faces.FACE_BOX, "face_box"), (faces.FACE_LANDMARKS, "face_landmarks"),
                        (faces.FACE_SCORE, "face_score"), (faces.FACE_ANGLE, "face_angle")):
        if name in f:
            out[field] = [float(v) for v in f[name].float_list.value]
    if faces.FACE_COUNT in f:
        out["face_count"] = int(f[faces.FACE_COUNT].int64_list.value[0])
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

    path = storage.join(examples_dir, EXAMPLES_SUMMARY_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: {examples_dir} is not an examples folder written by convert or filter"
        )
    return json.loads(storage.read_text(path))


def write_summary(examples_dir: str, summary: dict) -> None:
    from components.common import storage

    storage.write_text(storage.join(examples_dir, EXAMPLES_SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True))


def iter_examples(files: Iterable[str]):
    """Yields the serialized examples of TFRecord files, in order (eager, for small sets and tests)."""
    import tensorflow as tf

    for f in files:
        for record in tf.data.TFRecordDataset(f):
            yield record.numpy()


# --- TensorFlow-free encoding -------------------------------------------------------------
# Beam workers build and read millions of examples; importing TensorFlow in each of them
# costs seconds and hundreds of MB. The same messages, built from protobuf alone in a
# private descriptor pool, are byte-compatible with tf.train.Example (same field numbers).

_EXAMPLE_CLASS = None


def _proto_example_class():
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is not None:
        return _EXAMPLE_CLASS
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="contract3/example.proto", package="tensorflow", syntax="proto3")

    def message(name, fields, nested=(), oneofs=()):
        m = fdp.message_type.add(name=name)
        for n in oneofs:
            m.oneof_decl.add(name=n)
        for field in fields:
            m.field.add(**field)
        for n in nested:
            m.nested_type.add().CopyFrom(n)
        return m

    def repeated(type_):
        return dict(name="value", number=1, label=F.LABEL_REPEATED, type=type_)

    message("BytesList", [repeated(F.TYPE_BYTES)])
    message("FloatList", [repeated(F.TYPE_FLOAT)])
    message("Int64List", [repeated(F.TYPE_INT64)])
    message(
        "Feature",
        [
            dict(name=n, number=i, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE, type_name=f".tensorflow.{t}",
                 oneof_index=0)
            for i, (n, t) in enumerate(
                [("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")], start=1
            )
        ],
        oneofs=["kind"],
    )
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                    type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message(
        "Features",
        [dict(name="feature", number=1, label=F.LABEL_REPEATED, type=F.TYPE_MESSAGE,
              type_name=".tensorflow.Features.FeatureEntry")],
        nested=[entry],
    )
    message(
        "Example",
        [dict(name="features", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
              type_name=".tensorflow.Features")],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    _EXAMPLE_CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))
    return _EXAMPLE_CLASS


def encode_example(
    encoded: bytes,
    height: int,
    width: int,
    key: str,
    au_ids: Sequence[int],
    au: Sequence[int],
    va: Sequence[float] | None = None,
    image_format: str = "jpeg",
    face: dict | None = None,
) -> bytes:
    """make_example(...).SerializeToString() without importing TensorFlow (what the Beam steps use).

    face: the face features of components.common.faces ({key: bytes, or a list of floats or ints}).
    """
    if len(au_ids) != len(au):
        raise ValueError(f"image {key}: {len(au_ids)} AU ids but {len(au)} AU labels")
    example = _proto_example_class()()
    f = example.features.feature
    f[IMAGE_ENCODED].bytes_list.value.append(encoded)
    f[IMAGE_FORMAT].bytes_list.value.append(image_format.encode())
    f[IMAGE_HEIGHT].int64_list.value.append(int(height))
    f[IMAGE_WIDTH].int64_list.value.append(int(width))
    f[IMAGE_KEY].bytes_list.value.append(key.encode())
    f[LABEL_AU_IDS].int64_list.value.extend(list(map(int, au_ids)))
    f[LABEL_AU].int64_list.value.extend(list(map(int, au)))
    if va is not None:
        f[LABEL_VA].float_list.value.extend(list(map(float, va)))
    for name, value in (face or {}).items():
        if isinstance(value, bytes):
            f[name].bytes_list.value.append(value)
        elif all(isinstance(v, int) for v in value):  # Python ints: int64_list; floats: float_list
            f[name].int64_list.value.extend(int(v) for v in value)
        else:
            f[name].float_list.value.extend(float(v) for v in value)
    return example.SerializeToString()


def decode_example(serialized: bytes):
    """A serialized contract-3 example as a protobuf message with tf.train.Example's fields, without TensorFlow."""
    return _proto_example_class().FromString(serialized)


# --- TFRecord framing ---------------------------------------------------------------------
# Each record: uint64 length, masked crc32c of the length, the data, masked crc32c of the data
# (little-endian), exactly what tf.io.TFRecordWriter writes; readable by tf.data.TFRecordDataset.


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_record(fileobj, data: bytes) -> int:
    """Appends one TFRecord record to a binary file object; returns the bytes written."""
    import struct

    header = struct.pack("<Q", len(data))
    fileobj.write(header)
    fileobj.write(struct.pack("<I", _masked_crc32c(header)))
    fileobj.write(data)
    fileobj.write(struct.pack("<I", _masked_crc32c(data)))
    return len(data) + 16


def read_records(fileobj, name: str = "TFRecord file"):
    """Yields the records of a TFRecord binary file object, checking both checksums of each."""
    import struct

    index = 0
    while True:
        header = fileobj.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError(f"{name}: record {index} is truncated (the file ends inside its header)")
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != _masked_crc32c(header[:8]):
            raise ValueError(f"{name}: record {index} has a corrupt length (checksum mismatch); is it a TFRecord file?")
        body = fileobj.read(length + 4)
        if len(body) < length + 4:
            raise ValueError(f"{name}: record {index} is truncated ({len(body)} of {length + 4} bytes)")
        data = body[:length]
        if struct.unpack("<I", body[length:])[0] != _masked_crc32c(data):
            raise ValueError(f"{name}: record {index} is corrupt (data checksum mismatch)")
        yield data
        index += 1


def label_counts(au_rows, num_aus: int):
    """Per-AU [positive, negative, unknown] counts of an (N, K) array of 0/1/999 labels, as an int64 (K, 3) array."""
    import numpy as np

    a = np.asarray(au_rows, dtype=np.int64).reshape(-1, num_aus)
    return np.stack([(a == 1).sum(0), (a == 0).sum(0), (a == 999).sum(0)], axis=1).astype(np.int64)


def summary_au_table(au_ids: Sequence[int], counts) -> dict:
    """{"1": {"positive": .., "negative": .., "unknown": ..}, ...} from a (K, 3) count array (examples_summary.json)."""
    return {
        str(int(a)): {"positive": int(c[0]), "negative": int(c[1]), "unknown": int(c[2])}
        for a, c in zip(au_ids, counts)
    }


def remove_stale_shards(examples_dir: str, keep: Iterable[str]) -> list[str]:
    """Deletes the shard files of examples_dir that are not in keep (left by an earlier run); returns them."""
    from components.common import storage

    def norm(p: str) -> str:
        return p if storage.is_gcs(p) else os.path.normpath(os.path.abspath(p))

    kept = {norm(k) for k in keep}
    removed = []
    for split in SPLITS:
        for f in shard_files(examples_dir, split):
            if norm(f) not in kept and os.path.dirname(norm(f)) == norm(examples_dir).rstrip("/"):
                storage.delete(f)
                removed.append(f)
    return removed


def format_summary(summary: dict) -> str:
    """An examples_summary.json as the lines a CLI prints: examples and shards per split, then the counters."""
    lines = [f"{split:<11} {s['examples']:>8} examples in {s['shards']} shard(s)" for split, s in summary["splits"].items()]
    lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in summary["counters"].items()))
    return "\n".join(lines)
