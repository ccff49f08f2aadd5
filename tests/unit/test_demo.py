"""The demo world without servers: faces are deterministic and show their AUs, labels co-occur as in real faces, the sheet's fault mix follows the study.
Across processes and as a program: tests/integration/test_demo_generate.py."""
import collections
import csv
import json
import os
from urllib.parse import urlsplit

import numpy as np
import openpyxl
import pandas as pd
import pytest
from PIL import Image

from components.common import labels
from pipeline.demo import DemoServer, fault_table_path, faces, generate, generate_demo, load_labels, sheet, write_sheet

ELEVEN = faces.FACE_AU_IDS


# ------------------------------------------------------------------------------------ generator


def test_a_generated_set_is_cached_and_a_different_request_redraws(tmp_path):
    out = str(tmp_path / "set")
    first = generate_demo(out, size=12, seed=1, workers=1)
    stamp = {n: os.stat(os.path.join(out, "images", n)).st_mtime_ns for n in os.listdir(os.path.join(out, "images"))}
    again = generate_demo(out, size=12, seed=1, workers=1)
    assert again["cached"] and again["prevalence"] == first["prevalence"]
    assert {n: os.stat(os.path.join(out, "images", n)).st_mtime_ns for n in stamp} == stamp
    # a missing image means the set is incomplete: it is drawn again
    os.remove(os.path.join(out, "images", sorted(stamp)[0]))
    assert not generate_demo(out, size=12, seed=1, workers=1)["cached"]
    bigger = generate_demo(out, size=14, seed=1, workers=1)
    assert not bigger["cached"] and len(load_labels(out)) == 14


def test_labels_parquet_is_the_ground_truth_in_emotionet_columns(tmp_path):
    out = str(tmp_path / "set")
    generate_demo(out, size=40, seed=2, workers=1)
    df = load_labels(out)
    assert list(df.columns[:1]) == ["name"]
    for col in labels.AU_COLUMNS + labels.VA_COLUMNS:
        assert col in df.columns
    for au in labels.ALL_AU_IDS:
        values = set(df[f"AU{au}"].unique())
        assert values <= ({0, 1, labels.UNKNOWN} if au in ELEVEN else {labels.UNKNOWN}), au
        if au in ELEVEN:  # unknown only where an occluder hides it (tests/unit/test_demo_scenes.py checks which)
            assert (df.loc[df[f"AU{au}"] == labels.UNKNOWN, "occluder"] != "").all(), au
    assert df["valence"].between(-1, 1).all() and df["arousal"].between(-1, 1).all()
    assert df["name"].is_unique
    assert (df["sha256"].str.len() == 64).all()


def test_images_come_in_the_formats_the_web_serves(tmp_path):
    out = str(tmp_path / "set")
    generate_demo(out, size=40, seed=3, workers=1)
    df = load_labels(out)
    seen = collections.Counter()
    for row in df.itertuples():
        with Image.open(os.path.join(out, "images", row.name)) as im:
            seen[(row.format, im.format, im.mode)] += 1
            assert im.size == (row.width, row.height)
            im.load()
    kinds = {(fmt, pil_format, mode) for fmt, pil_format, mode in seen}
    assert ("jpeg", "JPEG", "RGB") in kinds
    assert ("jpeg_cmyk", "JPEG", "CMYK") in kinds
    assert ("png", "PNG", "RGB") in kinds
    assert ("png_rgba", "PNG", "RGBA") in kinds
    assert ("png_palette", "PNG", "P") in kinds
    assert ("webp", "WEBP", "RGB") in kinds
    assert any(f == "gif" and p == "GIF" for f, p, _ in kinds)
    assert seen[("jpeg", "JPEG", "RGB")] > len(df) / 2  # JPEG dominates, as on the web


def test_each_au_changes_the_face():
    # the same identity, pose and light (same random stream), one AU at a time
    base = np.asarray(faces.render_face(np.zeros(len(ELEVEN)), np.random.default_rng(11)), np.int16)
    for j, au in enumerate(ELEVEN):
        inten = np.zeros(len(ELEVEN))
        inten[j] = 1.0
        img = np.asarray(faces.render_face(inten, np.random.default_rng(11)), np.int16)
        changed = (np.abs(img - base).max(axis=2) > 25).sum()
        assert changed >= 15, f"AU{au} changes only {changed} pixels of the face"


def test_aus_co_occur_and_are_rare_as_in_real_faces():
    t = faces.sample_labels(20_000, seed=0)
    act = t.active
    p = {au: act[:, j].mean() for j, au in enumerate(ELEVEN)}
    for au, prev in p.items():
        assert 0.08 <= prev <= 0.45, f"AU{au} is active in {prev:.0%} of faces"
    assert act.sum(axis=1).mean() < 4  # most AUs are inactive most of the time

    def given(a, b):
        return act[act[:, ELEVEN.index(b)], ELEVEN.index(a)].mean()

    assert given(6, 12) > 2 * p[6]
    assert given(2, 1) > 2 * p[2]
    assert given(25, 26) > 0.85
    # valence and arousal follow the AUs
    i = {au: act[:, j] for j, au in enumerate(ELEVEN)}
    assert t.valence[i[12]].mean() > t.valence[~i[12]].mean() + 0.3
    assert t.valence[i[4]].mean() < t.valence[~i[4]].mean()
    assert t.arousal[i[5]].mean() > t.arousal[~i[5]].mean() + 0.2
    assert np.abs(t.valence).max() <= 1 and np.abs(t.arousal).max() <= 1


# ------------------------------------------------------------------------------------ sheet


def _labels_only(d, n: int, seed: int = 0) -> str:
    """A demo folder with labels.parquet but no images: all write_sheet reads."""
    t = faces.sample_labels(n, seed)
    fmts = faces.assign_formats(n, seed)
    table = {"name": [generate.image_name(i, f) for i, f in enumerate(fmts)], "format": fmts,
             "width": [128] * n, "height": [128] * n}
    au = np.full((n, 60), labels.UNKNOWN, np.int16)
    for j, a in enumerate(ELEVEN):
        au[:, a - 1] = t.active[:, j]
    table.update({c: au[:, k] for k, c in enumerate(labels.AU_COLUMNS)})
    table.update({"valence": t.valence, "arousal": t.arousal})
    os.makedirs(d, exist_ok=True)
    pd.DataFrame(table).to_parquet(os.path.join(d, generate.LABELS_FILE))
    with open(os.path.join(d, generate.SUMMARY_FILE), "w") as f:
        json.dump({"size": n, "seed": seed}, f)
    return str(d)


def _addressed(faults: bool = True) -> DemoServer:
    """A DemoServer given addresses but never started: write_sheet only builds URLs from it."""
    srv = DemoServer("unused", faults=faults)
    srv.base_url, srv.tls_base_url, srv.refused_port = "http://127.0.0.1:40001", "https://127.0.0.1:40002", 40003
    return srv


def _read_sheet(path: str) -> list[list]:
    wb = openpyxl.load_workbook(path, read_only=True)
    rows = [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    wb.close()
    return rows


def test_sheet_fault_mix_follows_the_study(tmp_path):
    n = 2000
    demo = _labels_only(tmp_path / "set", n)
    path = write_sheet(demo, _addressed(), str(tmp_path / "sheet.xlsx"), seed=0)
    truth = list(csv.DictReader(open(fault_table_path(path))))
    unique = {r["url"]: r for r in truth}
    assert len(unique) == n
    got = collections.Counter(r["expected_class"] for r in unique.values())
    for cls, study in sheet.STUDY_FAILURES.items():
        want = max(1, round(n * study / sheet.STUDY_URLS))
        assert got[cls] == want, (cls, got[cls], want)
    failing = sum(c for k, c in got.items() if k != "ok")
    assert 0.10 <= failing / n <= 0.125  # the study: 2,709 of 25,000 (10.8%) plus a few odd answers
    routes = collections.Counter(r["route"] for r in unique.values())
    for route in ("flaky503", "flaky429", "html", "truncated", "huge", "hugestream", "moved", "cdn"):
        assert routes[route] >= 1, route
    # every status code of the study's classes is played
    codes = {urlsplit(r["url"]).path.split("/")[2] for r in unique.values() if r["route"] == "status"}
    assert {"404", "403", "400", "401", "410", "500", "502", "503", "504"} <= codes


def test_sheet_is_emotionet_format_with_real_sheets_defects(tmp_path):
    n = 600
    demo = _labels_only(tmp_path / "set", n, seed=3)
    path = write_sheet(demo, _addressed(), str(tmp_path / "sheet.xlsx"), seed=3)
    rows = _read_sheet(path)
    assert all(len(r) == 1 + 60 + 2 for r in rows)
    assert str(rows[0][0]).startswith(("http://", "https://"))  # no header
    urls = [r[0] for r in rows]
    assert len(urls) > n  # duplicates
    dup = [u for u, c in collections.Counter(urls).items() if c > 1]
    assert len(dup) >= 2
    assert sum("," in u for u in set(urls)) >= 2
    # nothing points outside loopback; DNS failures use the reserved .invalid TLD
    for u in urls:
        host = urlsplit(u).hostname
        assert host == "127.0.0.1" or host.endswith(".invalid"), u
    au = np.array([r[1:61] for r in rows], dtype=np.int64)
    for a in labels.ALL_AU_IDS:
        unknown = (au[:, a - 1] == labels.UNKNOWN).mean()
        if a in ELEVEN:
            assert 0.01 <= unknown <= 0.12, (a, unknown)
            assert set(np.unique(au[:, a - 1])) == {0, 1, 999}
        else:
            assert unknown >= 0.97, (a, unknown)
    truth = list(csv.DictReader(open(fault_table_path(path))))
    assert collections.Counter(r["defect"] for r in truth)["conflicting_duplicate"] == 1
    va = np.array([r[61:] for r in rows], dtype=float)
    assert np.abs(va).max() <= 1


def test_without_faults_every_url_is_a_plain_image(tmp_path):
    demo = _labels_only(tmp_path / "set", 300)
    path = write_sheet(demo, _addressed(faults=False), str(tmp_path / "s.xlsx"), valence_arousal=False)
    rows = _read_sheet(path)
    assert all(len(r) == 61 for r in rows)
    truth = list(csv.DictReader(open(fault_table_path(path))))
    assert {r["route"] for r in truth} == {"img", "cdn"}
    assert {r["expected_class"] for r in truth} == {"ok"}


def test_sheet_is_deterministic(tmp_path):
    demo = _labels_only(tmp_path / "set", 200)
    a = write_sheet(demo, _addressed(), str(tmp_path / "a.xlsx"), seed=9)
    b = write_sheet(demo, _addressed(), str(tmp_path / "b.xlsx"), seed=9)
    assert _read_sheet(a) == _read_sheet(b)


def test_a_folder_without_a_set_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m pipeline.demo generate"):
        load_labels(str(tmp_path))


def test_cli_errors_are_one_clear_line_and_exit_2(tmp_path, capsys):
    from pipeline.demo.__main__ import main

    assert main(["generate", "--out", str(tmp_path / "x"), "--size", "0"]) == 2
    assert "demo size 0 is too small" in capsys.readouterr().err
    assert main(["serve", "--dir", str(tmp_path / "none"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "holds no complete demo set" in err and "generate --out" in err
