"""The publish step: a step's output copied to a URI chosen in advance (a cluster sweep's examples), its record last."""
import json

import pytest

from components.common.registry import PUBLISHED_FILE
from components.publish import logic


def test_every_file_is_copied_and_the_record_written_last(tmp_path, monkeypatch):
    src = tmp_path / "filtered"
    (src / "sub").mkdir(parents=True)
    (src / "train-00000-of-00001.tfrecord").write_bytes(b"abc")
    (src / "sub" / "examples_summary.json").write_text("{}")
    written = []
    real = logic.storage.write_text
    monkeypatch.setattr(logic.storage, "write_text", lambda uri, text: (written.append(uri), real(uri, text)))
    record = logic.run(str(src), str(tmp_path / "shared" / "examples"))
    dst = tmp_path / "shared" / "examples"
    assert (dst / "train-00000-of-00001.tfrecord").read_bytes() == b"abc" and (dst / "sub" / "examples_summary.json").exists()
    assert record == {"source": str(src), "destination": str(dst), "files": 2}
    assert json.loads((dst / PUBLISHED_FILE).read_text()) == record and written == [str(dst / PUBLISHED_FILE)]


def test_nothing_to_publish_is_refused_with_the_folder_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(logic.PublishError, match=f"{tmp_path / 'empty'} has no file to publish"):
        logic.run(str(tmp_path / "empty"), str(tmp_path / "out"))
    # The CLI's exit 2 for the same: tests/integration/test_publish_cli.py.
