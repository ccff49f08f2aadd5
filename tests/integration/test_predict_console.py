"""predict run as a user runs it (`python -m components.predict FOLDER`): every face of a real photograph and a
group picture, a video, a bad file named and counted, and a console holding results, not library noise."""
import os
import re
import subprocess
import sys

import pandas as pd

from components.common.faces import FaceSettings

import face_media as media  # tests/conftest.py puts tests/data/evaluate on the path
import tiny_model as tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What TensorFlow, TFLite, MediaPipe, absl, protobuf and google-api-core print on their own when not quieted.
NOISE = re.compile(r"WARNING|INFO|FutureWarning|DeprecationWarning|UserWarning|cuda|cuDNN|absl|XNNPACK|oneDNN"
                   r"|TensorFlow|Traceback|^[IWE]0000|moov atom")


def test_a_folder_of_photos_and_a_video_shows_results_and_no_library_noise(tmp_path):
    model = tiny.make_model(str(tmp_path / "model"), tiny.GOOD, faces=FaceSettings().to_dict())
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "hopper.jpg").write_bytes(media.photo_bytes())
    group, _ = media.group()
    (folder / "group.jpg").write_bytes(group)
    (folder / "notes.txt").write_text("not an image\n")
    media.face_video(str(folder / "clip.mp4"), frames=6, fps=10.0, faces=1)
    media.truncated_video(str(folder / "clip.mp4"), str(folder / "cut.mp4"))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel")}

    done = subprocess.run([sys.executable, "-m", "components.predict", "--model", model, str(folder),
                           "--output", str(tmp_path / "out" / "rows.csv")],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 1, done.stderr[-3000:]  # two bad files of five
    out = done.stdout
    assert "group.jpg  1200x600: 3 faces" in out and "hopper.jpg  512x600: 1 face" in out
    assert "clip.mp4  480x320, 10 fps: 6 frames, 6 sampled, a face in 6, 1 face id(s)" in out
    assert f"not scored: {folder / 'notes.txt'} is not an image" in out
    assert f"not scored: {folder / 'cut.mp4'} cannot be read as a video" in out
    assert out.strip().splitlines()[-2].startswith("predict: 3 images (2 with faces scored, 4 faces), 2 videos")
    assert "not_image 1" in out and "not_video 1" in out
    noise = [line for line in (out + done.stderr).splitlines() if NOISE.search(line)]
    assert not noise, noise
    assert all(line.startswith("progress: predict ") for line in done.stderr.splitlines()), done.stderr

    rows = pd.read_csv(tmp_path / "out" / "rows.csv")
    assert rows["file"].map(os.path.basename).value_counts().to_dict() == {
        "clip.mp4": 6, "group.jpg": 3, "hopper.jpg": 1, "notes.txt": 1}
    assert {"frame", "timestamp", "face_id", "AU01_r", "AU01_c", "AU12_r", "AU12_c"} <= set(rows.columns)
    # two videos given: each plot is named after its video (clip.mp4's AUs over time; cut.mp4 has none)
    assert os.path.getsize(tmp_path / "out" / "rows.clip.png") > 1000
    assert not os.path.exists(tmp_path / "out" / "rows.cut.png")
