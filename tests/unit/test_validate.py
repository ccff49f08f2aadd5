"""Tests of the validate step: schema inferred and kept, anomalies caught on later runs, the summary numbers."""
import json
import shutil
import types

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common import labels
from components.common import ledger as download_ledger
from components.common import validation as contract
from components.validate import __main__ as cli
from components.validate import logic

N = 200
FAIL_EVERY = 10  # every 10th download fails: a 10% failure rate


def make_tables(n=N, seed=0, fail_every=FAIL_EVERY):
    """A manifest (contract 1) and its ledger (contract 2), as the ingest and download steps write them."""
    rng = np.random.default_rng(seed)
    urls = [f"http://127.0.0.1:8000/faces/{i}.jpg?size=big, small" for i in range(n)]
    keys = [labels.image_key(u) for u in urls]
    manifest = pd.DataFrame({"key": keys, "url": urls})
    for c in labels.AU_COLUMNS:
        manifest[c] = rng.choice(np.array([0, 1, 999], dtype="int16"), n, p=[0.7, 0.2, 0.1])
    manifest["row"] = np.arange(2, n + 2)
    failed = np.arange(n) % fail_every == 0
    ledger = pd.DataFrame({
        "key": keys,
        "url": urls,
        "status": np.where(failed, "failed", "ok"),
        "error_class": np.where(failed, "http_404", "ok"),
        "http_status": np.where(failed, 404, 200),
        "attempts": 1,
        "bytes": np.where(failed, np.nan, 2048.0),
        "sha256": ["0" * 64] * n,
        "format": np.where(failed, None, "jpg"),
        "width": pd.array(np.where(failed, None, 64), dtype="Int64"),
        "height": np.where(failed, np.nan, 48.0),
        "first_attempt": "2024-01-01T00:00:00Z",
        "last_attempt": "2024-01-01T00:00:00Z",
        "message": np.where(failed, "HTTP 404 Not Found", ""),
    })
    return manifest, ledger


def write_inputs(folder, manifest, ledger):
    """Writes both tables; the ledger with the download step's own parquet schema, when its columns allow."""
    (folder / "manifest").mkdir(parents=True)
    (folder / "downloads").mkdir(parents=True)
    manifest.to_parquet(folder / "manifest" / "manifest.parquet")
    if list(ledger.columns) == list(download_ledger.COLUMNS):
        ledger = pa.Table.from_pandas(ledger, schema=download_ledger.SCHEMA, preserve_index=False)
        pq.write_table(ledger, folder / "downloads" / "ledger.parquet")
    else:
        ledger.to_parquet(folder / "downloads" / "ledger.parquet")
    return str(folder / "manifest"), str(folder / "downloads")


def validate(folder, manifest, ledger, schema_uri, max_anomalies=0, **kw):
    m, d = write_inputs(folder, manifest, ledger)
    return logic.run(manifest_dir=m, downloads_dir=d, output_dir=str(folder / "out"),
                     schema_uri=schema_uri, max_anomalies=max_anomalies, **kw)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The first run: the schema is inferred from clean data and kept in a folder."""
    root = tmp_path_factory.mktemp("first")
    manifest, ledger = make_tables()
    schema_dir = root / "schema"
    summary = validate(root / "run", manifest, ledger, str(schema_dir))
    return types.SimpleNamespace(root=root, schema_dir=schema_dir, summary=summary, out=root / "run" / "out",
                                 manifest=manifest, ledger=ledger)


@pytest.fixture
def kept(first, tmp_path):
    """A copy of the first run's kept schema and statistics, so each later run starts from the same baseline."""
    shutil.copytree(first.schema_dir, tmp_path / "schema")
    return str(tmp_path / "schema")


def second_run_anomalies(tmp_path, kept, manifest, ledger):
    with pytest.raises(logic.AnomaliesFound) as err:
        validate(tmp_path / "run", manifest, ledger, kept)
    found = json.loads((tmp_path / "run" / "out" / contract.ANOMALIES_JSON_FILE).read_text())
    return {a["feature"]: a for a in found}, str(err.value)


# ------------------------------------------------------------------------------------------ first run


def test_first_run_infers_and_keeps_the_schema(first):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    assert first.summary["schema"] == {
        "uri": str(first.schema_dir / "schema.pbtxt"), "inferred": True, "kept": True,
        "origin": f"inferred from this run and kept at {first.schema_dir / 'schema.pbtxt'}",
    }
    assert first.summary["anomaly_count"] == 0 and first.summary["passed"]
    assert (first.schema_dir / "schema.statistics.pb").exists()
    kept = text_format.Parse((first.schema_dir / "schema.pbtxt").read_text(), schema_pb2.Schema())
    assert kept == text_format.Parse((first.out / contract.SCHEMA_FILE).read_text(), schema_pb2.Schema())
    features = {f.name: f for f in kept.feature}
    assert set(labels.AU_COLUMNS) <= set(features)
    au = features["AU12"]
    assert (au.int_domain.min, au.int_domain.max, au.int_domain.is_categorical) == (0, 999, True)
    assert au.presence.min_fraction == 1.0
    assert au.drift_comparator.infinity_norm.threshold == pytest.approx(0.1)
    assert list(features["format"].string_domain.value) == ["jpg"]
    assert list(features["status"].string_domain.value) == ["ok", "failed"]
    assert "timeout" in features["error_class"].string_domain.value
    assert features["width"].int_domain.min == 1
    # key, url and row say nothing about the data's health; message and sha256 neither.
    assert not {"key", "url", "row", "message", "sha256"} & set(features)


def test_first_run_writes_every_output(first):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    for name in (contract.STATISTICS_FILE, contract.SCHEMA_FILE, contract.ANOMALIES_FILE,
                 contract.ANOMALIES_JSON_FILE, contract.VALIDATION_SUMMARY_FILE, contract.STATISTICS_HTML_FILE):
        assert (first.out / name).stat().st_size > 0, name
    stats_bytes = (first.out / contract.STATISTICS_FILE).read_bytes()
    stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(stats_bytes)
    assert stats.datasets[0].num_examples == N
    assert json.loads((first.out / contract.ANOMALIES_JSON_FILE).read_text()) == []
    page = (first.out / contract.STATISTICS_HTML_FILE).read_text()
    assert "facets-overview" in page and "0 anomalies" in page


def test_summary_numbers(first):
    s = first.summary
    assert json.loads((first.out / contract.VALIDATION_SUMMARY_FILE).read_text()) == s
    assert (s["images"], s["ledger_rows"], s["ok"], s["failed"]) == (N, N, 180, 20)
    assert s["failure_rate"] == pytest.approx(0.1)
    assert (s["not_in_ledger"], s["ledger_only"], s["duplicate_ledger_keys"]) == (0, 0, 0)
    assert s["error_classes"] == {"http_404": 20, "ok": 180}
    assert s["formats"] == {"jpg": 180}
    assert len(s["au"]) == 60
    for c in ("AU1", "AU12", "AU60"):
        values = first.manifest[c]
        pos, neg, unk = (int((values == v).sum()) for v in (1, 0, 999))
        assert s["au"][c] == {"positive": pos, "negative": neg, "unknown": unk, "other": 0,
                              "prevalence": round(pos / (pos + neg), 6)}


# ------------------------------------------------------------------------------------------ later runs


def test_same_data_passes_against_the_kept_schema(first, kept, tmp_path):
    summary = validate(tmp_path / "run", first.manifest, first.ledger, kept)
    assert summary["anomaly_count"] == 0 and summary["passed"]
    assert summary["schema"]["inferred"] is False
    assert summary["previous_statistics"] == f"{kept}/schema.statistics.pb"
    assert {d["feature"] for d in summary["drift"]} >= {"AU1", "AU60"}
    assert all(d["value"] == 0 for d in summary["drift"])


def test_au_value_outside_0_1_999_is_caught(first, kept, tmp_path):
    manifest = first.manifest.copy()
    manifest.loc[[3, 7], "AU4"] = 2
    found, message = second_run_anomalies(tmp_path, kept, manifest, first.ledger)
    assert set(found) == {"AU4"}
    assert found["AU4"]["types"] == ["CUSTOM_VALIDATION"]
    # The message names the value, the rows and the URLs.
    assert "holds 2 in 2 images" in found["AU4"]["description"]
    assert "row 5 (http://127.0.0.1:8000/faces/3.jpg?size=big, small)" in found["AU4"]["description"]
    assert "AU4: AU values other than 0, 1, 999" in message


def test_new_image_format_is_caught(first, kept, tmp_path):
    ledger = first.ledger.copy()
    ledger.loc[[1, 2], "format"] = "tiff"
    found, message = second_run_anomalies(tmp_path, kept, first.manifest, ledger)
    assert set(found) == {"format"}
    assert found["format"]["types"] == ["ENUM_TYPE_UNEXPECTED_STRING_VALUES"]
    assert "tiff" in found["format"]["description"]
    assert "format" in message


def test_missing_au_column_is_caught(first, kept, tmp_path):
    found, _ = second_run_anomalies(tmp_path, kept, first.manifest.drop(columns=["AU7"]), first.ledger)
    assert set(found) == {"AU7"}
    assert found["AU7"]["types"] == ["SCHEMA_MISSING_COLUMN"]


def test_failure_rate_jump_is_caught(first, kept, tmp_path):
    manifest, ledger = make_tables(fail_every=2)  # same images and labels, half the downloads fail
    found, message = second_run_anomalies(tmp_path, kept, manifest, ledger)
    assert set(found) == {"failed"}
    assert "rose from 10.0% on the previous run to 50.0%" in found["failed"]["description"]
    assert "Download failure rate rose" in message


def test_fewer_failures_are_no_anomaly(first, kept, tmp_path):
    manifest, ledger = make_tables(fail_every=N + 1)  # only the first download fails
    assert validate(tmp_path / "run", manifest, ledger, kept)["anomaly_count"] == 0


def test_label_prevalence_drift_is_caught(first, kept, tmp_path):
    manifest = first.manifest.copy()
    manifest.loc[: N // 2, "AU12"] = 1  # half the images now smile
    found, _ = second_run_anomalies(tmp_path, kept, manifest, first.ledger)
    assert set(found) == {"AU12"}
    assert found["AU12"]["types"] == ["COMPARATOR_L_INFTY_HIGH"]


def test_anomalies_up_to_the_threshold_are_reported_and_the_baseline_moves(first, kept, tmp_path):
    manifest = first.manifest.copy()
    manifest.loc[0, "AU1"] = 5
    stats_file = f"{kept}/schema.statistics.pb"
    before = open(stats_file, "rb").read()
    summary = validate(tmp_path / "run", manifest, first.ledger, kept, max_anomalies=1)
    assert summary["passed"] and summary["anomaly_count"] == 1
    assert summary["anomalies"][0]["feature"] == "AU1"
    assert summary["au"]["AU1"]["other"] == 1
    assert open(stats_file, "rb").read() != before


def test_a_stopped_run_keeps_the_previous_baseline(first, kept, tmp_path):
    stats_file = f"{kept}/schema.statistics.pb"
    before = open(stats_file, "rb").read()
    second_run_anomalies(tmp_path, kept, first.manifest.drop(columns=["AU7"]), first.ledger)
    assert open(stats_file, "rb").read() == before
    summary = json.loads((tmp_path / "run" / "out" / contract.VALIDATION_SUMMARY_FILE).read_text())
    assert summary["passed"] is False and summary["anomaly_count"] == 1


# ------------------------------------------------------------------------------------------ without a kept schema


def test_without_schema_uri_nothing_is_kept_and_contract_checks_still_apply(first, tmp_path):
    manifest = first.manifest.copy()
    manifest.loc[0, "AU26"] = -1
    ledger = first.ledger.copy()
    ledger.loc[0, "error_class"] = "gremlins"
    with pytest.raises(logic.AnomaliesFound):
        validate(tmp_path / "run", manifest, ledger, "")
    summary = json.loads((tmp_path / "run" / "out" / contract.VALIDATION_SUMMARY_FILE).read_text())
    assert summary["schema"]["uri"] == "" and summary["schema"]["kept"] is False
    assert {a["feature"] for a in summary["anomalies"]} == {"AU26", "error_class"}
    assert list(tmp_path.glob("**/*.statistics.pb")) == []


def test_image_missing_from_the_ledger(first, tmp_path):
    ledger = first.ledger.iloc[1:]  # the ledger lost image 0, a failed download
    summary = validate(tmp_path / "run", first.manifest, ledger, str(tmp_path / "s.pbtxt"), max_anomalies=10)
    assert summary["not_in_ledger"] == 1
    assert summary["failure_rate"] == pytest.approx(0.1)  # an image without a ledger row cannot be converted
    assert {a["feature"] for a in summary["anomalies"]} == {"status", "error_class"}
    # A schema path ending in .pbtxt is the file; its statistics sit beside it.
    assert (tmp_path / "s.pbtxt").exists() and (tmp_path / "s.statistics.pb").exists()


def test_manifest_file_path_and_html_path(first, tmp_path):
    m, d = write_inputs(tmp_path, first.manifest, first.ledger)
    html_path = tmp_path / "view" / "statistics_view"
    logic.run(manifest_dir=f"{m}/manifest.parquet", downloads_dir=d, output_dir=str(tmp_path / "out"),
              html_path=str(html_path), schema_uri="", max_anomalies=0)
    assert "facets-overview" in html_path.read_text()


def test_the_sheets_own_columns_are_left_out_of_the_statistics(first, kept, tmp_path):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    manifest = first.manifest.copy()
    manifest["sheet:source_site"] = [f"site{i % 7}" for i in range(N)]  # ingest keeps a sheet's other columns
    manifest["sheet:notes"] = pd.Series([None] * N, dtype=object)
    summary = validate(tmp_path / "run", manifest, first.ledger, kept)
    assert summary["anomaly_count"] == 0 and summary["passed"]
    stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(
        (tmp_path / "run" / "out" / contract.STATISTICS_FILE).read_bytes())
    names = {f.path.step[0] for f in stats.datasets[0].features}
    assert "AU12" in names and not any(n.startswith("sheet:") for n in names)
    assert list(logic._read_parquet(str(tmp_path / "run" / "manifest" / "manifest.parquet"), "manifest",
                                    skip=lambda c: c.startswith("sheet:")).columns) == list(first.manifest.columns)


# ------------------------------------------------------------------------------------------ bad inputs


def test_missing_ledger_names_the_file_and_the_step(first, tmp_path):
    m, _ = write_inputs(tmp_path, first.manifest, first.ledger)
    with pytest.raises(logic.ValidateError, match=r"empty/ledger\.parquet does not exist.*components\.download"):
        logic.run(manifest_dir=m, downloads_dir=str(tmp_path / "empty"), output_dir=str(tmp_path / "out"))


def test_unreadable_manifest(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.parquet").write_text("key,url\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ledger.parquet").write_text("")
    with pytest.raises(logic.ValidateError, match="manifest.parquet is not a readable parquet file"):
        logic.run(manifest_dir=str(tmp_path / "m"), downloads_dir=str(tmp_path / "d"), output_dir=str(tmp_path / "out"))


def test_broken_kept_schema(first, tmp_path):
    (tmp_path / "schema.pbtxt").write_text("feature { name: ")
    with pytest.raises(logic.ValidateError, match="kept schema .*schema.pbtxt is not a readable Schema.*delete it"):
        validate(tmp_path / "run", first.manifest, first.ledger, str(tmp_path / "schema.pbtxt"))


# ------------------------------------------------------------------------------------------ CLI and component


def test_cli_missing_ledger_exits_2_with_a_message(first, tmp_path, capsys):
    m, _ = write_inputs(tmp_path, first.manifest, first.ledger)
    assert cli.main(["--manifest", m, "--downloads", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused: validate: downloads: ") and "ledger.parquet does not exist" in err


def test_cli_stops_on_anomalies_and_passes_with_a_higher_threshold(first, kept, tmp_path, capsys):
    manifest = first.manifest.copy()
    manifest.loc[0, "AU2"] = 3
    m, d = write_inputs(tmp_path, manifest, first.ledger)
    args = ["--manifest", m, "--downloads", d, "--output", str(tmp_path / "o"), "--schema", kept]
    assert cli.main(args) == 2
    assert "1 anomalies, more than the 0 allowed (max_anomalies): AU2: AU values other than 0, 1, 999" in capsys.readouterr().err
    assert cli.main(args + ["--max-anomalies", "1"]) == 0
    assert "AU2: AU values other than 0, 1, 999" in capsys.readouterr().out


def test_component_writes_the_folder_and_the_html_artifact(first, tmp_path):
    from components.validate.component import validate as component

    m, d = write_inputs(tmp_path, first.manifest, first.ledger)
    art = lambda p: types.SimpleNamespace(path=str(p), uri=str(p), metadata={})  # noqa: E731
    validation, view = art(tmp_path / "validation"), art(tmp_path / "html" / "statistics_view")
    component.python_func(manifest=art(m), downloads=art(d), validation=validation, statistics_view=view,
                          schema_uri=str(tmp_path / "schema"), max_anomalies=0)
    assert json.loads((tmp_path / "validation" / contract.VALIDATION_SUMMARY_FILE).read_text())["passed"] is True
    assert (tmp_path / "html" / "statistics_view").is_file()
    assert (tmp_path / "schema" / "schema.pbtxt").exists()


def test_cli_help_uses_the_component_docstring_words(capsys):
    from components.validate.component import validate as component

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    doc = {line.split(":", 1)[0].strip(): " ".join(line.split(":", 1)[1].split())
           for line in component.python_func.__doc__.split("Args:")[1].strip().splitlines()}
    for arg in ("downloads", "validation", "schema_uri", "max_anomalies"):
        assert doc[arg] in help_text, arg
    assert doc["manifest"].rstrip(".") in help_text


def test_a_download_with_no_image_is_refused_naming_the_cause(tmp_path):
    manifest, ledger = make_tables(n=20, fail_every=1)  # every URL failed
    with pytest.raises(logic.ValidateError, match=r"none of its 20 URLs gave an image \(http_404 20\), so there is "
                                                  r"nothing to validate; fix what download reports and rerun it"):
        validate(tmp_path, manifest, ledger, schema_uri="")
