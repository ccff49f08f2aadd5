"""The validate CLI as a container runs it (a subprocess), with the schema kept on gs:// (a Cloud Storage emulator on 127.0.0.1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.common import storage
from components.common.validation import VALIDATION_SUMMARY_FILE
from components.validate import logic

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from gcs_emulator import gcs_emulator  # noqa: E402
from test_validate import make_tables, write_inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUCKET = "au-data"


def cli(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "components.validate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_missing_ledger_is_one_message_and_exit_2(tmp_path):
    manifest, ledger = make_tables(n=20)
    m, _ = write_inputs(tmp_path, manifest, ledger)
    r = cli("--manifest", m, "--downloads", str(tmp_path / "not-downloaded"), "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"validate: downloads: {tmp_path / 'not-downloaded' / 'ledger.parquet'} does not exist" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_schema_kept_on_gcs_then_a_second_run_catches_a_new_format(tmp_path):
    manifest, ledger = make_tables(n=100)
    m, d = write_inputs(tmp_path / "first", manifest, ledger)
    schema_uri = f"gs://{BUCKET}/schemas/emotionet"
    with gcs_emulator(BUCKET):
        r = cli("--manifest", f"{m}/manifest.parquet", "--downloads", d, "--output", str(tmp_path / "out1"),
                "--schema", schema_uri)
        assert r.returncode == 0, r.stderr
        assert "anomalies: 0 (at most 0 allowed)" in r.stdout
        assert set(storage.list_files(schema_uri)) == {f"{schema_uri}/schema.pbtxt", f"{schema_uri}/schema.statistics.pb"}

        ledger.loc[ledger["status"] == "ok", "format"] = "webp"
        m, d = write_inputs(tmp_path / "second", manifest, ledger)
        with pytest.raises(logic.AnomaliesFound, match="format: Unexpected string values"):
            logic.run(manifest_dir=m, downloads_dir=d, output_dir=str(tmp_path / "out2"), schema_uri=schema_uri)
    summary = json.loads((tmp_path / "out2" / VALIDATION_SUMMARY_FILE).read_text())
    assert summary["schema"]["inferred"] is False
    assert summary["previous_statistics"] == f"{schema_uri}/schema.statistics.pb"
    # The share of jpg fell from all to none: a new format, not a drift, is what is reported.
    assert [a["feature"] for a in summary["anomalies"]] == ["format"]
