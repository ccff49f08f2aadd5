"""Canonical requests: a few test-split faces and a faceless picture, with the shared scorer's answers to them.

Push's infra validation sends them to the candidate running in the serving code and compares its answers to these.
The expected answers come from components.common.inference.Scorer, the code the server scores with, so the check
measures the serving process (its loading, decoding and routes), not a difference of preprocessing.
"""
from __future__ import annotations

import base64
import json
import os
import tempfile

from components.common import examples as ex
from components.common import storage
from components.common.evaluation import CANONICAL_REQUESTS_FILE, NO_FACE_KEY, no_face_png

CANONICAL_COUNT = 3  # test faces sent; with the faceless picture, one request of 4 images keeps the check short


def first_test_images(shard_files: list[str], count: int) -> list[tuple[str, bytes]]:
    """(key, encoded bytes) of the first `count` examples of the test shards (local paths)."""
    import tensorflow as tf

    out = []
    for record in tf.data.TFRecordDataset(shard_files).take(count):
        d = ex.example_to_dict(record.numpy())
        out.append((d["key"], d["encoded"]))
    return out


def expected_answers(model_dir: str, images: list[tuple[str, bytes]]) -> list[dict]:
    """The shared scorer's result for each image, as the server returns it (without model_version)."""
    from components.common import inference

    scorer = inference.Scorer(model_dir)
    return scorer.score([data for _, data in images], [key for key, _ in images])


def write(output_dir: str, model_dir: str, examples_dir: str, count: int = CANONICAL_COUNT) -> dict:
    """Writes canonical_requests.json to the evaluation folder; returns what it wrote."""
    with tempfile.TemporaryDirectory(prefix="canonical-") as tmp:
        files = ex.shard_files(examples_dir, "test")[:1]
        if files and storage.is_gcs(files[0]):
            local = os.path.join(tmp, "test.tfrecord")
            storage.download_file(files[0], local)
            files = [local]
        images = first_test_images(files, count) + [(NO_FACE_KEY, no_face_png())]
    answers = expected_answers(model_dir, images)
    doc = {
        "about": "push's infra validation sends these images to the candidate's server and compares its answers",
        "requests": [{"key": key, "b64": base64.b64encode(data).decode("ascii"), "expected": answer}
                     for (key, data), answer in zip(images, answers)],
    }
    storage.write_text(storage.join(output_dir, CANONICAL_REQUESTS_FILE), json.dumps(doc, indent=1))
    return doc
