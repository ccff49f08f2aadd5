"""Tests of the push step: versions, LATEST written last, refusal of unblessed models, interrupted pushes, pruning."""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import pytest

from components.common import registry, storage
from components.push import logic

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path


def _model(path: Path, seed: str = "a") -> str:
    """A model folder as train writes it; push copies files and never loads them, so the bytes are stand-ins."""
    (path / "saved_model" / "variables").mkdir(parents=True)
    (path / "saved_model" / "saved_model.pb").write_bytes(b"graph " + seed.encode())
    (path / "saved_model" / "variables" / "variables.index").write_bytes(b"index " + seed.encode())
    (path / "model_config.json").write_text(json.dumps({"au_ids": [1, 2, 12], "task": "au"}))
    (path / "logs").mkdir()
    (path / "logs" / "events.out").write_bytes(b"tensorboard")
    return str(path)


@pytest.fixture(autouse=True)
def infra_checks(monkeypatch):
    """Infra validation starts a server (tests/integration/test_push_infra.py): here a fake that passes, recorded."""
    from components.push import infra

    calls = []

    def fake(model_dir, evaluation_dir, **kw):
        calls.append((model_dir, evaluation_dir))
        return {"passed": True, "reason": "", "checked": 1, "seconds": 0.0, "port": None, "notes": []}

    monkeypatch.setattr(infra, "validate", fake)
    return calls


@pytest.fixture
def setup(tmp_path):
    return {
        "model": _model(tmp_path / "model"),
        "blessed": tiny.make_evaluation(str(tmp_path / "blessed"), True),
        "unblessed": tiny.make_evaluation(str(tmp_path / "unblessed"), False, ["fail: macro F1 0.2000 < minimum 0.5"]),
        "dest": str(tmp_path / "registry"),
        "root": str(tmp_path / "registry" / "au"),
        "out": str(tmp_path / "pushed"),
    }


def _push(s, evaluation="blessed", **kw):
    return logic.run(s["model"], s[evaluation], s["out"], destination=s["dest"], model_name="au", **kw)


def _latest(s):
    return Path(s["root"], "LATEST").read_text().strip()


def test_blessed_model_becomes_a_version_then_latest(setup):
    r = _push(setup)
    assert r["pushed"] and r["previous"] is None
    version = r["version"]
    assert _latest(setup) == version and r["uri"] == os.path.join(setup["root"], version)
    v = Path(r["uri"])
    for rel in ("saved_model/saved_model.pb", "saved_model/variables/variables.index", "model_config.json",
                "logs/events.out", "metrics.json", "blessing.json", "report.md", registry.PUSH_FILE):
        assert (v / rel).is_file(), rel
    marker = json.loads((v / registry.PUSH_FILE).read_text())
    assert marker["version"] == version and marker["blessed"] is True and marker["forced"] is False
    assert json.loads(Path(setup["out"], "push.json").read_text())["version"] == version
    assert registry.resolve_model(setup["root"]) == (r["uri"], version)

    # Another model: a new version, LATEST moves, the first stays.
    setup["model"] = _model(Path(setup["model"]).parent / "model2", "b")
    r2 = _push(setup)
    assert r2["version"] != version and r2["previous"] == version and _latest(setup) == r2["version"]
    assert registry.list_versions(setup["root"]) == sorted([version, r2["version"]])


def test_version_names_sort_in_push_order():
    early = logic.new_version("ffff" * 16, datetime.datetime(2026, 11, 28, 5, 15, 0, tzinfo=datetime.timezone.utc))
    late = logic.new_version("0000" * 16, datetime.datetime(2026, 11, 28, 5, 15, 1, tzinfo=datetime.timezone.utc))
    assert early == "20261128T051500Z-ffffffff" and early < late


def test_unblessed_model_is_not_pushed_and_says_why(setup, capsys):
    r = _push(setup, "unblessed")
    assert not r["pushed"] and r["reasons"] == ["fail: macro F1 0.2000 < minimum 0.5"]
    assert not os.path.exists(setup["root"])
    record = json.loads(Path(setup["out"], "push.json").read_text())
    assert record["pushed"] is False and record["reasons"] == r["reasons"]

    from components.push.__main__ import main

    assert main(["--model", setup["model"], "--evaluation", setup["unblessed"], "--destination", setup["dest"],
                 "--model-name", "au"]) == 0
    out = capsys.readouterr().out
    assert "not pushed: the model is not blessed" in out and "macro F1 0.2000 < minimum 0.5" in out


def test_force_pushes_an_unblessed_model(setup):
    r = _push(setup, "unblessed", force=True)
    assert r["pushed"] and _latest(setup) == r["version"]
    marker = json.loads(Path(r["uri"], registry.PUSH_FILE).read_text())
    assert marker["forced"] is True and marker["blessed"] is False
    assert "forced" in r["message"]


def test_push_killed_during_the_copy_leaves_latest_and_retries_cleanly(setup, monkeypatch):
    first = _push(setup)
    real_copy_file = logic._copy_file
    copied = []

    def dies_after_two_files(src, dst):
        if len(copied) == 2:
            raise KeyboardInterrupt("killed midway")
        real_copy_file(src, dst)
        copied.append(dst)

    setup["model"] = _model(Path(setup["model"]).parent / "model2", "b")
    monkeypatch.setattr(logic, "_copy_file", dies_after_two_files)
    with pytest.raises(KeyboardInterrupt):
        _push(setup, version="20991231T000000Z-half")
    half = os.path.join(setup["root"], "20991231T000000Z-half")
    assert len(list(storage.list_files(half))) == 2 and not registry.is_complete(half)
    assert _latest(setup) == first["version"]
    assert registry.resolve_model(setup["root"]) == (first["uri"], first["version"])
    with pytest.raises(registry.RegistryError, match="did not finish"):
        registry.resolve_model(half)

    # The retry (same model, same version name) takes the half-copied folder over.
    monkeypatch.setattr(logic, "_copy_file", real_copy_file)
    again = _push(setup, version="20991231T000000Z-half")
    assert again["pushed"] and registry.is_complete(half) and _latest(setup) == "20991231T000000Z-half"
    assert Path(half, "saved_model", "saved_model.pb").read_bytes() == b"graph b"


def test_push_killed_between_copy_and_latest_leaves_latest(setup, monkeypatch):
    first = _push(setup)
    real_write_text = storage.write_text

    def dies_at_latest(uri, text, encoding="utf-8"):
        if uri.endswith(registry.LATEST):
            raise KeyboardInterrupt("killed before LATEST")
        real_write_text(uri, text, encoding)

    setup["model"] = _model(Path(setup["model"]).parent / "model2", "b")
    monkeypatch.setattr(storage, "write_text", dies_at_latest)
    with pytest.raises(KeyboardInterrupt):
        _push(setup, version="20991231T000000Z-next")
    monkeypatch.setattr(storage, "write_text", real_write_text)
    assert _latest(setup) == first["version"]
    assert registry.resolve_model(setup["root"])[1] == first["version"]
    # The next push gets its own version; nothing collides.
    r = _push(setup)
    assert r["pushed"] and _latest(setup) == r["version"]


def test_a_version_is_never_overwritten(setup):
    _push(setup, version="20260101T000000Z-same")
    with pytest.raises(logic.PushError, match="never overwritten"):
        _push(setup, version="20260101T000000Z-same")


def test_keep_prunes_the_oldest_but_never_latest(setup):
    names = [f"2026010{i}T000000Z-v{i}" for i in range(1, 6)]
    for name in names[:4]:
        _push(setup, version=name)
    os.makedirs(os.path.join(setup["root"], "20251231T000000Z-debris"))  # an interrupted push, long ago
    r = _push(setup, version=names[4], keep=2)
    assert sorted(r["pruned"]) == sorted(["20251231T000000Z-debris"] + names[:3])
    assert registry.list_versions(setup["root"]) == names[3:]

    # Rolled back by hand: LATEST names an old version, which pruning keeps.
    Path(setup["root"], "LATEST").write_text(names[3] + "\n")
    for name in ("20260106T000000Z-v6", "20260107T000000Z-v7"):
        os.makedirs(os.path.join(setup["root"], name))
        Path(setup["root"], name, registry.PUSH_FILE).write_text("{}")
    assert sorted(logic.prune(setup["root"], 1)) == [names[4], "20260106T000000Z-v6"]
    assert registry.list_versions(setup["root"]) == [names[3], "20260107T000000Z-v7"]


def test_component_and_cli(setup, tmp_path, capsys):
    from kfp import dsl

    from components.push.__main__ import main
    from components.push.component import push

    pushed = dsl.Artifact(uri=str(tmp_path / "pushed-kfp"))
    push.python_func(model=dsl.Model(uri=setup["model"]), evaluation=dsl.Artifact(uri=setup["blessed"]),
                     pushed=pushed, destination=setup["dest"], model_name="au", force=False, keep=0,
                     infra_validate=True)
    record = json.loads(Path(pushed.path, "push.json").read_text())
    assert record["pushed"] and _latest(setup) == record["version"]
    assert "pushed version" in capsys.readouterr().out

    assert main(["--model", setup["model"], "--evaluation", str(tmp_path / "nowhere"), "--destination", setup["dest"]]) == 2
    assert "blessing.json is missing" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--evaluation", setup["blessed"], "--destination", setup["dest"]]) == 2
    assert "no saved_model/saved_model.pb" in capsys.readouterr().err


def test_a_pushed_version_can_be_pushed_to_another_registry(setup, tmp_path):
    first = _push(setup)
    again = logic.run(first["uri"], first["uri"], None, destination=str(tmp_path / "other"), model_name="au")
    marker = json.loads(Path(again["uri"], registry.PUSH_FILE).read_text())
    # The copy carries its own marker, written after its files, not the source's.
    assert marker["source_model"] == first["uri"] and marker["version"] == again["version"]
    assert Path(again["uri"], "saved_model", "saved_model.pb").read_bytes() == b"graph a"


def test_a_model_that_fails_infra_validation_is_not_pushed_and_latest_stays(setup, monkeypatch, infra_checks):
    from components.push import infra

    first = _push(setup)
    assert infra_checks == [(setup["model"], setup["blessed"])]
    monkeypatch.setattr(infra, "validate", lambda m, e, **kw: {"passed": False, "reason": "the server exited with "
                        "status 1 before it was ready", "checked": 0, "seconds": 1.0, "port": 1, "notes": []})
    second = _push(setup)
    assert not second["pushed"] and second["version"] is None and _latest(setup) == first["version"]
    assert registry.list_versions(setup["root"]) == [first["version"]]
    record = json.loads(Path(setup["out"], "push.json").read_text())
    assert record["infra_validation"]["passed"] is False
    assert any("infra validation failed: the server exited" in r for r in record["reasons"])
    assert "failed infra validation" in logic.describe(record)


def test_infra_validation_can_be_turned_off(setup, infra_checks):
    assert _push(setup, infra_validate=False)["pushed"] and infra_checks == []
