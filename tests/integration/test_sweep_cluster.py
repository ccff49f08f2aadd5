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


@pytest.fixture
def kfp_server(tmp_path, monkeypatch):
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    with FakeKFP() as server:
        yield server


def test_sweep_submit_starts_one_run_per_point_in_one_experiment_each_pushing_into_its_candidate_registry(
        kfp_server, tmp_path, capsys):
    argv = ["sweep-submit", "--host", kfp_server.url, *URIS, "--pipeline-root", "gs://bkt/root", "--epochs", "3",
            "--grid", "batch_size=32,64", "--grid", "learning-rate=0.01,0.001", "--runs-dir", str(tmp_path / "runs"),
            "--service-account", "au-pipeline", "--checkpoint-dir", "gs://bkt/ckpt"]
    assert cli().main(argv) == 0
    out = capsys.readouterr().out

    assert len(kfp_server.pipelines) == 1 and len(kfp_server.versions) == 1  # the spec is uploaded once
    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == defaults.KFP_EXPERIMENT
    (version,) = kfp_server.versions.values()
    assert len(kfp_server.runs) == 4
    (plan_path,) = (tmp_path / "runs").glob(f"sweep-*/{defaults.SWEEP_PLAN}")
    plan = json.loads(plan_path.read_text())
    sweep_id = plan["sweep_id"]
    seen = set()
    for run, point in zip(kfp_server.runs, plan["points"]):
        assert run["experiment_id"] == experiment["experiment_id"]
        assert run["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
        params = run["runtime_config"]["parameters"]
        assert run["runtime_config"]["pipeline_root"] == "gs://bkt/root" and run["service_account"] == "au-pipeline"
        seen.add((params["batch_size"], params["learning_rate"]))
        assert params["epochs"] == 3 and params["download_store"] == "gs://bkt/store"
        assert params["download_allow_private"] is False
        # never the live registry: its own candidate registry, every model pushed there to be compared
        assert params["registry"] == f"gs://bkt/registry/{defaults.SWEEP_CANDIDATES}/{sweep_id}/{point['name']}"
        assert params["force_push"] is True
        assert params["checkpoint_dir"] == f"gs://bkt/ckpt/{point['name']}"  # no point resumes another's epochs
        assert run["display_name"] == f"{sweep_id}-{point['name']}"
        assert point["run_id"] == run["run_id"] and point["registry"] == params["registry"]
        assert point["parameters"] == {"batch_size": params["batch_size"], "learning_rate": params["learning_rate"]}
    assert seen == {(32, 0.01), (32, 0.001), (64, 0.01), (64, 0.001)}
    assert plan["registry"] == "gs://bkt/registry" and plan["force_push"] is False
    assert plan["grid"] == {"batch_size": [32, 64], "learning_rate": [0.01, 0.001]}
    assert f"python pipeline.py sweep-pick {plan_path.parent}" in out and "(batch_size=64, learning_rate=0.001)" in out


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


def test_a_kfp_error_is_one_message_and_the_runs_that_started_are_kept_in_the_plan(tmp_path, monkeypatch, capsys):
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
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
