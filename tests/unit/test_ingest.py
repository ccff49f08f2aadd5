"""Tests of the ingest step on sheets the tests write: xlsx and csv, good rows and every kind of bad one."""
import csv
import json
import os
import types

import openpyxl
import pandas as pd
import pytest

from components.common import labels
from components.common.manifest import INGEST_SUMMARY_FILE, MANIFEST_FILE, REJECTS_FILE
from components.ingest import logic
from components.ingest.__main__ import main as ingest_main

AUS11 = set(labels.DEFAULT_AU_IDS)


def au_row(seed: int) -> list[int]:
    """60 labels: the 11 AUs get 0/1 from the seed, the others 999."""
    return [((seed >> (i % 11)) & 1) if a in AUS11 else 999 for i, a in enumerate(labels.ALL_AU_IDS)]


def write_xlsx(path, rows):
    wb = openpyxl.Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    wb.save(path)
    return str(path)


def write_csv(path, rows, quoting=csv.QUOTE_MINIMAL):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=quoting).writerows(rows)
    return str(path)


def read_outputs(out):
    manifest = pd.read_parquet(os.path.join(out, MANIFEST_FILE))
    rejects = pd.read_csv(os.path.join(out, REJECTS_FILE))
    summary = json.loads(open(os.path.join(out, INGEST_SUMMARY_FILE)).read())
    return manifest, rejects, summary


def test_xlsx_without_header_as_emotionet_ships_it(tmp_path):
    urls = [f"http://example.org/img/{i}.jpg" for i in range(5)]
    src = write_xlsx(tmp_path / "sheet.xlsx", [[u] + au_row(i) for i, u in enumerate(urls)])
    summary = logic.run(src, str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert summary["rows_read"] == 5 and summary["kept"] == 5 and summary["rejected"] == 0
    assert list(manifest["url"]) == urls
    assert list(manifest["row"]) == [1, 2, 3, 4, 5]
    assert list(manifest["key"]) == [labels.image_key(u) for u in urls]
    assert manifest["key"].str.len().eq(20).all()
    assert [c for c in manifest.columns if c.startswith("AU")] == list(labels.AU_COLUMNS)
    assert all(manifest[c].dtype == "int16" for c in labels.AU_COLUMNS)
    assert manifest.loc[2, list(labels.AU_COLUMNS)].tolist() == au_row(2)
    assert "valence" not in manifest.columns
    assert len(rejects) == 0


def test_xlsx_with_valence_arousal_and_header(tmp_path):
    header = ["URL"] + list(labels.AU_COLUMNS) + ["valence", "arousal"]
    rows = [header, ["https://x.org/a.jpg"] + au_row(1) + [0.5, -0.25], ["https://x.org/b.jpg"] + au_row(2) + ["oops", 0.1]]
    src = write_xlsx(tmp_path / "s.xlsx", rows)
    summary = logic.run(src, str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert summary["header_row"] and summary["has_valence_arousal"]
    assert manifest["valence"].tolist() == [0.5] and manifest["arousal"].tolist() == [-0.25]
    assert manifest["valence"].dtype == "float32"
    assert manifest["row"].tolist() == [2]  # the header is row 1
    assert rejects["reason"].tolist() == [logic.BAD_VALENCE_AROUSAL] and rejects["row"].tolist() == [3]
    assert "valence" in rejects["detail"][0]


def test_csv_urls_kept_exactly_commas_spaces_unicode(tmp_path):
    urls = [
        "http://example.org/a,b,c.jpg",  # quoted by the writer
        "http://example.org/with space/Ünïcødé 表情.jpg",
        "https://example.org/q?x=1&y=2",
    ]
    src = write_csv(tmp_path / "s.csv", [[u] + au_row(i) for i, u in enumerate(urls)])
    logic.run(src, str(tmp_path / "out"))
    manifest, _, _ = read_outputs(tmp_path / "out")
    assert manifest["url"].tolist() == urls


def test_csv_unquoted_url_with_commas_is_rejoined_or_rejected(tmp_path):
    good = "http://example.org/smile,happy,face.jpg"
    lines = [
        good + "," + ",".join(map(str, au_row(3))),  # unquoted: the comma splits the URL
        "http://example.org/ok.jpg," + ",".join(map(str, au_row(4))),
        # unquoted and a label broken too: the cells can't be told apart -> rejected
        "http://example.org/x,y.jpg," + ",".join(map(str, au_row(5)[:-1] + [7])),
    ]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = logic.run(str(tmp_path / "s.csv"), str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert manifest["url"].tolist() == [good, "http://example.org/ok.jpg"]
    assert manifest.loc[0, list(labels.AU_COLUMNS)].tolist() == au_row(3)
    assert rejects["row"].tolist() == [3] and rejects["reason"].tolist() == [logic.WRONG_CELL_COUNT]
    assert summary["rejected_by_reason"] == {logic.WRONG_CELL_COUNT: 1}


def test_csv_with_a_header_rejoins_an_unquoted_url_wherever_its_column_is(tmp_path):
    good = "http://example.org/smile,happy,face.jpg"
    # A header naming the columns, the URL column in the middle, valence/arousal at the end.
    header = ["AU" + str(a) for a in labels.ALL_AU_IDS[:30]] + ["URL"] + ["AU" + str(a) for a in labels.ALL_AU_IDS[30:]]
    header += ["valence", "arousal"]

    def line(url, seed, va=("0.5", "-0.25")):
        au = [str(v) for v in au_row(seed)]
        return ",".join(au[:30] + [url] + au[30:] + list(va))

    lines = [",".join(header), line(good, 3), line("http://example.org/ok.jpg", 4), line("http://example.org/x,y.jpg", 5, ("?", "0"))]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = logic.run(str(tmp_path / "s.csv"), str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert summary["header_row"] and summary["has_valence_arousal"]
    assert manifest["url"].tolist() == [good, "http://example.org/ok.jpg"]
    assert manifest["row"].tolist() == [2, 3]
    assert manifest.loc[0, list(labels.AU_COLUMNS)].tolist() == au_row(3)
    assert manifest["valence"].tolist() == [0.5, 0.5] and manifest["arousal"].tolist() == [-0.25, -0.25]
    # Rejoined, its valence is not a number: the rejoin is refused and the row is rejected for its width.
    assert rejects["row"].tolist() == [4] and rejects["reason"].tolist() == [logic.WRONG_CELL_COUNT]


def test_csv_extra_cells_that_are_numbers_are_not_taken_for_parts_of_the_url(tmp_path):
    # Two labels too many at the end: joining the first two label cells to the URL would leave 60
    # valid labels, shifted by two, and a URL ending in ",1,0". The row is rejected instead.
    au = au_row(6)
    lines = ["http://example.org/ok.jpg," + ",".join(map(str, au_row(4))),
             "http://example.org/c.jpg," + ",".join(map(str, au + [1, 0]))]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = logic.run(str(tmp_path / "s.csv"), str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert manifest["url"].tolist() == ["http://example.org/ok.jpg"]
    assert rejects["row"].tolist() == [2] and rejects["reason"].tolist() == [logic.WRONG_CELL_COUNT]
    assert "63 cells, expected 61" in rejects["detail"][0] and "quote the URL" in rejects["detail"][0]
    assert summary["rejected_by_reason"] == {logic.WRONG_CELL_COUNT: 1}


def test_every_kind_of_bad_row_is_rejected_and_ingest_goes_on(tmp_path):
    ok = au_row(1)
    rows = [
        ["http://e.org/good.jpg"] + ok,  # 1
        [""] + ok,  # 2 missing URL
        ["ftp://e.org/f.jpg"] + ok,  # 3 scheme
        ["e.org/noscheme.jpg"] + ok,  # 4 scheme
        ["http://e.org/short.jpg"] + ok[:30],  # 5 wrong cell count
        ["http://e.org/two.jpg"] + [2] + ok[1:],  # 6 AU value 2
        ["http://e.org/blank.jpg"] + [""] + ok[1:],  # 7 blank AU
        ["http://e.org/text.jpg"] + ok[:10] + ["yes"] + ok[11:],  # 8 text AU
        ["http://e.org/frac.jpg"] + [0.5] + ok[1:],  # 9 fractional AU
        ["http://e.org/good2.jpg"] + au_row(2),  # 10
    ]
    src = write_csv(tmp_path / "s.csv", rows)
    summary = logic.run(src, str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert manifest["url"].tolist() == ["http://e.org/good.jpg", "http://e.org/good2.jpg"]
    assert manifest["row"].tolist() == [1, 10]
    got = dict(zip(rejects["row"], rejects["reason"]))
    assert got == {
        2: logic.MISSING_URL, 3: logic.BAD_SCHEME, 4: logic.BAD_SCHEME, 5: logic.WRONG_CELL_COUNT,
        6: logic.BAD_AU_VALUE, 7: logic.BAD_AU_VALUE, 8: logic.BAD_AU_VALUE, 9: logic.BAD_AU_VALUE,
    }
    detail = dict(zip(rejects["row"], rejects["detail"]))
    assert "AU1" in detail[6] and "2" in detail[6]
    assert "blank" in detail[7]
    assert "AU11" in detail[8]
    assert summary["rows_read"] == 10 and summary["kept"] == 2 and summary["rejected"] == 8
    # the raw cells are kept, so a person can fix the row
    assert json.loads(rejects.loc[rejects["row"] == 3, "raw"].iloc[0])[0] == "ftp://e.org/f.jpg"


def test_duplicates_collapse_or_reject_every_copy(tmp_path):
    rows = [
        ["http://e.org/same.jpg"] + au_row(1),
        ["http://e.org/conflict.jpg"] + au_row(1),
        ["http://e.org/same.jpg"] + au_row(1),  # identical -> collapsed
        ["http://e.org/conflict.jpg"] + au_row(2),  # conflicting -> every copy rejected
        ["http://e.org/conflict.jpg"] + au_row(1),
        ["http://e.org/other.jpg"] + au_row(3),
    ]
    src = write_xlsx(tmp_path / "s.xlsx", rows)
    summary = logic.run(src, str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert manifest["url"].tolist() == ["http://e.org/same.jpg", "http://e.org/other.jpg"]
    assert manifest["row"].tolist() == [1, 6]
    assert sorted(rejects["row"].tolist()) == [2, 4, 5]
    assert set(rejects["reason"]) == {logic.CONFLICTING_DUPLICATE}
    assert all("2, 4, 5" in d for d in rejects["detail"])
    assert summary["duplicates_collapsed"] == 1
    assert manifest["key"].is_unique


def test_summary_counts_per_au(tmp_path):
    rows = [["http://e.org/%d.jpg" % i] + au_row(i) for i in range(8)]
    src = write_csv(tmp_path / "s.csv", rows)
    summary = logic.run(src, str(tmp_path / "out"))
    for j, name in enumerate(labels.AU_COLUMNS):
        values = [au_row(i)[j] for i in range(8)]
        assert summary["au_counts"][name] == {"0": values.count(0), "1": values.count(1), "999": values.count(999)}
    text = logic.format_summary(summary)
    assert "AU60" in text and "11 of 60 AUs are annotated" in text


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("labels.txt", "hello", "unsupported file type '.txt'"),
        ("empty.csv", "", "is empty"),
        ("narrow.csv", "http://e.org/a.jpg,1,0\nhttp://e.org/b.jpg,0,1\n", "rows have 3 cells"),
        ("broken.xlsx", "this is not a zip", "not a readable .xlsx"),
        ("header.csv", "url,foo,bar\nhttp://e.org/a.jpg,1,2\n", "names no AU columns"),
    ],
)
def test_not_a_sheet_stops_with_one_clear_message(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(logic.SheetError, match=expected) as err:
        logic.run(str(path), str(tmp_path / "out"))
    assert str(path) in str(err.value)
    assert ingest_main(["--source", str(path), "--output", str(tmp_path / "out2")]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and "Traceback" not in captured.err


def test_missing_source_and_no_source(tmp_path):
    with pytest.raises(logic.SheetError, match="does not exist"):
        logic.run(str(tmp_path / "nope.xlsx"), str(tmp_path / "out"))
    with pytest.raises(logic.SheetError, match="no sheet given"):
        logic.run("", str(tmp_path / "out"))


def test_cli_prints_the_table(tmp_path, capsys):
    src = write_csv(tmp_path / "s.csv", [["http://e.org/a.jpg"] + au_row(1)])
    assert ingest_main(["--source", src, "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "rows read 1, kept 1" in out and "AU12" in out


def test_component_calls_logic(tmp_path):
    from components.ingest.component import ingest

    src = write_csv(tmp_path / "s.csv", [["http://e.org/a.jpg"] + au_row(1), ["bad"] + au_row(1)])
    artifact = types.SimpleNamespace(path=str(tmp_path / "manifest"), metadata={})
    ingest.python_func(source=src, manifest=artifact)
    assert artifact.metadata == {"rows_read": 2, "kept": 1, "rejected": 1}
    assert os.path.exists(tmp_path / "manifest" / MANIFEST_FILE)


# ------------------------------------------------------------------------------------------ the sheet's other columns


def test_a_csv_header_keeps_the_sheets_other_columns_as_text(tmp_path):
    import pyarrow.parquet as pq

    from components.common.manifest import read_manifest, sheet_columns

    header = ["source_site", "URL"] + list(labels.AU_COLUMNS) + ["age_group", "ethnicity_annotated", "", "row"]
    rows = [
        header,
        ["flickr", "http://e.org/a.jpg"] + au_row(1) + ["18-30", "yes", "x", "7"],
        ["", "http://e.org/b.jpg"] + au_row(2) + [" 31-50 ", "", "", ""],  # blank cells are null
        ["flickr", "http://e.org/bad.jpg"] + [2] + au_row(3)[1:] + ["0-17", "no", "", ""],  # rejected
        ["google", "http://e.org/a.jpg"] + au_row(1) + ["51+", "no", "", ""],  # collapsed: the first row's text
    ]
    src = write_csv(tmp_path / "s.csv", rows)
    summary = logic.run(src, str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    # The blank header names nothing to keep; the sheet's own "row" stays apart from the manifest's.
    assert summary["sheet_columns"] == ["source_site", "age_group", "ethnicity_annotated", "row"]
    assert list(manifest.columns) == (["key", "url"] + list(labels.AU_COLUMNS) + ["row", "sheet:source_site",
                                      "sheet:age_group", "sheet:ethnicity_annotated", "sheet:row"])
    assert manifest["url"].tolist() == ["http://e.org/a.jpg", "http://e.org/b.jpg"]
    assert manifest["row"].tolist() == [2, 3] and manifest["sheet:row"].tolist() == ["7", None]
    assert manifest["sheet:source_site"].tolist() == ["flickr", None]
    assert manifest["sheet:age_group"].tolist() == ["18-30", "31-50"]
    assert manifest["sheet:ethnicity_annotated"].tolist() == ["yes", None]
    assert rejects["row"].tolist() == [4] and summary["duplicates_collapsed"] == 1
    assert manifest.loc[1, list(labels.AU_COLUMNS)].tolist() == au_row(2)
    schema = pq.read_schema(tmp_path / "out" / MANIFEST_FILE)
    assert all(str(schema.field(f"sheet:{c}").type) == "string" for c in summary["sheet_columns"])
    assert sheet_columns(schema.names) == summary["sheet_columns"]
    keys, au, va = read_manifest(str(tmp_path / "out"))  # the labels' reader does not see them
    assert len(keys) == 2 and au.shape == (2, 60) and va is None
    text = logic.format_summary(summary)
    assert "other columns kept (evaluate --slice-by can name them): source_site, age_group" in text


def test_an_xlsx_header_keeps_its_other_columns_typed_as_text_even_when_blank(tmp_path):
    header = ["URL"] + list(labels.AU_COLUMNS) + ["valence", "arousal", "source_site", "batch", "source_site", "notes"]
    rows = [header,
            ["https://x.org/a.jpg"] + au_row(1) + [0.5, -0.25, "flickr", 3, "dup", None],
            ["https://x.org/b.jpg"] + au_row(2) + [0.1, 0.2, "bing"]]  # xlsx drops the trailing empty cells
    src = write_xlsx(tmp_path / "s.xlsx", rows)
    summary = logic.run(src, str(tmp_path / "out"))
    manifest, rejects, _ = read_outputs(tmp_path / "out")
    assert len(rejects) == 0 and summary["sheet_columns"] == ["source_site", "batch", "source_site_2", "notes"]
    assert manifest["sheet:source_site"].tolist() == ["flickr", "bing"]
    assert manifest["sheet:batch"].tolist() == ["3", None]  # a number cell kept as its text
    assert manifest["sheet:source_site_2"].tolist() == ["dup", None]
    assert manifest["sheet:notes"].isna().all() and manifest["valence"].tolist() == [0.5, pytest.approx(0.1)]
    import pyarrow.parquet as pq

    assert str(pq.read_schema(tmp_path / "out" / MANIFEST_FILE).field("sheet:notes").type) == "string"


def test_emotionets_headerless_sheet_has_no_other_columns(tmp_path):
    src = write_xlsx(tmp_path / "sheet.xlsx", [[f"http://e.org/{i}.jpg"] + au_row(i) for i in range(3)])
    summary = logic.run(src, str(tmp_path / "out"))
    manifest, _, _ = read_outputs(tmp_path / "out")
    assert summary["sheet_columns"] == []
    assert list(manifest.columns) == ["key", "url"] + list(labels.AU_COLUMNS) + ["row"]
    assert "other columns kept" not in logic.format_summary(summary)
