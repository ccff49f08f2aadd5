"""convert and filter writing to gs:// (a loopback Cloud Storage emulator), as they do on a cluster."""
import pytest

from components.common import examples, storage
from components.common.faces import FaceSettings
from components.convert import logic, sample
from components.filter import logic as filter_logic

pytestmark = pytest.mark.slow


@pytest.fixture
def gcs(monkeypatch):
    from apache_beam.internal.gcp import auth

    from gcs_emulator import gcs_emulator

    # No credentials here and the emulator wants none; Beam would retry the lookup for ~20 s.
    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    with gcs_emulator("bucket") as url:
        yield url


def test_convert_then_filter_on_gcs(tmp_path, gcs):
    images = sample.demo_images(24, size=40, seed=9, png_share=0.5)
    manifest_dir, downloads_dir, keys = sample.write_dataset(str(tmp_path), images, seed=9)
    summary = logic.run(manifest_dir, downloads_dir, "gs://bucket/examples", beam_args="--convert_processes=1",
                        faces=FaceSettings(mode="whole"))
    assert sum(s["examples"] for s in summary["splits"].values()) == 24
    names = sorted(f.rsplit("/", 1)[1] for f in storage.list_files("gs://bucket/examples"))
    expected = sorted(examples.shard_name(s, 0, 1) for s, v in summary["splits"].items() if v["examples"])
    assert names == sorted(expected + [examples.EXAMPLES_SUMMARY_FILE])  # no staging left behind
    assert examples.read_summary("gs://bucket/examples") == summary

    filtered = filter_logic.run("gs://bucket/examples", "gs://bucket/filtered", aus="1,2", policy="mask")
    assert filtered["au_ids"] == [1, 2]
    assert {s: v["examples"] for s, v in filtered["splits"].items()} == {
        s: v["examples"] for s, v in summary["splits"].items()}
    assert examples.read_summary("gs://bucket/filtered")["policy"] == "mask"
