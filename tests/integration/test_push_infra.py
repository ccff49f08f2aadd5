"""Push's infra validation against the real server: a fresh `python -m components.serve` process on 127.0.0.1."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from components.common import evaluation, registry
from components.common import examples as ex
from components.common.inference import au_key
from components.evaluate import logic as evaluate_logic
from components.push import infra
from components.push import logic

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path


def _examples(path: Path) -> str:
    """tiny_model's examples, the test split re-written with 48 px pictures (8 px ones are too small to score)."""
    import numpy as np
    import tensorflow as tf

    examples = tiny.make_examples(str(path), sizes={"train": 10, "validation": 40, "test": 40})
    rng = np.random.default_rng(1)
    with tf.io.TFRecordWriter(os.path.join(examples, ex.shard_name("test", 0, 1))) as w:
        for i in range(40):
            colour = rng.uniform(0, 1, 3)
            au = (colour > 0.5).astype(int).tolist()
            w.write(ex.make_example(tiny.jpeg(colour * 255, size=48), 48, 48, f"test{i:04d}", tiny.AU_IDS, au)
                    .SerializeToString())
    return examples


@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infra")
    model = tiny.make_model(str(tmp / "model"))
    examples = _examples(tmp / "examples")
    ev = str(tmp / "evaluation")
    evaluate_logic.run(examples, model, ev)
    return {"model": model, "evaluation": ev, "tmp": tmp}


def test_evaluate_saves_canonical_requests_with_the_scorers_answers(candidate):
    doc = json.loads(Path(candidate["evaluation"], evaluation.CANONICAL_REQUESTS_FILE).read_text())
    keys = [r["key"] for r in doc["requests"]]
    assert keys == ["test0000", "test0001", "test0002", evaluation.NO_FACE_KEY]
    for r in doc["requests"]:
        assert r["expected"]["error"] is None and len(r["expected"]["faces"]) == 1
        assert set(r["expected"]["faces"][0]["probabilities"]) == {au_key(a) for a in tiny.AU_IDS}


def test_a_sound_candidate_passes_and_is_pushed(candidate, tmp_path):
    dest = str(tmp_path / "registry")
    record = logic.run(candidate["model"], candidate["evaluation"], str(tmp_path / "out"), destination=dest,
                       model_name="au", force=True)
    check = record["infra_validation"]
    assert check["passed"] and check["reason"] == "" and check["checked"] == 4, check
    assert record["pushed"] and registry.read_latest(os.path.join(dest, "au")) == record["version"]
    assert check["seconds"] < infra.READY_TIMEOUT_S


def test_a_broken_saved_model_is_not_pushed_and_latest_stays(candidate, tmp_path):
    dest = str(tmp_path / "registry")
    first = logic.run(candidate["model"], candidate["evaluation"], None, destination=dest, model_name="au",
                      force=True, infra_validate=False)
    broken = str(tmp_path / "broken")
    shutil.copytree(candidate["model"], broken)
    Path(broken, "saved_model", "saved_model.pb").write_bytes(b"not a graph")
    out = tmp_path / "out"
    record = logic.run(broken, candidate["evaluation"], str(out), destination=dest, model_name="au", force=True)
    assert not record["pushed"] and record["version"] is None
    root = os.path.join(dest, "au")
    assert registry.read_latest(root) == first["version"] and registry.list_versions(root) == [first["version"]]
    saved = json.loads((out / registry.PUSH_FILE).read_text())
    assert saved["infra_validation"]["passed"] is False
    assert "before it was ready" in saved["infra_validation"]["reason"]
    assert any(r.startswith("infra validation failed: the server exited") for r in saved["reasons"])
    from components.report.records import step_figures  # the run report's line for the push step

    assert step_figures("push", {"pushed": str(out)}).startswith("not pushed: infra validation failed")


def test_answers_that_differ_from_evaluates_fail(candidate, tmp_path):
    ev = str(tmp_path / "evaluation")
    shutil.copytree(candidate["evaluation"], ev)
    path = Path(ev, evaluation.CANONICAL_REQUESTS_FILE)
    doc = json.loads(path.read_text())
    probs = doc["requests"][0]["expected"]["faces"][0]["probabilities"]
    au = sorted(probs)[0]
    probs[au] = round(1.0 - probs[au], 4) if abs(probs[au] - 0.5) > 0.01 else probs[au] + 0.1
    path.write_text(json.dumps(doc))
    check = infra.validate(candidate["model"], ev)
    assert not check["passed"] and "differ from evaluate's" in check["reason"] and au in check["reason"]


def test_compare_checks_the_contracts_shape():
    request = {"key": "k", "expected": {"error": None, "reason": None, "faces": [{"probabilities": {"AU01": 0.5}}]}}
    good = {"image": "instances[0]", "width": 4, "height": 4, "faces": [{"probabilities": {"AU01": 0.5004}}],
            "faces_found": 1, "error": None, "reason": None, "model_version": None}
    assert infra.compare(request, good) == []
    assert "has no model_version" in infra.compare(request, {k: v for k, v in good.items() if k != "model_version"})[0]
    assert "0 faces" in infra.compare(request, {**good, "faces": []})[0]
    assert "has keys" in infra.compare(request, {**good, "faces": [{"probabilities": {"AU02": 0.5}}]})[0]
