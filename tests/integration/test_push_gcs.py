"""Push to gs:// and read back from it, through a Cloud Storage emulator on 127.0.0.1."""
from __future__ import annotations

import json

import pytest

from components.common import registry, storage
from components.evaluate import logic as evaluate_logic
from components.predict import logic as predict_logic
from components.push import logic

from gcs_emulator import gcs_emulator
import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path

BUCKET = "au-models"
DEST = f"gs://{BUCKET}/registry"
ROOT = f"{DEST}/au"


@pytest.fixture
def gcs():
    with gcs_emulator(BUCKET) as url:
        yield url


def test_push_to_gcs_then_predict_and_evaluate_against_it(gcs, tmp_path, monkeypatch):
    model = tiny.make_model(str(tmp_path / "model"), tiny.GOOD)
    evaluation = tiny.make_evaluation(str(tmp_path / "evaluation"), True)
    (tmp_path / "model" / "logs").mkdir()
    (tmp_path / "model" / "logs" / "events.out").write_bytes(b"tensorboard")

    first = logic.run(model, evaluation, str(tmp_path / "out1"), destination=DEST, model_name="au",
                      version="20260101T000000Z-first")
    assert first["pushed"] and first["uri"] == f"{ROOT}/20260101T000000Z-first"
    assert storage.read_text(f"{ROOT}/LATEST").strip() == "20260101T000000Z-first"
    files = set(storage.list_files(first["uri"]))
    for rel in ("saved_model/saved_model.pb", "model_config.json", "metrics.json", "blessing.json", registry.PUSH_FILE):
        assert f"{first['uri']}/{rel}" in files, rel

    # A push that dies after one file leaves LATEST where it was.
    real_copy_file = logic._copy_file

    def dies_after_one_file(src, dst):
        real_copy_file(src, dst)
        raise KeyboardInterrupt("killed midway")

    monkeypatch.setattr(logic, "_copy_file", dies_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        logic.run(model, evaluation, None, destination=DEST, model_name="au", version="20260102T000000Z-half")
    monkeypatch.setattr(logic, "_copy_file", real_copy_file)
    assert storage.read_text(f"{ROOT}/LATEST").strip() == "20260101T000000Z-first"
    assert registry.list_versions(ROOT) == ["20260101T000000Z-first", "20260102T000000Z-half"]

    second = logic.run(model, evaluation, None, destination=DEST, model_name="au", version="20260103T000000Z-second",
                       keep=1)
    assert storage.read_text(f"{ROOT}/LATEST").strip() == "20260103T000000Z-second"
    assert sorted(second["pruned"]) == ["20260101T000000Z-first", "20260102T000000Z-half"]
    assert registry.list_versions(ROOT) == ["20260103T000000Z-second"]

    # What a user does next: predict from the gs:// registry root (LATEST).
    red = tmp_path / "red.jpg"
    red.write_bytes(tiny.jpeg((255, 0, 0), size=32))
    result = predict_logic.predict(ROOT, [str(red)])
    assert result["version"] == "20260103T000000Z-second" and result["images"][0]["faces"][0]["active"] == ["AU1"]

    # The next evaluation reads the live model from gs:// and scores it on the same test split.
    examples = tiny.make_examples(str(tmp_path / "examples"), sizes={"validation": 20, "test": 30})
    out = evaluate_logic.run(examples, model, str(tmp_path / "ev"), registry=DEST, model_name="au",
                             min_macro_f1=0.3, min_macro_auc=0.6, tolerance=0.01)
    baseline = out["blessing"]["baseline"]
    assert baseline["version"] == "20260103T000000Z-second"
    assert baseline["macro_f1"] == pytest.approx(out["metrics"]["at_default"]["macro"]["f1"])  # the same model
    assert out["blessing"]["blessed"]
    assert json.loads((tmp_path / "ev" / "blessing.json").read_text())["baseline"]["uri"] == f"{ROOT}/20260103T000000Z-second"
