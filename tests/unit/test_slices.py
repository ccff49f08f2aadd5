"""Tests of evaluate's slices: the bins, the groups made of what examples carry, the figures per slice on synthetic
arrays, the blessing's slice reasons, and a whole evaluate run on examples with face features and a manifest."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from components.common import examples as ex
from components.common import faces, labels
from components.evaluate import slices
from components.evaluate.blessing import judge_slices
from components.evaluate.metrics import compute_metrics

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path


def _facts(n: int, **over) -> slices.Facts:
    f = slices.Facts(keys=[f"k{i}" for i in range(n)], status=[faces.CROPPED] * n, box=[(0, 0, 100, 100)] * n,
                     score=[0.95] * n, angle=[0.0] * n, source=[(400, 300)] * n, size=[(160, 160)] * n,
                     grey=[False] * n)
    for k, v in over.items():
        setattr(f, k, v)
    return f


def test_bins_are_left_closed_and_ordered():
    edges = slices.FACE_PX_EDGES
    assert slices.bin_label(10, edges, "px") == "<48 px"
    assert slices.bin_label(48, edges, "px") == "48-96 px"
    assert slices.bin_label(383.9, edges, "px") == "192-384 px"
    assert slices.bin_label(384, edges, "px") == ">=384 px"
    assert slices.bin_order(edges, "px") == ["<48 px", "48-96 px", "96-192 px", "192-384 px", ">=384 px"]
    assert slices.bin_label(0.05, slices.FACE_SHARE_EDGES, digits=2) == "<0.10"


def test_hosts_keep_the_ten_most_frequent_then_other():
    assert slices.url_host("https://www.Flickr.com/a.jpg") == "flickr.com" and slices.url_host("") is None
    urls = [f"http://site{i}.org/x.jpg" for i in range(12) for _ in range(12 - i)] + [None]
    hosts = slices.top_values([slices.url_host(u) for u in urls])
    assert hosts.count("site0.org") == 12 and "site10.org" not in hosts and "site11.org" not in hosts
    assert hosts.count(slices.OTHER) == 2 + 1 and hosts[-1] == slices.NOT_RECORDED


def test_groups_from_what_the_examples_carry():
    n = 6
    facts = _facts(n, box=[(0, 0, 20, 20), (0, 0, 60, 60), (0, 0, 150, 150), (0, 0, 300, 300), None, (0, 0, 30, 30)],
                   angle=[2.0, -20.0, 40.0, 0.0, None, 7.0], score=[0.55, 0.65, 0.99, 0.85, None, 0.75],
                   status=[faces.CROPPED] * 4 + [faces.NO_FACE_WHOLE, faces.CROPPED],
                   source=[(400, 300)] * 4 + [None, (2000, 1500)], size=[(160, 160)] * 4 + [(640, 480), (160, 160)],
                   grey=[True, False, False, False, False, True])
    y = np.array([[0, 1], [999, 1], [999, 999], [999, 999], [0, 0], [1, 999]])
    g = slices.groups(facts, y, {"url": ["http://a.com/1", "http://b.com/2"] * 3, "AU43": [1, 0, 1, 0, None, 999]})
    assert g[slices.FACE_PX] == ["<48 px", "48-96 px", "96-192 px", "192-384 px", slices.NO_BOX, "<48 px"]
    assert g[slices.FACE_SHARE][:4] == ["<0.10", "0.20-0.35", ">=0.50", ">=0.50"]
    assert g[slices.FACE_SHARE][5] == "<0.10"  # 30 px of a 1,500 px side
    assert g[slices.HEAD_TILT] == ["<5 deg", "15-30 deg", ">=30 deg", "<5 deg", slices.NO_BOX, "5-15 deg"]
    assert g[slices.DETECTOR_SCORE][:4] == ["<0.6", "0.6-0.7", ">=0.9", "0.8-0.9"]
    assert g[slices.GREY] == ["grey", "colour", "colour", "colour", "colour", "grey"]
    assert g[slices.FACE_STATUS][4] == faces.NO_FACE_WHOLE
    assert g[slices.UNKNOWN_AUS] == ["0", "1", "2", "2", "0", "1"]
    # The whole image's example is its source: 480 px; the others' source sizes are recorded.
    assert g[slices.IMAGE_SIZE] == ["256-512 px"] * 5 + [">=1024 px"]
    assert g[slices.URL_HOST] == ["a.com", "b.com"] * 3
    assert g["column:AU43"] == ["1", "0", "1", "0", slices.NOT_RECORDED, "999"]


def test_examples_without_face_features_still_slice_by_grey_and_unknown_aus():
    facts = _facts(3, status=["", "", ""], box=[None] * 3, score=[None] * 3, angle=[None] * 3, source=[None] * 3,
                   size=[(8, 8)] * 3)
    g = slices.groups(facts, np.zeros((3, 2), int))
    assert slices.FACE_PX not in g and slices.FACE_STATUS not in g and slices.URL_HOST not in g
    assert g[slices.GREY] == ["colour"] * 3 and g[slices.IMAGE_SIZE] == ["<256 px"] * 3


def test_each_slice_is_measured_as_the_whole_split_and_the_worst_is_named():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, size=(n, 3))
    y[rng.uniform(size=y.shape) < 0.1] = labels.UNKNOWN
    good = np.where(y == 1, 0.9, 0.1) + rng.normal(0, 0.05, size=y.shape)
    bad = rng.uniform(size=y.shape)
    small = np.arange(n) < 60  # the model is poor on the first 60 ("small faces")
    scores = np.where(small[:, None], bad, good)
    groups = {"face_px": ["<48 px" if s else "96-192 px" for s in small],
              "grey": ["grey" if i < 10 else "colour" for i in range(n)]}
    tuned = [0.4, 0.5, 0.6]
    out = slices.slice_metrics({"y_true": y, "scores": scores}, tuned, [1, 2, 12], groups, min_size=30)
    measured = {(m["feature"], m["value"]): m for m in out["measured"]}
    assert set(measured) == {("face_px", "<48 px"), ("face_px", "96-192 px"), ("grey", "colour")}
    assert out["too_small"] == [{"feature": "grey", "value": "grey", "examples": 10}]
    small_slice = measured[("face_px", "<48 px")]
    assert small_slice["examples"] == 60 and small_slice["aus_measured"] == 3
    # Each figure is compute_metrics' on the slice's rows alone.
    ref = compute_metrics(y[small], scores[small], 0.5)
    assert small_slice["macro_f1"] == pytest.approx(np.mean([p["f1"] for p in ref["per_label"]]))
    assert small_slice["macro_auc"] == pytest.approx(ref["macro"]["auc"])
    ref_t = compute_metrics(y[small], scores[small], np.array(tuned))
    assert small_slice["macro_f1_tuned"] == pytest.approx(ref_t["macro"]["f1"])
    assert small_slice["per_au"]["12"]["f1"] == pytest.approx(ref["per_label"][2]["f1"])
    assert small_slice["per_au"]["12"]["f1_tuned"] == pytest.approx(ref_t["per_label"][2]["f1"])
    assert measured[("face_px", "96-192 px")]["macro_f1"] > 0.9 > small_slice["macro_f1"]
    assert out["worst"]["feature"] == "face_px" and out["worst"]["value"] == "<48 px"
    json.dumps(out)  # metrics.json takes it as it is


def test_an_au_absent_from_a_slice_is_left_out_of_its_macro_figures():
    y = np.array([[1, 0]] * 20 + [[0, 0]] * 20)  # AU 2 has no positive
    s = np.where(y == 1, 0.9, 0.1).astype(float)
    m = slices.measure(y, s, [0.5, 0.5], [1, 2])
    assert m["aus_measured"] == 1 and m["macro_f1"] == 1.0 and m["per_au"]["2"]["f1"] == 0.0
    none = slices.measure(np.zeros((5, 2), int), np.zeros((5, 2)), [0.5, 0.5], [1, 2])
    assert none["macro_f1"] is None and slices.worst([{"feature": "f", "value": "v", "examples": 5, **none}]) is None


def _measured(*rows):
    return {"min_size": 30,
            "measured": [{"feature": f, "value": v, "examples": n, "macro_f1": x} for f, v, n, x in rows]}


def test_blessing_refuses_a_worst_slice_below_the_floor_and_names_it():
    s = _measured(("face_px", "<48 px", 34, 0.31), ("face_px", "96-192 px", 80, 0.72), ("grey", "grey", 40, 0.38))
    v = judge_slices(s, None, min_slice_macro_f1=0.4, slice_tolerance=0.1)
    assert [c["check"] for c in v["checks"]] == ["min_slice_macro_f1"] and not v["checks"][0]["passed"]
    assert v["checks"][0]["slice"] == {"feature": "face_px", "value": "<48 px"} and v["checks"][0]["value"] == 0.31
    (reason,) = v["reasons"]
    assert reason.startswith("fail: 2 slice(s) below the slice minimum macro F1 0.4")
    assert "slice face_px = <48 px (34 examples): macro F1 0.3100" in reason and "grey = grey (40 examples)" in reason
    ok = judge_slices(s, None, min_slice_macro_f1=0.0, slice_tolerance=0.1)
    assert ok["checks"][0]["passed"] and ok["reasons"][0].startswith("pass: worst slice face_px = <48 px")


def test_blessing_refuses_a_slice_that_regresses_against_the_live_model():
    s = _measured(("face_px", "<48 px", 34, 0.40), ("grey", "grey", 40, 0.70))
    live = {("face_px", "<48 px"): 0.62, ("grey", "grey"): 0.72}
    v = judge_slices(s, live, min_slice_macro_f1=0.0, slice_tolerance=0.1)
    check = next(c for c in v["checks"] if c["check"] == "live_slice_macro_f1")
    assert not check["passed"] and check["limit"] == pytest.approx(0.52)
    reason = next(r for r in v["reasons"] if "live model" in r)
    assert reason.startswith("fail: 1 slice(s) worse than the live model's by more than the slice tolerance 0.1")
    assert "slice face_px = <48 px (34 examples): macro F1 0.4000 vs the live model's 0.6200 (-0.2200)" in reason
    assert judge_slices(s, live, 0.0, 0.25)["checks"][1]["passed"]
    # A slice the live model has no figure for is not compared; no measured slice: nothing to judge, said so.
    assert [c["check"] for c in judge_slices(s, {}, 0.0, 0.1)["checks"]] == ["min_slice_macro_f1"]
    empty = judge_slices({"min_size": 30, "measured": []}, live, 0.5, 0.1)
    assert empty["checks"] == [] and "no slice of at least 30 test examples" in empty["reasons"][0]


def test_grey_is_told_from_colour_in_the_crop():
    assert slices.is_grey(tiny.jpeg((120, 120, 120), size=16))
    assert not slices.is_grey(tiny.jpeg((200, 40, 40), size=16))
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 90).save(buf, "PNG")
    assert slices.is_grey(buf.getvalue())


def test_a_missing_slice_by_column_gets_a_clear_message(tmp_path):
    manifest = _manifest(tmp_path / "manifest", ["k0"], ["http://a.com/x.jpg"])
    slices.check_columns(manifest, ["AU43", "url"])
    with pytest.raises(slices.SliceError) as e:
        slices.check_columns(manifest, ["photographer"])
    msg = str(e.value)
    assert "--slice-by photographer" in msg and "has no column photographer" in msg and "key, url" in msg
    assert "no other column of the sheet" in msg and "without a header row" in msg


def test_the_manifest_is_found_through_filter_and_convert(tmp_path):
    manifest = _manifest(tmp_path / "manifest", ["k0"], ["http://a.com/x.jpg"])
    convert = tmp_path / "convert"
    convert.mkdir()
    ex.write_summary(str(convert), {"parameters": {"manifest": manifest}})
    assert slices.find_manifest("f", {"parameters": {"source": str(convert)}}) == (manifest, "")
    assert slices.find_manifest("f", {"parameters": {"convert": {"parameters": {"manifest": manifest}}}})[0] == manifest
    none, why = slices.find_manifest(str(tmp_path), {"parameters": {}})
    assert none is None and "names no manifest" in why and "--manifest" in why
    gone, why = slices.find_manifest("f", {"parameters": {"manifest": str(tmp_path / "elsewhere")}})
    assert gone is None and "cannot be reached from here" in why


# --- a whole evaluate run on examples with face features -------------------------------------------------------


def _manifest(folder, keys, urls, extra=None) -> str:
    import pandas as pd

    os.makedirs(folder, exist_ok=True)
    cols = {"key": keys, "url": urls}
    for name in labels.AU_COLUMNS:
        cols[name] = np.zeros(len(keys), np.int16)
    cols["AU43"] = np.array([i % 2 for i in range(len(keys))], np.int16)
    cols["row"] = np.arange(1, len(keys) + 1)
    cols.update(extra or {})
    pd.DataFrame(cols).to_parquet(os.path.join(folder, "manifest.parquet"), index=False)
    return str(folder)


@pytest.fixture(scope="module")
def faces_world(tmp_path_factory):
    """Examples whose test faces are small (40 px boxes) or large (200 px), with a manifest of two hosts; the tiny
    model reads colours, so every slice has figures."""
    root = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(1)
    examples_dir = root / "examples"
    examples_dir.mkdir()
    keys, urls = [], []
    summary = {"au_ids": tiny.AU_IDS, "policy": "mask", "has_va": False, "splits": {}, "counters": {}}
    for split, n in (("validation", 40), ("test", 80)):
        colours = rng.uniform(0, 1, size=(n, 3))
        au = (colours > 0.5).astype(int)
        au = np.where(rng.uniform(size=au.shape) < 0.1, 1 - au, au)  # noisy labels: no slice is perfect
        with open(examples_dir / ex.shard_name(split, 0, 1), "wb") as out:
            for i in range(n):
                key = f"{split}{i:04d}"
                side = 40.0 if i % 2 else 200.0
                face = {faces.FACE_STATUS: faces.CROPPED.encode(), faces.FACE_BOX: [10.0, 10.0, 10 + side, 10 + side],
                        faces.FACE_SCORE: [0.9], faces.FACE_ANGLE: [3.0], faces.FACE_COUNT: [1],
                        faces.SOURCE_SIZE: [640, 480]}
                rgb = colours[i] * 255 if i % 5 else [colours[i][0] * 255] * 3  # every 5th is grey
                ex.write_record(out, ex.encode_example(tiny.jpeg(rgb), 8, 8, key, tiny.AU_IDS, au[i].tolist(),
                                                       face=face))
                keys.append(key)
                urls.append(f"https://{'flickr.com' if i % 3 else 'example.org'}/{key}.jpg")
        summary["splits"][split] = {"examples": n, "shards": 1}
    manifest = _manifest(root / "manifest", keys, urls)
    summary["parameters"] = {"manifest": manifest}
    ex.write_summary(str(examples_dir), summary)
    return {"examples": str(examples_dir), "manifest": manifest, "model": tiny.make_model(str(root / "model"))}


def test_evaluate_measures_slices_and_writes_them_everywhere(faces_world, tmp_path):
    from components.evaluate import logic

    out = tmp_path / "evaluation"
    result = logic.run(faces_world["examples"], faces_world["model"], str(out), registry="", min_macro_f1=0.0,
                       min_macro_auc=0.0, slice_by="AU43", min_slice_size=15)
    s = result["metrics"]["slices"]
    measured = {(m["feature"], m["value"]): m for m in s["measured"]}
    assert measured[("face_px", "<48 px")]["examples"] == 40 and measured[("face_px", "192-384 px")]["examples"] == 40
    assert measured[("face_share", "<0.10")]["examples"] == 40 and measured[("grey", "grey")]["examples"] == 16
    assert measured[("url_host", "flickr.com")]["examples"] + measured[("url_host", "example.org")]["examples"] == 80
    assert ("column:AU43", "0") in measured and measured[("image_size", "256-512 px")]["examples"] == 80
    assert all(m["examples"] < 15 for m in s["too_small"]) and s["unavailable"] == []
    assert s["worst"]["macro_f1"] == min(m["macro_f1"] for m in s["measured"] if m["macro_f1"] is not None)
    written = json.loads((out / "metrics.json").read_text())
    assert written["slices"]["worst"] == s["worst"]
    assert (out / "slices.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Slices (at least 15 examples to be measured)" in report and "| face_px | <48 px | 40 |" in report
    blessing = result["blessing"]
    assert any(r.startswith("pass: worst slice") for r in blessing["reasons"]) and blessing["blessed"]
    assert blessing["criteria"]["min_slice_size"] == 15

    # A floor above the worst slice refuses the model and names it.
    refused = logic.run(faces_world["examples"], faces_world["model"], str(tmp_path / "e2"), registry="",
                        min_macro_f1=0.0, min_macro_auc=0.0, min_slice_size=20, min_slice_macro_f1=0.999)
    assert not refused["blessing"]["blessed"]
    reason = next(r for r in refused["blessing"]["reasons"] if "slice minimum" in r)
    w = refused["metrics"]["slices"]["worst"]
    assert f"slice {w['feature']} = {w['value']} ({w['examples']} examples)" in reason


def test_evaluate_refuses_a_slice_by_column_the_manifest_lacks_before_scoring(faces_world, tmp_path):
    from components.evaluate import logic
    from components.evaluate.scoring import EvaluateError

    with pytest.raises(EvaluateError) as e:
        logic.run(faces_world["examples"], faces_world["model"], str(tmp_path / "e"), registry="",
                  slice_by="photographer")
    assert "--slice-by photographer" in str(e.value) and "has no column photographer" in str(e.value)
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_evaluate_cli_names_the_worst_slice_and_refuses_a_bad_column(faces_world, tmp_path, capsys):
    from components.evaluate.__main__ import main

    args = ["--examples", faces_world["examples"], "--model", faces_world["model"], "--registry", ""]
    assert main(args + ["--output", str(tmp_path / "e"), "--slice-by", "photographer"]) == 2
    assert "has no column photographer" in capsys.readouterr().err
    assert main(args + ["--output", str(tmp_path / "o"), "--min-slice-size", "15", "--min-macro-f1", "0",
                        "--manifest", faces_world["manifest"]]) == 0
    out = capsys.readouterr().out
    assert "worst slice: " in out and "report.md)" in out
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["slices"]["unavailable"] == []


def test_evaluate_without_a_reachable_manifest_says_why_the_host_is_not_sliced(tmp_path):
    from components.evaluate import logic

    world = {"examples": tiny.make_examples(str(tmp_path / "examples")),
             "model": tiny.make_model(str(tmp_path / "model"))}
    result = logic.run(world["examples"], world["model"], str(tmp_path / "e"), registry="", min_macro_f1=0.0,
                       min_macro_auc=0.0)
    s = result["metrics"]["slices"]
    unavailable = {u["feature"]: u["reason"] for u in s["unavailable"]}
    assert "names no manifest" in unavailable["url_host"] and "face_share" in unavailable
    assert {m["feature"] for m in s["measured"]} >= {"grey", "unknown_aus"}
    assert "url_host: not sliced" in (tmp_path / "e" / "report.md").read_text()


def test_the_run_report_and_the_sweep_comparison_show_the_slices():
    from components.common.metric_tables import slice_rows
    from components.report.render import _slices
    from pipeline.sweep.compare import comparison_table, measures

    worst = {"feature": "face_px", "value": "<48 px", "examples": 34, "macro_f1": 0.3, "macro_auc": 0.7,
             "macro_f1_tuned": 0.35}
    metrics = {"task": "au", "slices": {"min_size": 30, "measured": [{**worst, "aus_measured": 3}],
                                        "too_small": [{"feature": "grey", "value": "grey", "examples": 4}],
                                        "unavailable": [{"feature": "url_host", "reason": "no manifest"}],
                                        "worst": worst}}
    head, rows = slice_rows(metrics)
    assert rows == [["face_px", "<48 px", "34", "0.300", "0.700", "0.350", "3"],
                    ["grey", "grey", "4", "too small", "", "", ""]] and head[3] == "F1@0.5"
    page = _slices(metrics)
    assert "Worst slice: <b>face_px = &lt;48 px</b> (34 examples), macro F1 0.300" in page
    assert "url_host: not sliced, no manifest" in page and "no slices in this run" in _slices({"task": "au"})

    d = {"accuracy": 0.8, "partial_accuracy": 0.8, "per_label": [],
         "macro": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "auc": 0.7, "tp": 1.0, "fp": 1.0, "tn": 1.0, "fn": 1.0},
         "micro": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "auc": 0.7, "tp": 1, "fp": 1, "tn": 1, "fn": 1}}
    full = {**metrics, "at_default": d, "at_tuned": d}
    assert measures(full)["worst_slice_f1"] == 0.3 and measures(full)["worst_slice"] == "face_px = <48 px"
    entry = {"name": "01", "parameters": {}, "status": "succeeded", "_metrics": full, "blessed": True}
    head, rows = comparison_table({"grid": {}}, [entry])
    assert dict(zip(head, rows[0]))["worst slice F1"] == "0.300 (face_px <48 px)"


# --- a column of the sheet (ingest keeps it as "sheet:<name>") ---------------------------------------------------


def test_a_sheet_column_is_sliced_by_its_own_name_top_ten_then_other(tmp_path):
    # 13 sites: site0 on 13 examples ... site12 on 1; one example of the test split is not in the manifest.
    sites = [f"site{i}" for i in range(13) for _ in range(13 - i)]
    keys = [f"k{i}" for i in range(len(sites))]
    manifest = _manifest(tmp_path / "manifest", keys, [f"http://a.com/{k}.jpg" for k in keys],
                         {"sheet:source_site": sites, "sheet:row": ["x"] * len(keys)})
    slices.check_columns(manifest, ["source_site", "AU43", "row", "sheet:row"])
    test_keys = keys + ["gone"]
    values = slices.manifest_columns(manifest, test_keys, ["url", "source_site", "row", "sheet:row"])
    assert values["source_site"][:13] == ["site0"] * 13 and values["source_site"][-1] is None
    assert values["row"][:2] == [1, 2] and values["sheet:row"][0] == "x"  # the manifest's own row comes first
    n = len(test_keys)
    g = slices.groups(_facts(n), np.zeros((n, 2), int), values)
    site = g["column:source_site"]
    assert site.count("site0") == 13 and site.count("site9") == 4 and "site10" not in site
    assert site.count(slices.OTHER) == 3 + 2 + 1 and site[-1] == slices.NOT_RECORDED

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(n, 2))
    s = slices.slice_metrics({"y_true": y, "scores": rng.uniform(size=(n, 2))}, [0.5, 0.5], [1, 2],
                             {"column:source_site": site}, min_size=6)
    measured = {m["value"]: m["examples"] for m in s["measured"]}
    assert measured == {"site0": 13, "site1": 12, "site2": 11, "site3": 10, "site4": 9, "site5": 8, "site6": 7,
                        "site7": 6, slices.OTHER: 6}
    assert {m["value"] for m in s["too_small"]} == {"site8", "site9", slices.NOT_RECORDED}


def test_a_slice_by_name_the_sheet_lacks_names_the_columns_it_has(tmp_path):
    manifest = _manifest(tmp_path / "manifest", ["k0"], ["http://a.com/x.jpg"],
                         {"sheet:source_site": ["flickr"], "sheet:age_group": ["18-30"]})
    with pytest.raises(slices.SliceError) as e:
        slices.check_columns(manifest, ["source_site", "photographer"])
    msg = str(e.value)
    assert msg.startswith("--slice-by photographer: ") and "has no column photographer" in msg
    assert "it has the sheet's columns source_site, age_group, and key, url, row, AU1..AU60" in msg
    assert "sheet:" not in msg


def test_evaluate_slices_by_a_column_of_the_sheet(faces_world, tmp_path):
    import pandas as pd

    from components.evaluate import logic
    from components.evaluate.scoring import EvaluateError

    table = pd.read_parquet(os.path.join(faces_world["manifest"], "manifest.parquet"))
    # Two sites on the test split's 80 examples: "lab" on 50 of them, "web" on the other 30 (and on validation's).
    lab = set([k for k in table["key"] if k.startswith("test")][:50])
    site = ["lab" if k in lab else "web" for k in table["key"]]
    manifest = _manifest(tmp_path / "manifest", table["key"].tolist(), table["url"].tolist(),
                         {"sheet:source_site": site})
    result = logic.run(faces_world["examples"], faces_world["model"], str(tmp_path / "e"), registry="",
                       min_macro_f1=0.0, min_macro_auc=0.0, manifest=manifest, slice_by="source_site",
                       min_slice_size=31)
    s = result["metrics"]["slices"]
    measured = {m["value"]: m["examples"] for m in s["measured"] if m["feature"] == "column:source_site"}
    assert measured == {"lab": 50}
    assert {"feature": "column:source_site", "value": "web", "examples": 30} in s["too_small"]
    assert "| column:source_site | lab | 50 |" in (tmp_path / "e" / "report.md").read_text()
    with pytest.raises(EvaluateError) as e:
        logic.run(faces_world["examples"], faces_world["model"], str(tmp_path / "x"), registry="",
                  manifest=manifest, slice_by="age_group")
    assert "has no column age_group" in str(e.value) and "the sheet's columns source_site" in str(e.value)
