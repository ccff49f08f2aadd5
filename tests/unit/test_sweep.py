"""Tests of pipeline/sweep/ without running a step: the grid and its errors, the parts of the DAG, the comparison,
the choice of the best run, the push of the best (or all) and sweep-pick on candidate registries in local folders."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from components.common import registry
from components.evaluate.metrics import au_metrics
from pipeline import defaults
from pipeline.dag import STEPS
from pipeline.params import pipeline_parameters
from pipeline.sweep import SweepError, local
from pipeline.sweep.cli import given_flags
from pipeline.sweep.cluster import pick
from pipeline.sweep.compare import (LOSS_CURVES, SWEEP_JSON, SWEEP_MD, choose_best, comparison_table, format_console,
                                    load_point, write_comparison)
from pipeline.sweep.dag import DATA_STEPS, POINT_STEPS, sub_pipeline
from pipeline.sweep.grid import Point, grid_points, parse_grid, point_parameters, sweepable_parameters
from pipeline.sweep.push import push_points

AU_IDS = [1, 2, 4]


# --- the grid -----------------------------------------------------------------------------------


def test_grid_values_are_typed_as_the_dags_parameters_and_every_combination_is_a_point():
    grid = parse_grid(["batch-size=32,64", "learning_rate=0.1,0.01", "augment=false,true", "backbone=compactcnn"])
    assert grid == {"batch_size": [32, 64], "learning_rate": [0.1, 0.01], "augment": [False, True],
                    "backbone": ["compactcnn"]}
    assert type(grid["batch_size"][0]) is int and type(grid["learning_rate"][0]) is float
    points = grid_points(grid)
    assert len(points) == 8 and len({p.name for p in points}) == 8
    assert points[0].values == {"batch_size": 32, "learning_rate": 0.1, "augment": False, "backbone": "compactcnn"}
    assert points[1].values["augment"] is True  # the last key varies fastest
    assert points[0].name == "01-batch_size=32-learning_rate=0.1-augment=False-backbone=compactcnn"
    assert points[0].label == "batch_size=32, learning_rate=0.1, augment=False, backbone=compactcnn"


def test_only_train_and_evaluate_parameters_may_vary():
    sweepable = sweepable_parameters()
    assert {"batch_size", "learning_rate", "epochs", "backbone", "optimizer", "min_macro_f1"} <= set(sweepable)
    data_and_push = {"source", "aus", "policy", "faces", "beam_args", "download_store", "registry", "model_name",
                     "force_push", "keep_versions"}
    assert not data_and_push & set(sweepable)


@pytest.mark.parametrize("texts, fixed, message", [
    (["policy=drop,mask"], {}, "policy cannot vary in a sweep: it is a parameter of filter-examples, a data step"),
    (["aus=1,2"], {}, "run one sweep per value (e.g. pipeline.py sweep --aus VALUE --grid ...)"),
    (["face_size=96,160"], {}, "it is a parameter of convert"),
    (["registry=a,b"], {}, "registry cannot vary in a sweep: it says where and how the sweep pushes"),
    (["colour=red,blue"], {}, "'colour' is not a pipeline parameter; those a sweep may vary: augment, backbone"),
    (["epochs=1,two"], {}, "--grid epochs: 'two' is not an int"),
    (["learning_rate=0.1,nan"], {}, "is not a finite number"),
    (["augment=yes,maybe"], {}, "'maybe' is not a boolean; use true or false"),
    (["epochs=1,1"], {}, "a value is repeated"),
    (["epochs=1,,2"], {}, "an empty value"),
    (["epochs"], {}, "expected NAME=V1,V2,..."),
    (["epochs=1", "epochs=2"], {}, "--grid epochs is given twice"),
    (["epochs=1,2"], {"epochs": 3}, "epochs is given both as --epochs and in --grid; keep one"),
    (["task=au,va"], {}, "task va is not supported"),
    ([], {}, "give at least one --grid NAME=V1,V2"),
])
def test_a_grid_that_cannot_run_is_refused_saying_what_to_change(texts, fixed, message):
    with pytest.raises(SweepError) as e:
        parse_grid(texts, fixed)
    assert message in str(e.value)


def test_a_grid_larger_than_max_points_is_refused():
    with pytest.raises(SweepError, match="the grid has 9 points, more than --max-points 8"):
        parse_grid(["epochs=1,2,3", "seed=1,2,3"], max_points=8)
    assert len(grid_points(parse_grid(["epochs=1,2,3", "seed=1,2,3"], max_points=9))) == 9


def test_each_point_gets_its_own_checkpoint_folder():
    point = grid_points({"epochs": [1, 2]})[1]
    assert point_parameters({"checkpoint_dir": "", "epochs": 5}, point) == {"checkpoint_dir": "", "epochs": 2}
    p = point_parameters({"checkpoint_dir": "gs://b/ckpt", "epochs": 5}, point)
    assert p["checkpoint_dir"] == f"gs://b/ckpt/{point.name}"  # two points in one folder would resume each other


# --- the parts of the DAG -----------------------------------------------------------------------


def _defaults() -> dict:
    return {name: default for name, _, default, _ in pipeline_parameters()}


def test_the_data_part_and_the_point_part_together_run_every_step_but_push_as_the_dag_wires_them():
    from pipeline.dag import au_pipeline

    params = _defaults()
    params.update(source="/data/sheet.xlsx", policy="drop", epochs=3, batch_size=64)
    data = sub_pipeline("d", DATA_STEPS, params).pipeline_spec.root.dag.tasks
    with pytest.raises(SweepError, match="evaluate needs manifest of ingest"):
        sub_pipeline("p", POINT_STEPS, params, {("filter-examples", "filtered"): "/runs/f"})
    point = sub_pipeline("p", POINT_STEPS, params,
                         {("filter-examples", "filtered"): "/runs/f", ("ingest", "manifest"): "/runs/m"})
    tasks = point.pipeline_spec.root.dag.tasks
    assert set(data) == set(DATA_STEPS)
    assert set(tasks) == {"importer", "importer-2", "train", "evaluate"}
    # push comes after the comparison, for the best run only; the run report is written beside each point's run
    assert set(STEPS) - set(DATA_STEPS) - set(POINT_STEPS) == {"push", "report"}
    # train and evaluate both read the imported filtered examples
    for step in ("train", "evaluate"):
        assert tasks[step].inputs.artifacts["examples"].task_output_artifact.producer_task == "importer"
    assert tasks["evaluate"].inputs.artifacts["model"].task_output_artifact.producer_task == "train"
    # evaluate reads ingest's manifest (its URL-host slices), imported too: no path another step recorded
    assert tasks["evaluate"].inputs.artifacts["manifest"].task_output_artifact.producer_task == "importer-2"
    assert data["convert"].inputs.artifacts["downloads"].task_output_artifact.producer_task == "download"
    assert "validate" in data["convert"].dependent_tasks  # converting waits for validation, as in the DAG
    # every input gets the value of the pipeline parameter the DAG feeds it
    full = au_pipeline.pipeline_spec.root.dag.tasks
    for part in (data, tasks):
        for name, task in part.items():
            if name.startswith("importer"):
                continue
            for arg, value in task.inputs.parameters.items():
                wired = full[name].inputs.parameters[arg].component_input_parameter
                constant = value.runtime_value.constant
                got = constant.WhichOneof("kind")
                assert getattr(constant, got) == params[wired], (name, arg)
    importer = point.pipeline_spec.deployment_spec["executors"]["exec-importer"]["importer"]
    assert importer["artifactUri"]["constant"] == "/runs/f"
    importer = point.pipeline_spec.deployment_spec["executors"]["exec-importer-2"]["importer"]
    assert importer["artifactUri"]["constant"] == "/runs/m"


# --- the comparison and the best run ------------------------------------------------------------


def _metrics(seed: int, quality: float) -> dict:
    """A real metrics.json (evaluate's own au_metrics) of scores that follow the labels by `quality`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (60, len(AU_IDS)))
    y[rng.random(y.shape) < 0.1] = 999
    scores = np.clip(quality * (y == 1) + (1 - quality) * rng.random(y.shape), 0, 1)
    data = {"y_true": y, "scores": scores}
    return json.loads(json.dumps(au_metrics(data, data, AU_IDS)))


def _entry(tmp_path: Path, name: str, values: dict, quality: float | None, blessed=True, losses=(0.9, 0.7, 0.6)):
    """A point's model and evaluation folders as train and evaluate write them (stand-in bytes for the model)."""
    point = Point(name, values)
    if quality is None:
        return load_point(point, "failed", None, None, "step train failed; its log: /x/train.log")
    model, evaluation = tmp_path / name / "model", tmp_path / name / "evaluation"
    (model / "saved_model").mkdir(parents=True)
    (model / "saved_model" / "saved_model.pb").write_bytes(name.encode())
    (model / "history.json").write_text(json.dumps({
        "epochs": list(range(1, len(losses) + 1)), "best_val_loss": min(losses) + 0.05, "best_epoch": len(losses),
        "metrics": {"loss": list(losses), "val_loss": [v + 0.05 for v in losses]}}))
    (model / "model_config.json").write_text(json.dumps({"task": "au", "au_ids": list(AU_IDS), "train_seconds": 12.5}))
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps(_metrics(len(name), quality)))
    (evaluation / "blessing.json").write_text(json.dumps({"blessed": blessed, "reasons": [
        "pass: thresholds" if blessed else "fail: macro F1 0.1000 < minimum 0.5"]}))
    return load_point(point, "succeeded", str(model), str(evaluation), seconds={"train": 30.0, "evaluate": 9.0})


def test_the_best_run_has_the_highest_macro_f1_then_auc_and_failed_runs_never_win(tmp_path):
    weak = _entry(tmp_path, "01-lr=0.1", {"learning_rate": 0.1}, 0.3)
    strong = _entry(tmp_path, "02-lr=0.01", {"learning_rate": 0.01}, 0.9)
    failed = _entry(tmp_path, "03-lr=0.001", {"learning_rate": 0.001}, None)
    assert strong["measures"]["f1"] > weak["measures"]["f1"]
    assert choose_best([weak, strong, failed]) is strong
    assert choose_best([failed]) is None
    # a tie on F1 goes to the higher AUC; a tie on both to the first in grid order
    a, b = dict(weak, measures=dict(weak["measures"])), dict(strong, measures=dict(weak["measures"]))
    b["measures"]["auc"] = a["measures"]["auc"] + 0.01
    assert choose_best([a, b]) is b
    b["measures"]["auc"] = a["measures"]["auc"]
    assert choose_best([a, b]) is a
    a["measures"]["f1"] = math.nan
    assert choose_best([a, b]) is b


def test_the_comparison_has_one_row_per_run_with_the_studys_measures_and_one_plot_of_every_loss(tmp_path):
    entries = [_entry(tmp_path, "01-lr=0.1", {"learning_rate": 0.1}, 0.3, losses=(0.9, 0.8)),
               _entry(tmp_path, "02-lr=0.01", {"learning_rate": 0.01}, 0.9),
               _entry(tmp_path, "03-lr=0.001", {"learning_rate": 0.001}, None)]
    record = {"grid": {"learning_rate": [0.1, 0.01, 0.001]}, "fixed": {"epochs": 3}, "best": "02-lr=0.01",
              "push_mode": "best", "points": entries, "pushed": [], "seconds": 100.0,
              "data": {"ok": True, "seconds": 40.0}, "error": "failed points: 03-lr=0.001"}
    head, rows = comparison_table(record, entries)
    for column in ("learning_rate", "accuracy", "partial acc", "P", "R", "F1", "AUC", "TP", "FP", "TN", "FN",
                   "epochs", "best val loss", "train s"):
        assert column in head
    row = dict(zip(head, rows[1]))
    m = entries[1]["measures"]
    assert row["run"] == "02-lr=0.01 (best)" and row["learning_rate"] == "0.01"
    assert row["F1"] == f"{m['f1']:.3f}" and row["AUC"] == f"{m['auc']:.3f}" and row["accuracy"] == f"{m['accuracy']:.3f}"
    assert row["TP"] == str(m["tp"]) and int(row["TP"]) + int(row["FN"]) > 0
    assert row["epochs"] == "3" and row["train s"] == "30.0"
    assert dict(zip(head, rows[2]))["status"] == "failed" and dict(zip(head, rows[2]))["F1"] == "-"

    paths = write_comparison(str(tmp_path / "sweep"), record, entries)
    md = Path(paths["markdown"]).read_text()
    assert md.count("| 0") >= 2 and "02-lr=0.01 (best)" in md and "03-lr=0.001 failed: step train failed" in md
    saved = json.loads(Path(paths["json"]).read_text())
    assert [p["name"] for p in saved["points"]] == [e["name"] for e in entries]
    assert "_metrics" not in saved["points"][0] and saved["points"][1]["measures"]["f1"] == m["f1"]
    from PIL import Image

    with Image.open(paths["loss_curves"]) as im:
        assert im.format == "PNG" and im.size == (900, 600)
    text = format_console(record, entries)
    assert "best: 02-lr=0.01, by macro F1 at threshold 0.5" in text and len(text.splitlines()) < 12


# --- the push -----------------------------------------------------------------------------------


def _params(tmp_path, **kw) -> dict:
    # The models here are stand-in folders no server can load: infra validation has its own tests (test_push_infra).
    return {"registry": str(tmp_path / "registry"), "model_name": "au", "force_push": False, "keep_versions": 0,
            "infra_validate": False, **kw}


def _pushed_models(tmp_path) -> list[str]:
    root = tmp_path / "registry" / "au"
    return [json.loads((v / registry.PUSH_FILE).read_text())["source_model"] for v in sorted(root.iterdir()) if v.is_dir()]


def test_only_the_best_is_pushed_unless_all_or_none_is_asked(tmp_path):
    entries = [_entry(tmp_path, "01-a", {"seed": 1}, 0.3), _entry(tmp_path, "02-b", {"seed": 2}, 0.9),
               _entry(tmp_path, "03-c", {"seed": 3}, 0.6)]
    best = choose_best(entries)
    out = lambda e: str(tmp_path / "out" / e["name"])  # noqa: E731
    assert push_points(entries, best, "none", _params(tmp_path), out) == []
    (record,) = push_points(entries, best, "best", _params(tmp_path), out)
    assert record["name"] == "02-b" and record["pushed"] and _pushed_models(tmp_path) == [best["model"]]
    assert (tmp_path / "out" / "02-b" / "push.json").is_file()

    (tmp_path / "registry").rename(tmp_path / "registry-before")
    records = push_points(entries, best, "all", _params(tmp_path), lambda e: str(tmp_path / "out-all" / e["name"]))
    assert [r["name"] for r in records] == ["01-a", "03-c", "02-b"]  # the best last: LATEST names it
    latest = (tmp_path / "registry" / "au" / "LATEST").read_text().strip()
    assert records[-1]["version"] == latest


def test_an_unblessed_best_is_not_pushed_and_says_why(tmp_path):
    entries = [_entry(tmp_path, "01-a", {"seed": 1}, 0.9, blessed=False)]
    (record,) = push_points(entries, entries[0], "best", _params(tmp_path), lambda e: str(tmp_path / "o"))
    assert not record["pushed"] and "fail: macro F1 0.1000 < minimum 0.5" in record["message"]
    assert not (tmp_path / "registry" / "au").exists()
    (record,) = push_points(entries, entries[0], "best", _params(tmp_path, force_push=True),
                                  lambda e: str(tmp_path / "o"))
    assert record["pushed"]


def test_sweep_pick_compares_the_candidate_registries_and_pushes_the_best_to_the_live_one(tmp_path):
    from components.push import logic as push_logic

    candidates = tmp_path / "registry" / defaults.SWEEP_CANDIDATES / "sweep-1"
    plan = {"sweep_id": "sweep-1", "grid": {"seed": [1, 2, 3]}, "fixed": {"epochs": 2},
            "registry": str(tmp_path / "registry"), "model_name": "au", "force_push": False, "keep_versions": 0,
            "infra_validate": False, "points": []}
    for name, quality in (("01-seed=1", 0.4), ("02-seed=2", 0.8), ("03-seed=3", None)):
        e = _entry(tmp_path / "runs", name, {"seed": int(name[-1])}, quality or 0.5)
        plan["points"].append({"name": name, "parameters": e["parameters"], "run_id": f"run-{name}",
                               "run_url": f"http://kfp/#/runs/details/run-{name}", "registry": str(candidates / name)})
        if quality is not None:  # what each cluster run's push step did (forced)
            push_logic.run(e["model"], e["evaluation"], None, destination=str(candidates / name), model_name="au",
                           force=True, infra_validate=False)
    record = pick(plan, str(tmp_path / "pick"), say=lambda *a: None)
    assert record["best"] == "02-seed=2"
    states = {p["name"]: p["status"] for p in record["points"]}
    assert states == {"01-seed=1": "succeeded", "02-seed=2": "succeeded", "03-seed=3": "failed"}
    assert "run-03-seed=3" in record["points"][2]["error"]  # the run to look at
    (pushed,) = record["pushed"]
    assert pushed["pushed"] and pushed["uri"].startswith(str(tmp_path / "registry" / "au"))
    assert (Path(pushed["uri"]) / "saved_model" / "saved_model.pb").read_bytes() == b"02-seed=2"
    assert record["points"][1]["seconds"] == {"train": 12.5} and record["points"][1]["epochs"] == 3
    for name in (SWEEP_JSON, SWEEP_MD, LOSS_CURVES):
        assert (tmp_path / "pick" / name).is_file()
    assert not record["ok"] and "03-seed=3" in record["error"]
    again = pick(plan, str(tmp_path / "pick"), say=lambda *a: None)  # picking again pushes nothing twice
    assert again["pushed"][0]["message"] == f"already pushed as version {pushed['version']} ({pushed['uri']})"
    assert sorted(os.listdir(tmp_path / "registry" / "au")) == sorted(["LATEST", pushed["version"]])


def test_a_grid_may_vary_a_value_of_the_preset_but_not_a_flag_given_beside_it():
    import argparse

    from pipeline.params import add_pipeline_parameter_flags, pipeline_arguments

    parser = argparse.ArgumentParser()
    add_pipeline_parameter_flags(parser)
    args = parser.parse_args(["--preset", "study-11au", "--epochs", "4"])
    assert given_flags(args) == {"epochs": 4}
    grid = parse_grid(["learning_rate=0.01,0.001"], given_flags(args))
    (point, _) = grid_points(grid)
    run = point_parameters(pipeline_arguments(args), point)
    assert run["learning_rate"] == 0.01 and run["optimizer"] == "rmsprop" and run["epochs"] == 4
    with pytest.raises(SweepError, match="epochs is given both as --epochs and in --grid"):
        parse_grid(["epochs=1,2"], given_flags(args))


# --- the local sweep's order of work, with the parts stood in for -------------------------------


def _fake_parts(tmp_path, monkeypatch, fail_data=False, fail_points=()):
    """Stands in for kfp.local: records which parts ran; a point's train/evaluate outputs are _entry's folders."""
    from components.report.records import StepRecord

    calls = []

    def run_part(pipeline_func, steps, run_dir, verbose):
        calls.append((tuple(steps), os.path.basename(run_dir)))
        if steps == DATA_STEPS:
            recs = {s: StepRecord(s, "succeeded", 1.0, log=f"{run_dir}/logs/{s}.log") for s in steps}
            recs["filter-examples"].outputs = {"filtered": str(tmp_path / "filtered")}
            recs["ingest"].outputs = {"manifest": str(tmp_path / "manifest")}
            if fail_data:
                recs["convert"].status = "failed"
                return False, "step convert failed; its log: x", recs
            return True, "", recs
        name = os.path.basename(run_dir)
        if name in fail_points:
            return False, "step train failed; its log: t", {"train": StepRecord("train", "failed", 2.0, log="t"),
                                                              "evaluate": StepRecord("evaluate")}
        e = _entry(tmp_path / "made", name, {}, 0.1 * len(calls))  # later points score better
        return True, "", {"train": StepRecord("train", "succeeded", 3.0, {"model": e["model"]}),
                          "evaluate": StepRecord("evaluate", "succeeded", 1.5, {"evaluation": e["evaluation"]})}

    monkeypatch.setattr(local, "_run_part", run_part)
    return calls


def test_a_local_sweep_runs_the_data_part_once_then_every_point_even_after_one_fails(tmp_path, monkeypatch):
    calls = _fake_parts(tmp_path, monkeypatch, fail_points=("02-seed=2",))
    grid = parse_grid(["seed=1,2,3"])
    record = local.run_local({"registry": str(tmp_path / "registry"), "min_macro_f1": 0.0}, grid,
                             str(tmp_path / "sweep"), say=lambda *a: None)
    assert calls == [(DATA_STEPS, defaults.SWEEP_DATA_DIR), (POINT_STEPS, "01-seed=1"),
                     (POINT_STEPS, "02-seed=2"), (POINT_STEPS, "03-seed=3")]
    assert [p["status"] for p in record["points"]] == ["succeeded", "failed", "succeeded"]
    assert record["points"][1]["log"] == "t" and not record["ok"] and "02-seed=2" in record["error"]
    assert record["best"] == "03-seed=3" and [p["name"] for p in record["pushed"]] == ["03-seed=3"]
    summary = json.loads((tmp_path / "sweep" / "03-seed=3" / "run_summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == list(STEPS)
    assert {s["name"]: s["status"] for s in summary["steps"]}["push"] == "succeeded"
    assert (tmp_path / "sweep" / "01-seed=1" / "report.html").is_file()
    assert (tmp_path / "sweep" / SWEEP_MD).is_file()


def test_when_the_data_steps_fail_no_point_runs_and_the_sweep_says_so(tmp_path, monkeypatch):
    calls = _fake_parts(tmp_path, monkeypatch, fail_data=True)
    record = local.run_local({"registry": str(tmp_path / "registry")}, parse_grid(["seed=1,2"]),
                             str(tmp_path / "sweep"), say=lambda *a: None)
    assert calls == [(DATA_STEPS, defaults.SWEEP_DATA_DIR)]
    assert not record["ok"] and record["error"] == "the data steps failed, so no point ran: step convert failed; its log: x"
    assert json.loads((tmp_path / "sweep" / SWEEP_JSON).read_text())["points"] == []
