"""pipeline.py sweep-submit against the loopback fake of the KFP REST API: one upload, one experiment, one run per grid
point, each pushing into its own candidate registry; the plan sweep-pick reads; refusals before anything is sent."""
import importlib.util
import json
from pathlib import Path

import pytest

from pipeline import defaults

from kfp_fake import FakeKFP

ROOT = Path(__file__).resolve().parents[2]
URIS = ["--source", "gs://bkt/emotionet/sheet.xlsx", "--registry", "gs://bkt/registry", "--download-store", "gs://bkt/store"]


def cli():
    """pipeline.py as a module (its name clashes with the pipeline package, so it is loaded by path)."""
    spec = importlib.util.spec_from_file_location("pipeline_cli", ROOT / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spec_of(run: dict) -> dict:
    """The pipeline spec a run was started with (sent with it, not uploaded)."""
    spec = run["pipeline_spec"]
    return spec if "root" in spec else spec["pipeline_spec"]


def executors_of(spec: dict) -> dict:
    """Task name -> its executor's container or importer, as the spec wires them."""
    out = {}
    for task, t in spec["root"]["dag"]["tasks"].items():
        label = spec["components"][t["componentRef"]["name"]]["executorLabel"]
        out[task] = spec["deploymentSpec"]["executors"][label]
    return out


def test_sweep_submit_runs_the_data_steps_once_then_one_run_per_point_in_one_experiment(kfp_server, tmp_path, capsys):
    argv = ["sweep-submit", "--host", kfp_server.url, *URIS, "--pipeline-root", "gs://bkt/root", "--epochs", "3",
            "--grid", "batch_size=32,64", "--grid", "learning-rate=0.01,0.001", "--runs-dir", str(tmp_path / "runs"),
            "--service-account", "au-pipeline", "--checkpoint-dir", "gs://bkt/ckpt", "--image-cpu", "reg/cpu:1",
            "--image-gpu", "reg/gpu:1", "--node-selector", "cloud.google.com/gke-accelerator=nvidia-tesla-t4"]
    assert cli().main(argv) == 0
    out = capsys.readouterr().out

    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == defaults.KFP_EXPERIMENT
    assert not kfp_server.pipelines  # each run carries its part of the DAG
    assert len(kfp_server.runs) == 5
    (plan_path,) = (tmp_path / "runs").glob(f"sweep-*/{defaults.SWEEP_PLAN}")
    plan = json.loads(plan_path.read_text())
    sweep_id = plan["sweep_id"]
    examples = f"gs://bkt/registry/{defaults.SWEEP_CANDIDATES}/{sweep_id}/examples"
    assert plan["examples_uri"] == examples

    # first the data run: the data steps once, the filtered examples published where every point imports them
    data, *points = kfp_server.runs
    assert data["display_name"] == f"{sweep_id}-data" and plan["data_run"]["run_id"] == data["run_id"]
    assert plan["data_run"]["state"] == "SUCCEEDED"
    executors = executors_of(spec_of(data))
    assert set(executors) == {"ingest", "download", "validate", "convert", "filter-examples", "publish", "publish-2"}
    assert all(e["container"]["image"] == "reg/cpu:1" for e in executors.values())
    publish = spec_of(data)["root"]["dag"]["tasks"]["publish"]
    assert publish["inputs"]["parameters"]["destination"]["runtimeValue"]["constant"] == examples
    # ingest's manifest beside them: each point's evaluate imports it for its URL-host slices
    manifest = f"gs://bkt/registry/{defaults.SWEEP_CANDIDATES}/{sweep_id}/manifest"
    publish = spec_of(data)["root"]["dag"]["tasks"]["publish-2"]
    assert publish["inputs"]["parameters"]["destination"]["runtimeValue"]["constant"] == manifest
    assert publish["inputs"]["artifacts"]["source"]["taskOutputArtifact"]["producerTask"] == "ingest"
    # the data run finished before any point's run was sent
    posts = [i for i, r in enumerate(kfp_server.requests) if r["method"] == "POST" and r["path"].endswith("/runs")]
    polls = [i for i, r in enumerate(kfp_server.requests) if r["method"] == "GET" and data["run_id"] in r["path"]]
    assert polls and posts[0] < polls[0] < posts[1]

    seen = set()
    for run, point in zip(points, plan["points"]):
        assert run["experiment_id"] == experiment["experiment_id"]
        assert run["runtime_config"]["pipeline_root"] == "gs://bkt/root" and run["service_account"] == "au-pipeline"
        spec = spec_of(run)
        executors = executors_of(spec)
        # train -> evaluate -> push on the published examples, no data step
        assert {t for t in executors if "importer" not in executors[t]} == {"train", "evaluate", "push"}
        imported = sorted(e["importer"]["artifactUri"]["constant"] for e in executors.values() if "importer" in e)
        assert imported == [examples, manifest]
        assert executors["train"]["container"]["image"] == "reg/gpu:1"
        assert executors["train"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
        # train lands on the GPU pool: the node selector travels with the run (its platform spec)
        platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert {"nodeSelector": {"labels": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}}}.items() <= \
            next(v for k, v in platform.items() if "train" in k).items()
        assert executors["push"]["container"]["image"] == "reg/cpu:1"
        consts = {task: {k: v["runtimeValue"]["constant"] for k, v in t["inputs"].get("parameters", {}).items()
                         if "runtimeValue" in v}
                  for task, t in spec["root"]["dag"]["tasks"].items()}
        seen.add((consts["train"]["batch_size"], consts["train"]["learning_rate"]))
        assert consts["train"]["epochs"] == 3
        # never the live registry: its own candidate registry, every model pushed there to be compared
        assert consts["push"]["destination"] == f"gs://bkt/registry/{defaults.SWEEP_CANDIDATES}/{sweep_id}/{point['name']}"
        assert consts["push"]["force"] is True
        assert consts["train"]["checkpoint_dir"] == f"gs://bkt/ckpt/{point['name']}"  # no point resumes another's epochs
        assert run["display_name"] == f"{sweep_id}-{point['name']}"
        assert point["run_id"] == run["run_id"] and point["registry"] == consts["push"]["destination"]
        assert point["parameters"] == {"batch_size": consts["train"]["batch_size"],
                                       "learning_rate": consts["train"]["learning_rate"]}
    assert seen == {(32, 0.01), (32, 0.001), (64, 0.01), (64, 0.001)}
    assert plan["registry"] == "gs://bkt/registry" and plan["force_push"] is False
    assert plan["grid"] == {"batch_size": [32, 64], "learning_rate": [0.01, 0.001]}
    assert f"python pipeline.py sweep-pick {plan_path.parent}" in out and "(batch_size=64, learning_rate=0.001)" in out


def test_a_data_run_that_fails_starts_no_point_and_says_where_to_look(tmp_path, kfp_context, capsys):
    with FakeKFP(run_state="FAILED") as server:
        argv = ["sweep-submit", "--host", server.url, *URIS, "--grid", "seed=1,2", "--runs-dir", str(tmp_path / "r")]
        assert cli().main(argv) == 1
        assert len(server.runs) == 1
    err = capsys.readouterr().err
    assert "the data run ended FAILED" in err and "no point started" in err and "Traceback" not in err
    (plan_path,) = (tmp_path / "r").glob(f"sweep-*/{defaults.SWEEP_PLAN}")
    plan = json.loads(plan_path.read_text())
    assert plan["data_run"]["state"] == "FAILED" and plan["points"] == []


def test_sweep_submit_compiles_its_own_parts_so_a_package_is_refused(kfp_server, tmp_path, capsys):
    package = tmp_path / "pipeline.yaml"
    package.write_text("x")
    argv = ["sweep-submit", "--host", kfp_server.url, *URIS, "--grid", "seed=1,2", "--package", str(package),
            "--runs-dir", str(tmp_path / "r")]
    assert cli().main(argv) == 2
    assert "instead of --package" in capsys.readouterr().err and kfp_server.requests == []


@pytest.mark.parametrize("argv, words", [
    (["--grid", "policy=drop,mask"], "policy cannot vary in a sweep"),
    (["--grid", "epochs=1,2", "--epochs", "3"], "epochs is given both as --epochs and in --grid"),
    (["--grid", "seed=1,2,3", "--max-points", "2"], "more than --max-points 2"),
    (["--grid", "seed=1,2", "--registry", "runs/registry"], "--registry 'runs/registry': on a cluster it must be a gs:// URI"),
])
def test_a_sweep_that_cannot_run_is_refused_before_anything_is_sent(kfp_server, tmp_path, capsys, argv, words):
    base = ["sweep-submit", "--host", kfp_server.url, *URIS, "--runs-dir", str(tmp_path)]
    assert cli().main(base + argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert kfp_server.requests == [] and not list(tmp_path.iterdir())


def test_sweep_submit_on_vertex_says_how_to_do_it_instead(tmp_path, capsys):
    argv = ["sweep-submit", "--vertex-project", "p", "--vertex-region", "europe-west4", "--pipeline-root", "gs://b/r",
            *URIS, "--grid", "seed=1,2", "--runs-dir", str(tmp_path)]
    assert cli().main(argv) == 2
    assert "on Vertex AI start each point with pipeline.py submit" in capsys.readouterr().err


def test_a_kfp_error_is_one_message_and_the_runs_that_started_are_kept_in_the_plan(tmp_path, kfp_context, capsys):
    with FakeKFP(fail={"POST /runs": 500}) as server:
        argv = ["sweep-submit", "--host", server.url, *URIS, "--grid", "seed=1,2", "--runs-dir", str(tmp_path / "r")]
        assert cli().main(argv) == 1
    err = capsys.readouterr().err
    assert f"KFP at {server.url} answered 500" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # no run started: no plan


def test_sweep_pick_without_a_plan_says_which_folder_to_give(tmp_path, capsys):
    assert cli().main(["sweep-pick", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / defaults.SWEEP_PLAN} cannot be read" in err and "sweep-submit" in err
