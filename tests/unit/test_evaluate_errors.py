"""Tests of evaluate's errors gallery: the most wrong test faces per AU and per worst slice (errors.json), bounded, a 999
never an error, written by a whole evaluate run, and shown by the run report with its thumbnails inlined."""
from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from components.common import evaluation
from components.evaluate import logic
from components.evaluate.errors import ErrorPool, thumbnail
from components.report import logic as report_logic

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path


def _picture(i: int, size: int = 160) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (i % 256, 40, 90)).save(buf, "JPEG")
    return buf.getvalue()


def test_the_most_wrong_are_kept_in_order_and_999_is_never_an_error():
    pool = ErrorPool([1, 12], pool=3)
    y = np.array([[0, 999], [0, 999], [1, 999], [1, 999], [0, 999], [999, 999]])
    p = np.array([[0.9, 0.99], [0.2, 0.01], [0.1, 0.5], [0.7, 0.5], [0.95, 0.5], [0.99, 0.99]])
    keys = [f"k{i}" for i in range(len(y))]
    # Two batches: what is kept does not depend on how the split was cut.
    pool.add(keys[:4], [_picture(i) for i in range(4)], y[:4], p[:4])
    pool.add(keys[4:], [_picture(i) for i in range(4, 6)], y[4:], p[4:])
    out = pool.report("test", {"grey": ["colour"] * 6}, keys, per_kind=2)
    au1, au12 = out["per_au"]
    assert [e["key"] for e in au1["false_positives"]] == ["k4", "k0"]  # the highest probabilities where the label is 0
    assert [e["probability"] for e in au1["false_positives"]] == [0.95, 0.9]
    assert [e["key"] for e in au1["false_negatives"]] == ["k2", "k3"]  # the lowest where it is 1
    assert all(e["label"] == 1 for e in au1["false_negatives"]) and au1["name"] == "inner brow raiser"
    # k5 is 999 for both AUs (p 0.99), and AU12 is 999 everywhere: no error at all.
    assert au12["false_positives"] == [] and au12["false_negatives"] == []
    named = {e["key"] for a in out["per_au"] for kind in ("false_positives", "false_negatives") for e in a[kind]}
    assert "k5" not in named and set(out["thumbnails"]) == named
    assert au1["false_positives"][0]["slices"] == {"grey": "colour"} and au1["false_positives"][0]["split"] == "test"


def test_thumbnails_are_small_jpegs():
    data = base64.b64decode(thumbnail(_picture(3, size=300)))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and max(im.size) == evaluation.ERROR_THUMBNAIL_PX
    assert len(data) < 4000 and thumbnail(b"not a picture") is None


def test_the_worst_slices_show_their_most_wrong_examples_once_each():
    pool = ErrorPool([1, 2])
    n = 40
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(n, 2))
    p = rng.uniform(size=(n, 2))
    keys = [f"k{i}" for i in range(n)]
    pool.add(keys, [_picture(i) for i in range(n)], y, p)
    groups = {"face_px": ["<48 px" if i % 2 else "96-192 px" for i in range(n)], "grey": ["colour"] * n}
    measured = [{"feature": "face_px", "value": "<48 px", "examples": 20, "macro_f1": 0.2},
                {"feature": "face_px", "value": "96-192 px", "examples": 20, "macro_f1": 0.6},
                {"feature": "grey", "value": "colour", "examples": 40, "macro_f1": 0.5},
                {"feature": "grey", "value": "grey", "examples": 40, "macro_f1": None}]
    out = pool.report("test", groups, keys, measured)
    assert [(s["feature"], s["value"]) for s in out["slices"]] == [("face_px", "<48 px"), ("grey", "colour"),
                                                                   ("face_px", "96-192 px")]
    small = out["slices"][0]["errors"]
    assert len(small) == evaluation.ERRORS_PER_SLICE and len({e["key"] for e in small}) == len(small)
    assert all(int(e["key"][1:]) % 2 == 1 and e["slices"]["face_px"] == "<48 px" for e in small)
    wrong = [max(p[int(e["key"][1:]), j] if y[int(e["key"][1:]), j] == 0 else 1 - p[int(e["key"][1:]), j]
                 for j in range(2)) for e in small]
    assert wrong == sorted(wrong, reverse=True)
    # Bounded: at most per_kind per AU per kind, and a thumbnail only for the examples named.
    for a in out["per_au"]:
        assert len(a["false_positives"]) == len(a["false_negatives"]) == evaluation.ERRORS_PER_KIND
    assert len(out["thumbnails"]) <= 2 * 2 * evaluation.ERRORS_PER_KIND + 3 * evaluation.ERRORS_PER_SLICE


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    examples = tiny.make_examples(str(root / "examples"))
    model = tiny.make_model(str(root / "poor"), tiny.POOR)
    out = root / "evaluate" / "evaluation"
    logic.run(examples, model, str(out), registry="", min_macro_f1=0.0, min_macro_auc=0.0, min_slice_size=10)
    return root, out


def test_evaluate_writes_a_bounded_errors_json_without_999(evaluated):
    root, out = evaluated
    errors = evaluation.read_errors(str(out))
    assert errors["split"] == "test" and [a["au"] for a in errors["per_au"]] == tiny.AU_IDS
    metrics = json.loads((out / evaluation.METRICS_FILE).read_text())
    worst = metrics["slices"]["worst"]
    assert errors["slices"] and (errors["slices"][0]["feature"], errors["slices"][0]["value"]) == (
        worst["feature"], worst["value"])
    shown = [e for a in errors["per_au"] for kind in (evaluation.FALSE_POSITIVE, evaluation.FALSE_NEGATIVE)
             for e in a[kind]] + [e for s in errors["slices"] for e in s["errors"]]
    assert shown and all(e["label"] in (0, 1) for e in shown)
    for a in errors["per_au"]:
        assert len(a[evaluation.FALSE_POSITIVE]) <= evaluation.ERRORS_PER_KIND
        assert all(e["label"] == 0 for e in a[evaluation.FALSE_POSITIVE])
        assert all(e["label"] == 1 for e in a[evaluation.FALSE_NEGATIVE])
    assert set(errors["thumbnails"]) == {e["key"] for e in shown} and all(errors["thumbnails"].values())
    assert (out / evaluation.ERRORS_FILE).stat().st_size < 60_000
    assert evaluation.read_errors(str(root)) == {}  # a folder without errors.json: nothing to show


def test_the_report_shows_the_gallery(evaluated, tmp_path):
    root, out = evaluated
    given = {}
    for name, step in report_logic.REPORT_INPUTS:
        folder = root / step / name
        folder.mkdir(parents=True, exist_ok=True)
        given[name] = str(folder)
    page_path = tmp_path / "run-1" / "report" / "page"
    report_logic.run(given, str(page_path))
    page = page_path.read_text()
    errors = evaluation.read_errors(str(out))
    assert "<h2>Faces the model got most wrong (test split)</h2>" in page
    assert "<h3>AU12 lip corner puller</h3>" in page and "false positives (label 0)" in page
    first = errors["per_au"][0][evaluation.FALSE_POSITIVE][0]
    assert f'src="data:image/jpeg;base64,{errors["thumbnails"][first["key"]]}"' in page
    assert f"p={first['probability']:.2f}" in page
    s = errors["slices"][0]
    assert f"<h3>Slice {s['feature']} = {s['value'].replace('<', '&lt;').replace('>', '&gt;')}" in page
    # A run without errors.json says so.
    empty = {name: str(tmp_path / "none" / name) for name, _ in report_logic.REPORT_INPUTS}
    for folder in empty.values():
        os.makedirs(folder)
    report_logic.run(empty, str(tmp_path / "run-2" / "report" / "page"))
    assert "no errors gallery in this run" in (tmp_path / "run-2" / "report" / "page").read_text()
