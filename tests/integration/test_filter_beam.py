"""The filter step on Beam's local runner: the PTransform on hand-made shards (counters checked), then the step."""
import os
import types

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that

from components.common import beamio, examples
from components.filter import logic
from components.filter import transforms as filter_transforms
from components.filter.component import filter_examples

pytestmark = pytest.mark.slow

AU_IDS = [1, 2, 4, 6, 12]
# (split, key, labels for AU_IDS); AU4 is unknown in three examples, AU12 in one
EXAMPLES = [
    ("train", "t1", [1, 0, 0, 1, 0]),
    ("train", "t2", [0, 1, 999, 0, 1]),
    ("train", "t3", [1, 1, 1, 999, 0]),
    ("train", "t4", [0, 999, 0, 0, 999]),
    ("validation", "v1", [1, 0, 999, 0, 0]),
    ("test", "s1", [0, 0, 999, 1, 1]),
]


def write_examples(folder):
    os.makedirs(folder, exist_ok=True)
    for split in examples.SPLITS:
        rows = [e for e in EXAMPLES if e[0] == split]
        with open(os.path.join(folder, examples.shard_name(split, 0, 1)), "wb") as f:
            for _, key, au in rows:
                examples.write_record(f, examples.encode_example(b"jpeg", 2, 3, key, AU_IDS, au, va=[0.1, 0.2]))
    examples.write_summary(str(folder), {"au_ids": AU_IDS, "policy": None, "has_va": True, "splits": {},
                                         "counters": {}})
    return str(folder)


def keys_and_labels(folder, split):
    out = []
    for path in examples.shard_files(str(folder), split):
        with open(path, "rb") as f:
            for r in examples.read_records(f):
                feature = examples.decode_example(r).features.feature
                out.append((feature[examples.IMAGE_KEY].bytes_list.value[0].decode(),
                            list(feature[examples.LABEL_AU].int64_list.value),
                            list(feature[examples.LABEL_AU_IDS].int64_list.value)))
    return out


def test_filter_examples_transform_with_counters(tmp_path):
    source = write_examples(tmp_path / "examples")
    out = tmp_path / "filtered"

    def check(stats_list):
        (stats,) = stats_list
        # AU4, AU1, AU12 of t1 and t3 (the others have 999 in AU4 or AU12)
        assert stats["splits"]["train"] == {"examples": 2, "au": [[1, 1, 0], [2, 0, 0], [0, 2, 0]]}
        assert stats["splits"]["validation"]["examples"] == 0 and stats["splits"]["test"]["examples"] == 0

    pipeline = beam.Pipeline(options=beamio.pipeline_options(""))
    stats = pipeline | beam.Create(logic.input_shards(source)) | filter_transforms.FilterExamples(
        str(out), [4, 1, 12], "drop")
    assert_that(stats, check)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {m.key.metric.name: m.committed
                for m in result.metrics().query(MetricsFilter().with_namespace("filter"))["counters"]}
    assert counters == {"examples_read": 6, "examples_written": 2, "dropped_unknown": 4, "zeroed_labels": 0}
    assert keys_and_labels(out, "train") == [("t1", [0, 1, 0], [4, 1, 12]), ("t3", [1, 1, 0], [4, 1, 12])]


@pytest.mark.parametrize("policy, train, counters", [
    ("mask", {"examples": 4, "au": {"1": [2, 2, 0], "4": [1, 2, 1]}}, {"dropped_unknown": 0, "zeroed_labels": 0}),
    ("zero", {"examples": 4, "au": {"1": [2, 2, 0], "4": [1, 3, 0]}}, {"dropped_unknown": 0, "zeroed_labels": 3}),
])
def test_filter_step_summary_for_each_policy(tmp_path, policy, train, counters):
    source = write_examples(tmp_path / "examples")
    out = tmp_path / policy
    art = lambda p: types.SimpleNamespace(path=str(p), uri=str(p), metadata={})  # noqa: E731
    filter_examples.python_func(examples=art(source), filtered=art(out), aus="1,4", policy=policy, beam_args="")
    summary = examples.read_summary(str(out))
    assert summary["au_ids"] == [1, 4] and summary["policy"] == policy and summary["has_va"] is True
    got = summary["splits"]["train"]
    assert got["examples"] == train["examples"] and got["shards"] == 1
    assert {a: [v["positive"], v["negative"], v["unknown"]] for a, v in got["au"].items()} == train["au"]
    assert {k: summary["counters"][k] for k in counters} == counters
    assert summary["counters"]["examples_read"] == 6
    assert summary["splits"]["test"]["au"]["4"] == (
        {"positive": 0, "negative": 0, "unknown": 1} if policy == "mask" else
        {"positive": 0, "negative": 1, "unknown": 0})
    assert not os.path.exists(os.path.join(out, logic.STAGING_DIR))
    for key, au, ids in keys_and_labels(out, "train"):
        assert ids == [1, 4] and (999 not in au or policy == "mask")


def test_filter_step_refuses_a_drop_that_empties_the_test_split(tmp_path):
    # drop keeps 3 train examples, but the test split's only one has a 999 in AU4: evaluate would have nothing.
    source = write_examples(tmp_path / "examples")
    out = tmp_path / "drop"
    with pytest.raises(ValueError, match=r"policy drop left no example in the test split of .*, which evaluate "
                                         r"measures the model on: every one was dropped for a 999 .* --policy mask"):
        logic.run(source, str(out), aus="1,4", policy="drop")
    assert not os.path.exists(os.path.join(out, examples.EXAMPLES_SUMMARY_FILE))  # not a finished folder
    assert not os.path.exists(os.path.join(out, logic.STAGING_DIR))
