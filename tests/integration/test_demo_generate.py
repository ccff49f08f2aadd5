"""The demo generator across processes: the same bytes whatever the process split (portrait and wild scenes), a large
set drawn on every core that a simple classifier learns from, and `python -m pipeline.demo generate` as a program."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import defaults
from pipeline.demo import faces, generate, generate_demo, load_labels

ELEVEN = faces.FACE_AU_IDS


def _files(d) -> dict:
    root = os.path.join(d, generate.IMAGES_DIR)
    return {n: open(os.path.join(root, n), "rb").read() for n in sorted(os.listdir(root))}


def test_same_seed_same_bytes_whatever_the_process_split(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "PARALLEL_FROM", 0)
    a = generate_demo(str(tmp_path / "a"), size=30, seed=5, workers=1)
    b = generate_demo(str(tmp_path / "b"), size=30, seed=5, workers=2)
    c = generate_demo(str(tmp_path / "c"), size=30, seed=6, workers=1)
    assert not a["cached"] and not b["cached"]
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(fa) == 30 and fa == fb
    pd.testing.assert_frame_equal(load_labels(str(tmp_path / "a")), load_labels(str(tmp_path / "b")))
    # another seed: other faces, other labels
    assert sum(fa[n] != fc.get(n) for n in fa) >= 28
    assert not load_labels(str(tmp_path / "a"))[[f"AU{a}" for a in ELEVEN]].equals(
        load_labels(str(tmp_path / "c"))[[f"AU{a}" for a in ELEVEN]])


def test_wild_scenes_same_seed_same_bytes_whatever_the_process_split(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "PARALLEL_FROM", 0)
    a = generate_demo(str(tmp_path / "a"), size=24, seed=8, workers=1)
    b = generate_demo(str(tmp_path / "b"), size=24, seed=8, workers=2)
    assert a["scene"] == "wild" and not a["cached"] and not b["cached"]
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(fa) == 24 and fa == fb
    pd.testing.assert_frame_equal(load_labels(str(tmp_path / "a")), load_labels(str(tmp_path / "b")))


def _hog(path: str, side: int = 96, cell: int = 8, bins: int = 9) -> np.ndarray:
    """Histograms of gradient orientation per cell: a plain, pose-tolerant description of a face."""
    g = np.asarray(Image.open(path).convert("L").resize((side, side), Image.BILINEAR), np.float32) / 255
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    b = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * bins).astype(int), bins - 1)
    ci = np.arange(side) // cell
    h = np.zeros((side // cell, side // cell, bins), np.float32)
    np.add.at(h, (ci[:, None].repeat(side, 1), ci[None, :].repeat(side, 0), b), mag)
    return np.sqrt(h).ravel()


@pytest.mark.slow
def test_a_simple_classifier_recovers_every_au_from_the_images(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    out = str(tmp_path / "set")
    generate_demo(out, size=800, seed=4, scene="portrait")  # HOG of the whole image: the face must fill it
    df = load_labels(out)
    x = np.stack([_hog(os.path.join(out, "images", n)) for n in df["name"]])
    split = 600
    scaler = StandardScaler().fit(x[:split])
    x_train, x_test = scaler.transform(x[:split]), scaler.transform(x[split:])
    auc = {}
    for au in ELEVEN:
        y = df[f"AU{au}"].to_numpy()
        clf = LogisticRegression(C=0.003, max_iter=500).fit(x_train, y[:split])
        auc[au] = roc_auc_score(y[split:], clf.predict_proba(x_test)[:, 1])
    weak = {au: round(a, 3) for au, a in auc.items() if a < 0.7}
    assert not weak, f"held-out ROC AUC below 0.7 (chance is 0.5): {weak}; all: {auc}"


def test_generate_cli_writes_a_set(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(defaults.REPO_ROOT))
    out = tmp_path / "cli"
    ok = subprocess.run([sys.executable, "-m", "pipeline.demo", "generate", "--out", str(out), "--size", "8",
                         "--seed", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "8 faces" in ok.stdout and len(os.listdir(out / "images")) == 8
