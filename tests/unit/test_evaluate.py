"""Tests of the evaluate step: the measures against scikit-learn, threshold tuning, the blessing, the outputs."""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from components.common.metric_tables import format_table
from components.evaluate import logic
from components.evaluate.blessing import judge
from components.evaluate.kfp_logging import MAX_CURVE_POINTS
from components.evaluate.metrics import compute_metrics, regression_metrics, tune_thresholds
from components.evaluate.scoring import EvaluateError
from components.push import logic as push_logic

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path


def _random_labels(seed: int, n: int = 300, k: int = 6):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(n, k)) < rng.uniform(0.1, 0.6, size=k)).astype(int)
    # Scores that carry signal, rounded so that ties occur (AUC must average tied ranks).
    s = np.clip(0.35 * y + rng.uniform(size=(n, k)) * 0.7, 0, 1).round(2)
    y = np.where(rng.uniform(size=(n, k)) < 0.2, 999, y)
    y[:, -1] = np.where(y[:, -1] == 999, 999, 0)  # one label with a single class: AUC undefined
    y[:5, :] = 999  # examples without a known label count in no average
    return y, s


def _sk_binary(y, pred):
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return p, r, f, tn, fp, fn, tp


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per_label_threshold", [False, True])
def test_compute_metrics_matches_sklearn(seed, per_label_threshold):
    y, s = _random_labels(seed)
    k = y.shape[1]
    thr = np.linspace(0.3, 0.7, k) if per_label_threshold else 0.5
    m = compute_metrics(y, s, thr)
    thr_k = np.broadcast_to(thr, (k,))
    known = y != 999
    pred = s >= thr_k[None, :]

    sk_per = []
    for j in range(k):
        yj, pj, sj = y[known[:, j], j], pred[known[:, j], j], s[known[:, j], j]
        p, r, f, tn, fp, fn, tp = _sk_binary(yj, pj)
        d = m["per_label"][j]
        assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (tp, fp, tn, fn)
        assert d["precision"] == pytest.approx(p) and d["recall"] == pytest.approx(r) and d["f1"] == pytest.approx(f)
        auc = roc_auc_score(yj, sj) if len(set(yj)) == 2 else float("nan")
        if math.isnan(auc):
            assert math.isnan(d["auc"])
        else:
            assert d["auc"] == pytest.approx(auc)
        assert d["threshold"] == pytest.approx(thr_k[j])
        sk_per.append((p, r, f, auc))
    assert math.isnan(m["per_label"][-1]["auc"])  # the one-class label

    yk, pk, sk = y[known], pred[known], s[known]
    p, r, f, tn, fp, fn, tp = _sk_binary(yk, pk)
    assert (m["micro"]["tp"], m["micro"]["fp"], m["micro"]["tn"], m["micro"]["fn"]) == (tp, fp, tn, fn)
    assert m["micro"]["precision"] == pytest.approx(p)
    assert m["micro"]["recall"] == pytest.approx(r)
    assert m["micro"]["f1"] == pytest.approx(f)
    assert m["micro"]["auc"] == pytest.approx(roc_auc_score(yk, sk))

    sk_per = np.array(sk_per)
    assert m["macro"]["precision"] == pytest.approx(sk_per[:, 0].mean())
    assert m["macro"]["recall"] == pytest.approx(sk_per[:, 1].mean())
    assert m["macro"]["f1"] == pytest.approx(sk_per[:, 2].mean())
    assert m["macro"]["auc"] == pytest.approx(np.nanmean(sk_per[:, 3]))
    assert m["macro"]["tp"] == pytest.approx(np.mean([d["tp"] for d in m["per_label"]]))

    assert m["accuracy"] == pytest.approx(accuracy_score(yk, pk))
    shares, exact = [], []
    for i in range(len(y)):
        if known[i].any():
            right = [(y[i, j] == 1) == pred[i, j] for j in range(k) if known[i, j]]
            shares.append(sum(right) / len(right))
            exact.append(all(right))
    assert m["partial_accuracy"] == pytest.approx(np.mean(shares))
    assert m["exact_match"] == pytest.approx(np.mean(exact))
    assert m["examples_with_labels"] == len(shares) == len(y) - 5


def test_compute_metrics_unknown_only_label_and_bad_input():
    y = np.array([[1, 999], [0, 999], [1, 999]])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3]])
    m = compute_metrics(y, s)
    unknown = m["per_label"][1]
    assert (unknown["tp"], unknown["fp"], unknown["tn"], unknown["fn"], unknown["unknown"]) == (0, 0, 0, 0, 3)
    assert math.isnan(unknown["auc"]) and unknown["f1"] == 0.0
    assert m["accuracy"] == pytest.approx(2 / 3)  # the 999 column counts nowhere
    with pytest.raises(ValueError, match="0, 1 or 999"):
        compute_metrics(np.array([[2]]), np.array([[0.5]]))
    with pytest.raises(ValueError, match="must both be"):
        compute_metrics(y, s[:, :1])
    with pytest.raises(ValueError, match="threshold"):
        compute_metrics(y, s, threshold=[0.5, 0.5, 0.5])


def test_tuned_thresholds_are_f1_optimal_on_the_data_they_are_tuned_on():
    y, s = _random_labels(3)
    tuned = tune_thresholds(y, s)
    m = compute_metrics(y, s, tuned)
    for j in range(y.shape[1] - 1):
        known = y[:, j] != 999
        best = max(
            precision_recall_fscore_support(y[known, j], s[known, j] >= t, average="binary", zero_division=0)[2]
            for t in np.unique(s[known, j])
        )
        assert m["per_label"][j]["f1"] == pytest.approx(best)
        assert m["per_label"][j]["f1"] >= compute_metrics(y, s, 0.5)["per_label"][j]["f1"] - 1e-12
    assert tuned[-1] == 0.5  # no known positive: the default stays


def test_regression_metrics():
    t = np.array([0.1, -0.5, 0.3, 0.9])
    perfect = regression_metrics(t, t)
    assert perfect["mse"] == 0 and perfect["ccc"] == pytest.approx(1.0)
    p = t * 0.5 + 0.1
    r = regression_metrics(t, p)
    assert r["mse"] == pytest.approx(np.mean((t - p) ** 2))
    assert r["rmse"] == pytest.approx(math.sqrt(r["mse"]))
    cov = np.mean((t - t.mean()) * (p - p.mean()))
    assert r["ccc"] == pytest.approx(2 * cov / (t.var() + p.var() + (t.mean() - p.mean()) ** 2))


def test_judge_thresholds_tolerance_and_first_model():
    good = {"macro_f1": 0.80, "macro_auc": 0.90}
    first = judge(good, None, "au", 0.5, 0.7, 0.01)
    assert first["blessed"] and any("thresholds alone" in r for r in first["reasons"])
    low = judge({"macro_f1": 0.40, "macro_auc": 0.90}, None, "au", 0.5, 0.7, 0.01)
    assert not low["blessed"] and any(r.startswith("fail: macro F1 0.4000 < minimum 0.5") for r in low["reasons"])
    within = judge({"macro_f1": 0.795, "macro_auc": 0.895}, good, "au", 0.5, 0.7, 0.01)
    assert within["blessed"]
    worse = judge({"macro_f1": 0.75, "macro_auc": 0.90}, good, "au", 0.5, 0.7, 0.01)
    assert not worse["blessed"]
    assert any("fail: macro F1 0.7500 vs the live model's 0.8000: worse" in r for r in worse["reasons"])
    undefined = judge({"macro_f1": 0.8, "macro_auc": float("nan")}, None, "au", 0.5, 0.7, 0.01)
    assert not undefined["blessed"] and any("undefined" in r for r in undefined["reasons"])
    va = judge({"mean_ccc": 0.5, "mean_mse": 0.1}, {"mean_ccc": 0.7, "mean_mse": 0.1}, "va", 0.5, 0.7, 0.01)
    assert not va["blessed"]


# ---- the step, on tiny SavedModels -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return {
        "root": root,
        "examples": tiny.make_examples(str(root / "examples")),
        "good": tiny.make_model(str(root / "good"), tiny.GOOD),
        "poor": tiny.make_model(str(root / "poor"), tiny.POOR),
    }


def _evaluate(world, model, out, registry, **kw):
    args = dict(min_macro_f1=0.3, min_macro_auc=0.6, tolerance=0.01)
    args.update(kw)
    return logic.run(world["examples"], world[model], str(out), registry=registry, model_name="au", **args)


def _push_live(world, model, evaluation_dir, registry, version):
    return push_logic.run(world[model], str(evaluation_dir), None, destination=registry, model_name="au",
                          version=version)


def test_blessing_against_a_worse_and_a_better_live_model(world, tmp_path):
    registry = str(tmp_path / "registry")
    first = _evaluate(world, "poor", tmp_path / "e1", registry)
    assert first["blessing"]["blessed"] and first["blessing"]["baseline"] is None
    assert any("first model" in r for r in first["blessing"]["reasons"])

    # The live model is the poor one: the good candidate is blessed, compared on the same test split.
    _push_live(world, "poor", tmp_path / "e1", registry, "20260101T000000Z-poor")
    better = _evaluate(world, "good", tmp_path / "e2", registry)
    b = better["blessing"]
    assert b["blessed"], b["reasons"]
    assert b["baseline"]["version"] == "20260101T000000Z-poor"
    assert b["baseline"]["macro_f1"] == pytest.approx(first["metrics"]["at_default"]["macro"]["f1"])
    assert b["candidate"]["macro_f1"] > b["baseline"]["macro_f1"] + 0.1
    assert any(r.startswith("pass: macro F1") and "live model" in r for r in b["reasons"])

    # The live model is now the good one: the poor candidate clears the thresholds but is worse.
    _push_live(world, "good", tmp_path / "e2", registry, "20260102T000000Z-good")
    worse = _evaluate(world, "poor", tmp_path / "e3", registry)
    w = worse["blessing"]
    assert not w["blessed"]
    assert w["baseline"]["version"] == "20260102T000000Z-good"
    assert any(r.startswith("fail: macro F1") and "worse by more than the tolerance 0.01" in r for r in w["reasons"])
    assert all(c["passed"] for c in w["checks"] if c["check"].startswith("min_"))
    written = json.loads((tmp_path / "e3" / "blessing.json").read_text())
    assert written["blessed"] is False and written["reasons"] == w["reasons"]

    # A tolerance as wide as the gap lets the whole split through, not its slices, which fell as far: the reason
    # names the slice and its figures against the live model's.
    lenient = _evaluate(world, "poor", tmp_path / "e4", registry, tolerance=0.9)
    ls = lenient["blessing"]
    assert not ls["blessed"]
    assert all(c["passed"] for c in ls["checks"] if not c["check"].startswith("live_slice"))
    fell = next(r for r in ls["reasons"] if "slice tolerance 0.1" in r)
    assert fell.startswith("fail:") and "grey = colour (80 examples): macro F1" in fell and "vs the live model's" in fell
    check = next(c for c in ls["checks"] if c["check"] == "live_slice_macro_f1")
    assert check["passed"] is False and check["value"] < check["limit"]
    assert ls["criteria"]["slice_tolerance"] == 0.1
    # A slice tolerance as wide lets it through.
    lenient = _evaluate(world, "poor", tmp_path / "e5", registry, tolerance=0.9, slice_tolerance=0.9)
    assert lenient["blessing"]["blessed"], lenient["blessing"]["reasons"]


def test_live_model_with_other_aus_is_judged_on_thresholds(world, tmp_path):
    registry = str(tmp_path / "registry")
    two = tiny.make_model(str(tmp_path / "two"), (np.eye(3)[:, :2] * 12.0, np.full(2, -6.0)), au_ids=[1, 2])
    push_logic.run(two, tiny.make_evaluation(str(tmp_path / "ev"), True), None, destination=registry,
                   model_name="au", version="20260101T000000Z-two")
    out = _evaluate(world, "good", tmp_path / "e", registry)
    assert out["blessing"]["blessed"] and out["blessing"]["baseline"] is None
    assert any("detects AUs [1, 2]" in r and "thresholds alone" in r for r in out["blessing"]["reasons"])
    # A model of a subset of the examples' AUs is scored on those columns only.
    subset = _evaluate({**world, "two": two}, "two", tmp_path / "e2", "")["metrics"]
    assert [d["au"] for d in subset["at_default"]["per_label"]] == [1, 2]


def test_component_writes_metrics_report_plots_and_kfp_artifacts(world, tmp_path):
    from kfp import dsl

    from components.evaluate.component import evaluate

    evaluation = dsl.Artifact(uri=str(tmp_path / "evaluation"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    cm = dsl.ClassificationMetrics(uri=str(tmp_path / "cm"))
    report = dsl.Markdown(uri=str(tmp_path / "report" / "report.md"))
    # ingest's manifest comes in as an input artifact (no path convert recorded): its URLs give the URL-host slices.
    import pandas as pd

    (tmp_path / "manifest").mkdir()
    keys = [f"test{i:04d}" for i in range(80)]
    pd.DataFrame({"key": keys, "url": [f"http://{'ab'[i % 2]}.com/{k}.jpg" for i, k in enumerate(keys)]}).to_parquet(
        tmp_path / "manifest" / "manifest.parquet", index=False)
    evaluate.python_func(
        examples=dsl.Dataset(uri=world["examples"]), model=dsl.Model(uri=world["good"]),
        manifest=dsl.Dataset(uri=str(tmp_path / "manifest")), evaluation=evaluation,
        metrics=metrics, classification_metrics=cm, report=report, registry=str(tmp_path / "none"),
        model_name="au", min_macro_f1=0.5, min_macro_auc=0.7, tolerance=0.01, min_slice_size=30,
        min_slice_macro_f1=0.0, slice_tolerance=0.1, slice_by="",
    )
    out = tmp_path / "evaluation"
    for name in ("metrics.json", "blessing.json", "report.md", "roc.png", "pr.png", "slices.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert m["examples"] == 80 and m["au_ids"] == tiny.AU_IDS
    assert [d["au"] for d in m["at_default"]["per_label"]] == tiny.AU_IDS
    assert m["at_default"]["per_label"][0]["name"] == "inner brow raiser"
    assert set(m["thresholds"]["tuned"]) == {"1", "2", "12"} and m["thresholds"]["validation_examples"] == 60
    assert [d["threshold"] for d in m["at_tuned"]["per_label"]] == [m["thresholds"]["tuned"][str(a)] for a in tiny.AU_IDS]
    for key in ("accuracy", "partial_accuracy", "exact_match", "macro_f1", "micro_f1", "macro_auc", "tuned_macro_f1"):
        assert 0 <= metrics.metadata[key] <= 1, key
    assert metrics.metadata["macro_f1"] == pytest.approx(m["at_default"]["macro"]["f1"])
    # The slices in the KFP UI: the worst one's macro F1 among the metrics, the table in the Markdown report.
    assert metrics.metadata["worst_slice_macro_f1"] == pytest.approx(m["slices"]["worst"]["macro_f1"])
    assert metrics.metadata["slices_measured"] == len(m["slices"]["measured"]) > 0
    assert {s["value"] for s in m["slices"]["measured"] if s["feature"] == "url_host"} == {"a.com", "b.com"}
    assert "## Slices (at least 30 examples to be measured)" in (tmp_path / "report" / "report.md").read_text()
    rows = cm.metadata["confusionMatrix"]["rows"]
    micro = m["at_default"]["micro"]
    assert rows == [{"row": [micro["tn"], micro["fp"]]}, {"row": [micro["fn"], micro["tp"]]}]
    assert 2 < len(cm.metadata["confidenceMetrics"]) <= MAX_CURVE_POINTS
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**Blessed**" in text and "| AU12 | lip corner puller |" in text
    table = format_table(m)
    assert all(f"AU{a}" in table for a in tiny.AU_IDS) and "macro" in table and "partial accuracy" in table


def test_valence_arousal_model(tmp_path):
    examples = tiny.make_examples(str(tmp_path / "ex"), sizes={"test": 40}, with_va=True)
    # Valence follows red, arousal green, as make_examples labels them.
    model = tiny.make_model(str(tmp_path / "va"), (np.eye(3)[:, :2] * 2.0, np.full(2, -1.0)), task="va")
    out = logic.run(examples, model, str(tmp_path / "out"), registry="", min_macro_f1=0.5, min_macro_auc=0.7,
                    tolerance=0.01)
    m = out["metrics"]
    assert m["task"] == "va" and m["valence"]["examples"] == 40
    assert m["valence"]["ccc"] > 0.8 and m["arousal"]["rmse"] == pytest.approx(math.sqrt(m["arousal"]["mse"]))
    assert out["blessing"]["blessed"]
    assert (tmp_path / "out" / "va.png").exists()
    assert "valence" in format_table(m)


def test_cli_errors_are_one_message_and_exit_2(world, tmp_path, capsys):
    from components.evaluate.__main__ import main

    assert main(["--examples", str(tmp_path / "nothing"), "--model", world["good"], "--output", str(tmp_path / "o")]) == 2
    assert "examples_summary.json is missing" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert main(["--examples", world["examples"], "--model", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    assert "model_config.json is missing" in capsys.readouterr().err
    assert main(["--examples", world["examples"], "--model", world["good"], "--output", str(tmp_path / "o"),
                 "--registry", "", "--min-macro-f1", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "NOT BLESSED" in out and "fail: macro F1" in out and "AU12" in out


def test_a_test_split_with_no_example_is_refused_with_what_to_change(world, tmp_path):
    examples = tiny.make_examples(str(tmp_path / "ex"), sizes={"train": 4, "validation": 4})
    with open(os.path.join(examples, "examples_summary.json")) as f:
        summary = json.load(f)
    summary["parameters"] = {"test_fraction": 0.0}
    with open(os.path.join(examples, "examples_summary.json"), "w") as f:
        json.dump(summary, f)
    with pytest.raises(EvaluateError) as e:
        logic.run(examples, world["good"], str(tmp_path / "out"), registry="")
    assert str(e.value) == (
        f"the test split of {examples} has no example (no test-*.tfrecord shard holds one): there is nothing to "
        "measure the model on; convert with a larger --test-fraction (it is 0.0), or from more images")
    # A filtered folder names the convert folder it came from, which has the fraction.
    filtered = tiny.make_examples(str(tmp_path / "filtered"), sizes={"train": 4, "test": 0})
    with open(os.path.join(filtered, "examples_summary.json")) as f:
        summary = json.load(f)
    summary["parameters"] = {"source": examples}
    with open(os.path.join(filtered, "examples_summary.json"), "w") as f:
        json.dump(summary, f)
    with pytest.raises(EvaluateError, match=r"the test split of .*filtered has no example .* larger "
                                                  r"--test-fraction \(it is 0.0\)"):
        logic.run(filtered, world["good"], str(tmp_path / "out"), registry="")
    assert not os.path.exists(tmp_path / "out" / "blessing.json")


def test_a_test_split_whose_every_label_is_999_is_refused(world, tmp_path):
    examples = tiny.make_examples(str(tmp_path / "ex"), sizes={"validation": 5, "test": 6}, unknown=1.0)
    with pytest.raises(EvaluateError) as e:
        logic.run(examples, world["good"], str(tmp_path / "out"), registry="")
    assert str(e.value) == (
        f"every label of the test split of {examples} is 999 (not annotated): none of its 6 examples is annotated "
        "for any of AU1, AU2, AU12, so no measure can be computed; keep AUs that the sheet annotates (--aus), or "
        "use a sheet whose images are annotated for these AUs")


def test_progress_lines_count_the_batches_of_each_split(world, tmp_path, capsys):
    logic.run(world["examples"], world["good"], str(tmp_path / "out"), registry="", batch_size=32, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("progress:")]
    assert lines[0] == "progress: evaluate 0/3 test batches" and lines[-1] == "progress: evaluate 2/2 validation batches"
    assert "progress: evaluate 3/3 test batches" in lines
