"""The tf.data input pipeline of train: interleaved shard reads, parallel decode, resize, cache, augment, prefetch."""
from __future__ import annotations

import math

from components.common import examples as ex
from components.common import labels
from components.train.params import POS_WEIGHTS, SPEC

AUTOTUNE = -1  # tf.data.AUTOTUNE's value: this module imports TensorFlow only when it runs

# What augmentation does, as fractions of the image (rotation in degrees): small enough
# that every AU's cue stays in the picture and on its side of the face.
AUGMENT = {
    "flip": 0.5,  # a mirrored face shows the same AUs: the labels name no side
    "rotation_deg": 10.0,
    "zoom": 0.1,  # scale 0.9..1.1: with the shift below, a random crop
    "shift": 0.05,
    "brightness": 0.1,
    "contrast": 0.2,
    "saturation": 0.2,
}


def decode_and_resize(encoded, image_size: int):
    """Encoded image bytes -> float32 [S, S, 3] RGB in 0..255.

    JPEG, PNG, GIF (first frame) or BMP; TensorFlow 2.16 reads no WebP. The one definition
    of how pixels reach the model: the training pipeline and the exported serving signature
    both call it. The whole image is resized to the square input (aspect ratio not kept);
    antialiasing keeps large photos from aliasing as they shrink.
    """
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([image_size, image_size, 3])
    return image


def _parse_fn(num_aus: int, task: str, image_size: int):
    import tensorflow as tf

    spec = ex.feature_spec(num_aus)
    # label/va is optional per example: a missing pair becomes NaN, which the loss masks.
    spec[ex.LABEL_VA] = tf.io.VarLenFeature(tf.float32)

    def parse(record):
        f = tf.io.parse_single_example(record, spec)
        image = decode_and_resize(f[ex.IMAGE_ENCODED], image_size)
        # Rounded to bytes so a cached split takes a quarter of the memory.
        image = tf.cast(tf.round(image), tf.uint8)
        if task == "va":
            va = tf.sparse.to_dense(f[ex.LABEL_VA])
            va = tf.concat([va, tf.fill([2], float("nan"))], 0)[:2]
            return image, va
        return image, tf.cast(f[ex.LABEL_AU], tf.float32)

    return parse


def augment_batch(images, seed: int | None = None, strength: dict | None = None):
    """Random flip, rotation, zoom/crop, shift and colour for a batch of 0..255 images -> float32, drawn per image.

    Works on whole batches, one op per kind: on a 2-core CPU the augmentation must stay well
    ahead of the training steps. Flip, rotation, zoom and shift are one affine map per image,
    applied to the bytes; colour is one 3x3 matrix and offset per image. A kind whose
    strength is 0 is skipped.
    """
    import tensorflow as tf

    a = dict(AUGMENT, **(strength or {}))
    x = tf.convert_to_tensor(images)
    shape = tf.shape(x)
    n, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)

    def uniform(spread, centre=0.0):
        return tf.random.uniform([n], centre - spread, centre + spread, seed=seed)

    if a["flip"] > 0 or a["rotation_deg"] > 0 or a["zoom"] > 0 or a["shift"] > 0:
        # Output pixel (x, y) reads input pixel (a0 x + a1 y + a2, b0 x + b1 y + b2):
        # rotation and zoom about the centre, then a shift; a flip negates x first.
        angle = uniform(a["rotation_deg"]) * (math.pi / 180.0)
        scale = uniform(a["zoom"], 1.0)
        tx, ty = uniform(a["shift"]) * w, uniform(a["shift"]) * h
        mirror = tf.where(tf.random.uniform([n], seed=seed) < a["flip"], -1.0, 1.0)
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        a0, a1, b0, b1 = mirror * cos, -sin, mirror * sin, cos
        zeros = tf.zeros_like(cos)
        transforms = tf.stack(
            [a0, a1, cx - a0 * cx - a1 * cy + tx, b0, b1, cy - b0 * cx - b1 * cy + ty, zeros, zeros], axis=1
        )
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT",
        )
    x = tf.cast(x, tf.float32)

    if a["brightness"] > 0 or a["contrast"] > 0 or a["saturation"] > 0:
        # Contrast about each image's channel means, brightness, then saturation about the
        # luma: all linear, so one 3x3 matrix and one offset per image.
        contrast = uniform(a["contrast"], 1.0)[:, None, None]
        saturation = uniform(a["saturation"], 1.0)[:, None, None]
        brightness = uniform(a["brightness"]) * 255.0
        luma = tf.constant([[0.299, 0.587, 0.114]])  # [1, 3]
        sat = saturation * tf.eye(3)[None] + (1.0 - saturation) * tf.ones([3, 1]) * luma  # [n, out, in]
        mean = tf.reduce_mean(x, axis=[1, 2])  # [n, 3]
        offset = tf.einsum("noi,ni->no", sat, (1.0 - contrast[:, :, 0]) * mean + brightness[:, None])
        x = tf.einsum("nhwi,noi->nhwo", x, contrast * sat) + offset[:, None, None, :]
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x


def make_dataset(
    files: list[str],
    *,
    task: str,
    num_aus: int,
    image_size: int,
    batch_size: int,
    training: bool,
    augment: bool = False,
    cache: bool = False,
    shuffle_buffer: int = SPEC.defaults.shuffle_buffer,
    seed: int = 0,
    repeat: bool = False,
):
    """(images float32 [B, S, S, 3] in 0..255, labels) batches from contract-3 shards.

    Labels are float32 [B, K] holding 0, 1 or 999 (masked by the loss) for task au, and
    [B, 2] valence/arousal (NaN where an example has none) for task va.
    """
    import tensorflow as tf

    if not files:
        raise ValueError("no TFRecord shards to read")
    files_ds = tf.data.Dataset.from_tensor_slices(list(files))
    if training:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = files_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    ds = ds.map(_parse_fn(num_aus, task, image_size), num_parallel_calls=AUTOTUNE, deterministic=not training)
    if cache:
        # Decoding is the costly part: keep the resized bytes and augment afresh each epoch.
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False, num_parallel_calls=AUTOTUNE, deterministic=not training)
    if training and augment:
        ds = ds.map(lambda x, y: (augment_batch(x), y), num_parallel_calls=AUTOTUNE, deterministic=False)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def cache_fits(num_examples: int, image_size: int, limit_mb: float) -> bool:
    """Whether a split's resized images (bytes) fit in limit_mb of memory."""
    return num_examples * image_size * image_size * 3 <= limit_mb * 1024 * 1024


def split_count(summary: dict, split: str, files: list[str]) -> int:
    """Examples in a split: from examples_summary.json, else counted from the shards."""
    try:
        return int(summary["splits"][split]["examples"])
    except (KeyError, TypeError, ValueError):
        return sum(1 for _ in ex.iter_examples(files))


POS_WEIGHT_MODES = POS_WEIGHTS


def positive_weights(
    summary: dict, au_ids: list[int], mode: str, max_weight: float
) -> tuple[list[float] | None, list[str]]:
    """Per-AU weight of a positive label from the train split's counts, capped at max_weight; and warnings.

    balanced: negatives/positives (the loss then treats both classes alike: right for
    ranking, but probabilities shift up, so a 0.5 threshold over-predicts); sqrt: its
    square root, a compromise that keeps rare AUs from being learnt as "never active"
    while 0.5 stays a sensible threshold; none: no weighting. An AU without a positive,
    or missing from the summary, gets weight 1.
    """
    if mode not in POS_WEIGHT_MODES:
        raise ValueError(f"--pos-weight {mode!r}: expected one of {', '.join(POS_WEIGHT_MODES)}")
    counts = (summary.get("splits") or {}).get("train", {}).get("au", {}) or {}
    weights, warnings = [], []
    for au in au_ids:
        c = counts.get(str(au)) or {}
        pos, neg = int(c.get("positive", 0)), int(c.get("negative", 0))
        if pos == 0:
            warnings.append(f"AU{au} has no positive example in the train split; it cannot be learnt")
            weights.append(1.0)
            continue
        ratio = max(neg / pos, 1.0)
        weights.append(float(min(ratio if mode == "balanced" else ratio**0.5, max(max_weight, 1.0))))
    if mode == "none":
        return None, warnings
    return weights, warnings


def check_first_example(files: list[str], au_ids: list[int]) -> None:
    """Fails early, naming the shard, when examples do not carry the AU ids the summary lists."""
    for record in ex.iter_examples(files[:1]):
        d = ex.example_to_dict(record)
        if d["au_ids"] != list(au_ids):
            raise ValueError(
                f"{files[0]}: example {d['key']} has label/au_ids {d['au_ids']} but examples_summary.json lists "
                f"{list(au_ids)}; the examples folder is inconsistent — rerun convert/filter"
            )
        bad = [v for v in d["au"] if v not in labels.VALID_LABELS]
        if bad:
            raise ValueError(f"{files[0]}: example {d['key']} has AU labels {bad}; expected 0, 1 or 999")
        return
