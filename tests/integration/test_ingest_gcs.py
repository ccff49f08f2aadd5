"""ingest reads a sheet from gs:// (through the loopback Cloud Storage emulator) exactly as from a local path."""
import csv
import io
import json
import os

import pandas as pd
import pytest

from components.common import labels, storage
from components.common.manifest import INGEST_SUMMARY_FILE, MANIFEST_FILE, REJECTS_FILE
from components.ingest import logic

from gcs_emulator import gcs_emulator


def test_ingest_from_gcs(tmp_path):
    rows = [["http://e.org/a,b.jpg"] + [0] * 60, ["http://e.org/c.jpg"] + [1] * 60, ["ftp://e.org/d.jpg"] + [0] * 60]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    with gcs_emulator("sheets"):
        storage.write_text("gs://sheets/emotionet/sheet.csv", buf.getvalue())
        summary = logic.run("gs://sheets/emotionet/sheet.csv", str(tmp_path / "out"))
        with pytest.raises(logic.SheetError, match="gs://sheets/emotionet/missing.csv"):
            logic.run("gs://sheets/emotionet/missing.csv", str(tmp_path / "out2"))
    assert summary["source"] == "gs://sheets/emotionet/sheet.csv"
    assert summary["kept"] == 2 and summary["rejected_by_reason"] == {logic.BAD_SCHEME: 1}
    manifest = pd.read_parquet(tmp_path / "out" / MANIFEST_FILE)
    assert manifest["url"].tolist() == ["http://e.org/a,b.jpg", "http://e.org/c.jpg"]
    assert manifest["key"].tolist() == [labels.image_key(u) for u in manifest["url"]]
    assert json.loads((tmp_path / "out" / INGEST_SUMMARY_FILE).read_text())["rows_read"] == 3
    assert os.path.exists(tmp_path / "out" / REJECTS_FILE)
