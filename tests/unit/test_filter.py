"""Unit tests of the filter step: the three 999 policies on hand-made examples, argument checks and the CLI."""
import os

import pytest

from components.common import examples
from components.filter import __main__ as cli
from components.filter import logic

AU_IDS = [1, 2, 4, 6, 12]


def example(au, key="k1", va=None):
    return examples.encode_example(b"\xff\xd8jpeg bytes", 4, 5, key, AU_IDS, au, va=va)


def fields(record):
    f = examples.decode_example(record).features.feature
    return {
        "au_ids": list(f[examples.LABEL_AU_IDS].int64_list.value),
        "au": list(f[examples.LABEL_AU].int64_list.value),
        "key": f[examples.IMAGE_KEY].bytes_list.value[0],
        "encoded": f[examples.IMAGE_ENCODED].bytes_list.value[0],
        "va": list(f[examples.LABEL_VA].float_list.value),
        "size": (f[examples.IMAGE_HEIGHT].int64_list.value[0], f[examples.IMAGE_WIDTH].int64_list.value[0]),
    }


def test_kept_aus_are_picked_in_the_requested_order():
    out, kept, zeroed = logic.filter_record(example([1, 0, 999, 1, 0], va=[0.5, -0.5]), [12, 1, 6], "drop")
    assert kept == [0, 1, 1] and zeroed == 0
    f = fields(out)
    assert f["au_ids"] == [12, 1, 6] and f["au"] == [0, 1, 1]
    # everything else is kept as it was
    assert f["key"] == b"k1" and f["encoded"] == b"\xff\xd8jpeg bytes"
    assert f["va"] == [0.5, -0.5] and f["size"] == (4, 5)


def test_drop_leaves_out_an_example_with_999_in_a_kept_au_only():
    record = example([1, 999, 0, 0, 1])
    assert logic.filter_record(record, [1, 2], "drop")[0] is None
    out, kept, _ = logic.filter_record(record, [1, 4, 12], "drop")  # the 999 is in AU2, not kept
    assert fields(out)["au"] == [1, 0, 1] and kept == [1, 0, 1]


def test_mask_keeps_999_for_training_to_ignore():
    out, kept, zeroed = logic.filter_record(example([999, 1, 999, 0, 0]), [1, 2, 4], "mask")
    assert fields(out)["au"] == [999, 1, 999] and kept == [999, 1, 999] and zeroed == 0


def test_zero_makes_999_a_negative_and_counts_it():
    out, kept, zeroed = logic.filter_record(example([999, 1, 999, 0, 0]), [1, 2, 4], "zero")
    assert fields(out)["au"] == [0, 1, 0] and kept == [0, 1, 0] and zeroed == 2


def test_an_au_missing_from_an_example_is_named():
    with pytest.raises(ValueError, match=r"shard-x record 3 \(image k9\) has no label for AU26"):
        logic.filter_record(example([0] * 5, key="k9"), [1, 26], "mask", name="shard-x record 3")


def test_aus_and_policy_are_checked():
    assert logic.parse_aus("1, 2,AU4") == [1, 2, 4]
    assert logic.parse_aus([26, 1]) == [26, 1]
    for bad, message in [("1,x", "'x' is not an AU number"), ("1,61", "outside AU1..AU60"), ("1,1", "twice"),
                         ("", "empty")]:
        with pytest.raises(ValueError, match=message):
            logic.parse_aus(bad)
    with pytest.raises(ValueError, match="not one of drop, mask, zero"):
        logic.check_policy("ignore")


def write_examples(folder, records_by_split, au_ids=AU_IDS):
    os.makedirs(folder, exist_ok=True)
    for split, records in records_by_split.items():
        with open(os.path.join(folder, examples.shard_name(split, 0, 1)), "wb") as f:
            for r in records:
                examples.write_record(f, r)
    examples.write_summary(str(folder), {"au_ids": au_ids, "policy": None, "has_va": False, "splits": {},
                                         "counters": {}})


def test_run_refuses_what_it_cannot_do(tmp_path):
    source = tmp_path / "examples"
    write_examples(source, {"train": [example([0] * 5)]})
    with pytest.raises(ValueError, match=r"AU26 is not in the examples .* \(they have AUs 1,2,4,6,12\)"):
        logic.run(str(source), str(tmp_path / "out"), aus="1,26")
    with pytest.raises(ValueError, match="is the examples folder itself"):
        logic.run(str(source), str(source) + "/", aus="1")
    with pytest.raises(FileNotFoundError, match="not an examples folder"):
        logic.run(str(tmp_path / "empty"), str(tmp_path / "out"), aus="1")


def test_input_shards_are_listed_per_split(tmp_path):
    write_examples(tmp_path, {"train": [], "test": []})
    shards = logic.input_shards(str(tmp_path))
    assert [(s["split"], s["index"], s["count"]) for s in shards] == [("train", 0, 1), ("test", 0, 1)]


@pytest.mark.parametrize("argv, message", [
    (["--examples", "e", "--output", "o", "--aus", "1,x"], "'x' is not an AU number"),
    (["--examples", "e", "--output", "o", "--policy", "foo"], "invalid choice: 'foo'"),
    (["--output", "o"], "--examples"),
])
def test_cli_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys):
    assert cli.main(["--examples", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "examples_summary.json is missing" in err and "Traceback" not in err


def au_table(unknown):
    return {str(a): {"positive": 0, "negative": 0, "unknown": n} for a, n in zip(AU_IDS, unknown)}


def test_run_refuses_an_examples_folder_with_no_example(tmp_path):
    source = tmp_path / "examples"
    write_examples(source, {})
    with pytest.raises(ValueError, match=r"examples holds no example \(it has no train/validation/test shard\): "
                                         "nothing to filter; rerun convert"):
        logic.run(str(source), str(tmp_path / "out"), aus="1")
    shards = [{"split": "train", "index": 0, "count": 1, "path": "p"}]
    with pytest.raises(ValueError, match=r"holds no example \(its 1 shards hold no record\)"):
        logic._check_not_empty("ex", {}, shards, {"splits": {}, "counters": {"examples_read": 0}}, [1], "mask")


def drop_stats(train, test):
    return {"splits": {"train": {"examples": train}, "test": {"examples": test}},
            "counters": {"examples_read": 10, "dropped_unknown": 10 - train - test}}


SHARDS = [{"split": s, "index": 0, "count": 1, "path": s} for s in ("train", "validation", "test")]


def test_a_drop_that_empties_the_train_split_names_the_aus_and_mask():
    source = {"splits": {"train": {"examples": 1230, "au": au_table([0, 1100, 40, 0, 900])},
                         "test": {"examples": 300, "au": au_table([0, 0, 0, 0, 0])}}}
    with pytest.raises(ValueError) as e:
        logic._check_not_empty("/runs/x/examples", source, SHARDS, drop_stats(0, 3), [1, 2, 4, 12], "drop")
    assert str(e.value) == (
        "policy drop left no example in the train split of /runs/x/examples, which train learns from: all 1,230 "
        "were dropped for a 999 (not annotated) in a kept AU (AU2 in 1,100, AU12 in 900, AU4 in 40). --policy mask "
        "keeps them (training ignores 999), or keep AUs that are annotated (--aus)")


def test_a_drop_that_empties_the_test_split_says_evaluate_needs_it():
    source = {"splits": {"test": {"examples": 7, "au": au_table([7, 0, 0, 0, 0])}}}
    with pytest.raises(ValueError, match=r"no example in the test split of ex, which evaluate measures the model "
                                         r"on: all 7 were dropped for a 999 \(not annotated\) in a kept AU \(AU1 in 7\)"):
        logic._check_not_empty("ex", source, SHARDS, drop_stats(3, 0), [1, 2], "drop")


def test_no_refusal_for_what_the_policy_did_not_empty():
    # validation may be empty (train warns); a split that came empty is the next step's to refuse; mask drops nothing
    logic._check_not_empty("ex", {}, SHARDS, {"splits": {"train": {"examples": 3}, "test": {"examples": 1}},
                                              "counters": {"examples_read": 6}}, [1], "drop")
    logic._check_not_empty("ex", {}, SHARDS[:2], drop_stats(3, 0), [1], "drop")
    logic._check_not_empty("ex", {"splits": {"test": {"examples": 0}}}, SHARDS, drop_stats(3, 0), [1], "drop")
    logic._check_not_empty("ex", {}, SHARDS, drop_stats(3, 0), [1], "mask")
