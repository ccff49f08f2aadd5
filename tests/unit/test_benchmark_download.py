"""benchmarks/download.py at tiny settings (no img2dataset): the table it prints, the photo-like JPEG it serves, and
its argument checks."""
import importlib.util
import io
import os

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "download.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("download_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_served_jpeg_is_photo_like_at_the_asked_size():
    bench = _load_script()
    small, large = bench._jpeg(64, 48), bench._jpeg(640, 480)
    with Image.open(io.BytesIO(large)) as im:
        assert (im.format, im.size) == ("JPEG", (640, 480))
    assert len(large) > 60 * len(small) > 0  # noise: it compresses like a photo, not like a flat colour


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "640"], "expected WIDTHxHEIGHT"),
    (["--image-size", "4x4"], "at least 8x8"),
    (["--connect-latency", "0,-1"], "one or more seconds >= 0"),
    (["--img2dataset-modes", "raw,fast"], "expected some of raw, validate"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    bench = _load_script()
    with pytest.raises(SystemExit) as e:
        bench.main(argv + ["--no-img2dataset"])
    assert e.value.code == 2 and message in capsys.readouterr().err
