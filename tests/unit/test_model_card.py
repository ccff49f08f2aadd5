"""Tests of the model card: what push writes beside every version, and predict --model-card printing it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from components.common import manifest as manifest_contract
from components.common import model_card
from components.evaluate import slices
from components.evaluate.metrics import au_metrics
from components.push import logic

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path

AU_IDS = [1, 2, 12]


@pytest.fixture(autouse=True)
def infra_checks(monkeypatch):
    """Infra validation starts a server (tests/integration/test_push_infra.py): here a fake that passes."""
    from components.push import infra

    monkeypatch.setattr(infra, "validate", lambda model_dir, evaluation_dir, **kw: {
        "passed": True, "reason": "", "checked": 1, "seconds": 0.0, "port": None, "notes": []})


def _model(path: Path) -> str:
    """A model folder as train writes it (the SavedModel's bytes are stand-ins: push copies, never loads)."""
    (path / "saved_model").mkdir(parents=True)
    (path / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    splits = {s: {"examples": n, "shards": 1, "au": {str(a): {"positive": 3, "negative": n - 4, "unknown": 1}
                                                     for a in AU_IDS}}
              for s, n in (("train", 200), ("validation", 40), ("test", 60))}
    convert = {"counters": {"manifest_rows": 330, "downloaded_ok": 310, "not_downloaded": 20, "faces_skipped": 10,
                            "faces_cropped": 300, "skipped_undecodable": 0},
               "parameters": {"manifest": "/runs/r1/ingest/manifest",
                              "sheet": {"uri": "gs://bucket/emotionet.xlsx", "sha256": "ab" * 32}}}
    config = {
        "task": "au", "backbone": "compactcnn", "image_size": 96, "au_ids": AU_IDS,
        "outputs": {"name": "probabilities", "size": 3, "activation": "sigmoid", "labels": ["AU1", "AU2", "AU12"]},
        "faces": {"mode": "crop", "no_face": "skip", "size": 160, "margin": 0.25, "min_score": 0.5,
                  "detector": "blazeface"},
        "preprocessing": {"resize": "bilinear to 96x96"},
        "signature": {"name": "serving_default", "input": "image_bytes", "output": "probabilities"},
        "training": {"examples": "/runs/r1/filter/filtered", "epochs": 3, "learning_rate": 0.001, "seed": 0},
        "data": {"au_ids": AU_IDS, "policy": "mask", "splits": splits, "counters": {},
                 "parameters": {"aus": "1,2,12", "policy": "mask", "convert": convert}},
        "versions": {"python": "3.11.9", "tensorflow": "2.16.2", "keras": "3.4.1"},
        "created_at": "2026-12-06T04:00:00+00:00",
    }
    (path / "model_config.json").write_text(json.dumps(config))
    return str(path)


def _evaluation(path: Path) -> str:
    """An evaluation folder with metrics.json as evaluate writes it (per AU, tuned thresholds, slices)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(60, 3))
    scores = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.2, size=y.shape), 0, 1)
    val = {"y_true": y[:30], "scores": scores[:30]}
    metrics = au_metrics({"y_true": y, "scores": scores}, val, AU_IDS)
    groups = {"face_px": ["<48 px" if i < 20 else "96-192 px" for i in range(60)],
              "grey": ["grey"] * 5 + ["colour"] * 55}
    tuned = [metrics["thresholds"]["tuned"][str(a)] for a in AU_IDS]
    metrics["slices"] = slices.slice_metrics({"y_true": y, "scores": scores}, tuned, AU_IDS, groups, 10,
                                             [{"feature": "url_host", "reason": "no manifest"}])
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "blessing.json").write_text(json.dumps({
        "blessed": True, "reasons": ["pass: macro F1 0.6000 >= minimum 0.5"], "baseline": None,
        "criteria": {"min_macro_f1": 0.5, "min_slice_macro_f1": 0.0}}))
    return str(path)


@pytest.fixture
def pushed(tmp_path):
    model, evaluation = _model(tmp_path / "model"), _evaluation(tmp_path / "evaluation")
    record = logic.run(model, evaluation, str(tmp_path / "out"), destination=str(tmp_path / "registry"),
                       model_name="au")
    assert record["pushed"]
    return {"record": record, "root": str(tmp_path / "registry" / "au"), "model": model, "evaluation": evaluation}


def test_push_writes_a_model_card_beside_every_version(pushed):
    version = Path(pushed["record"]["uri"])
    card = json.loads((version / model_card.MODEL_CARD_JSON).read_text())
    assert (version / model_card.MODEL_CARD_MD).is_file() and (version / "push.json").is_file()
    assert card["format"] == model_card.CARD_FORMAT
    assert card["model"]["version"] == pushed["record"]["version"] and card["model"]["name"] == "au"
    # What it detects: the AU ids, their FACS names and thresholds; the face settings and the input.
    aus = {a["au"]: a for a in card["detects"]["action_units"]}
    assert aus[1]["name"] == "inner brow raiser" and aus[12]["name"] == "lip corner puller"
    metrics = json.loads(Path(pushed["evaluation"], "metrics.json").read_text())
    assert aus[2]["threshold"] == metrics["thresholds"]["tuned"]["2"]
    assert card["input"]["faces"]["size"] == 160 and card["input"]["signature"]["input"] == "image_bytes"
    # What it must not serve.
    assert any("emotions" in u and "character" in u for u in card["out_of_scope"])
    assert any("hiring" in u and "policing" in u and "surveillance" in u for u in card["out_of_scope"])
    # The training data, as train recorded it from the examples.
    data = card["training_data"]
    assert data["sheet"] == {"uri": "gs://bucket/emotionet.xlsx", "sha256": "ab" * 32}
    assert data["splits"] == {"train": 200, "validation": 40, "test": 60}
    assert data["au_coverage"]["1"] == {"positive": 9, "negative": 288, "unknown": 3}
    assert data["download_failures"] == 20 and data["faces_skipped"] == 10 and data["policy"] == "mask"
    assert card["recipe"]["learning_rate"] == 0.001
    # The metrics: overall, per AU with the thresholds, per slice with the worst.
    m = card["metrics"]
    assert m["overall"]["at_0.5"]["macro_f1"] == pytest.approx(metrics["at_default"]["macro"]["f1"])
    assert [p["au"] for p in m["per_au"]] == AU_IDS
    assert m["per_au"][0]["threshold"] == pytest.approx(metrics["at_tuned"]["per_label"][0]["threshold"])
    assert m["slices"]["worst"] == metrics["slices"]["worst"] and m["slices"]["too_small"][0]["value"] == "grey"
    # The blessing and the lineage.
    assert card["blessing"]["blessed"] is True and card["blessing"]["forced"] is False
    lineage = card["lineage"]
    assert lineage["source_model"] == pushed["model"] and lineage["source_evaluation"] == pushed["evaluation"]
    assert lineage["libraries"]["tensorflow"] == "2.16.2" and lineage["images"]["cpu"]
    assert "pipeline_version" in lineage and lineage["pushed_at"]

    md = (version / model_card.MODEL_CARD_MD).read_text()
    for text in ("# Model card: au version", "| AU1 | inner brow raiser |", "## Uses it must not serve",
                 "gs://bucket/emotionet.xlsx", "images not downloaded: 20; faces skipped (no usable face): 10",
                 "### Per slice", "Worst slice: face_px", "url_host: not sliced, no manifest", "**Blessed**",
                 "## Lineage"):
        assert text in md, text


def test_the_server_reads_the_card_push_writes(pushed):
    from components.serve.models import read_card

    card, markdown, why = read_card(pushed["record"]["uri"])
    assert why == "" and card["model"]["version"] == pushed["record"]["version"]
    assert markdown.startswith("# Model card: au version")


def test_predict_prints_the_model_card(pushed, capsys):
    from components.predict.__main__ import main

    assert main(["--model", pushed["root"], "--model-card"]) == 0  # the root follows LATEST
    out = capsys.readouterr().out
    assert out.startswith(f"# Model card: au version {pushed['record']['version']}") and "inner brow raiser" in out
    assert main(["--model", pushed["record"]["uri"], "--model-card", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["version"] == pushed["record"]["version"]

    # A model folder train wrote has no card: one clear line, exit status 2.
    assert main(["--model", pushed["model"], "--model-card"]) == 2
    err = capsys.readouterr().err
    assert "model_card.md does not exist" in err and "push it to a registry" in err
    with pytest.raises(SystemExit):
        main(["--model", pushed["root"]])  # neither INPUT nor --model-card
    assert "no INPUT given" in capsys.readouterr().err


def test_ingest_records_the_sheet_digest_convert_passes_on(tmp_path):
    from components.ingest import logic as ingest

    sheet = tmp_path / "sheet.csv"
    sheet.write_text("http://a.com/1.jpg," + ",".join(["0"] * 60) + "\n")
    ingest.run(str(sheet), str(tmp_path / "manifest"))
    identity = manifest_contract.sheet_identity(str(tmp_path / "manifest"))
    assert identity == {"uri": str(sheet), "sha256": hashlib.sha256(sheet.read_bytes()).hexdigest()}
    assert manifest_contract.sheet_identity(str(tmp_path / "manifest" / "manifest.parquet")) == identity
    assert manifest_contract.sheet_identity(str(tmp_path / "nowhere")) is None


def test_a_model_trained_on_convert_s_folder_has_its_counters_and_sheet_itself():
    config = {"task": "au", "au_ids": [1], "data": {
        "splits": {"train": {"examples": 5, "au": {"1": {"positive": 1, "negative": 4, "unknown": 0}}}},
        "counters": {"not_downloaded": 7, "faces_skipped": 2},
        "parameters": {"manifest": "m", "sheet": {"uri": "sheet.csv", "sha256": "cd" * 32}}}}
    card = model_card.build(model_name="au", version="v", uri="u", config=config, metrics={"task": "au"},
                            blessing={"blessed": False}, lineage={"forced": True})
    data = card["training_data"]
    assert data["download_failures"] == 7 and data["faces_skipped"] == 2 and data["sheet"]["uri"] == "sheet.csv"
    assert data["au_coverage"] == {"1": {"positive": 1, "negative": 4, "unknown": 0}}
    md = model_card.render(card)
    assert "**Not blessed** (pushed with force)" in md and "| AU1 | inner brow raiser | 0.500 |" in md
    assert "A neural network that detects" in md
    # A model from before the data was recorded: the card says so rather than inventing figures.
    bare = model_card.build(model_name="au", version="v", uri="u", config={"task": "au", "au_ids": [1]},
                            metrics={}, blessing={}, lineage={})
    assert bare["training_data"]["sheet"] == {"uri": None, "sha256": None}
    assert "sheet: `not recorded` (sha256 `not recorded`)" in model_card.render(bare)
