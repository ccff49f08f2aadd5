"""pipeline.py submit / schedule against a loopback fake of the KFP REST API (what the real kfp.Client sends), and Vertex AI with a stand-in SDK."""
import argparse
import ast
import importlib.util
import json
import socket
import sys
import types
from pathlib import Path

import pytest

from pipeline import defaults
from pipeline.cluster import ClusterError, cli
from pipeline.cluster.compile import compile_spec
from pipeline.cluster.cron import kfp_cron, vertex_cron

from kfp_fake import FakeKFP

CPU_IMG = "europe-docker.pkg.dev/p/au/pipeline-cpu:2.0.0"
GPU_IMG = "europe-docker.pkg.dev/p/au/pipeline-gpu:2.0.0"
URIS = ["--source", "gs://bkt/emotionet/sheet.xlsx", "--registry", "gs://bkt/registry", "--download-store", "gs://bkt/store"]


def parse(kind: str, argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"pipeline.py {kind}")
    (cli.add_submit_arguments if kind == "submit" else cli.add_schedule_arguments)(parser)
    return parser.parse_args(argv)


def _spec(version: dict) -> dict:
    return version["spec"][0]


def _k8s(version: dict) -> dict:
    return version["spec"][1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_submit_uploads_the_spec_then_runs_that_version_with_the_parameters(kfp_server, capsys):
    argv = ["--host", kfp_server.url, *URIS, "--pipeline-root", "gs://bkt/pipeline-root", "--epochs", "3",
            "--backbone", "vgg16", "--service-account", "au-pipeline", "--image-cpu", CPU_IMG, "--image-gpu", GPU_IMG,
            "--node-selector", "cloud.google.com/gke-accelerator=nvidia-tesla-t4",
            "--toleration", "nvidia.com/gpu=present:NoSchedule", "--run-name", "first-run"]
    assert cli.submit(parse("submit", argv)) == 0

    (pipeline,) = kfp_server.pipelines.values()
    assert pipeline["display_name"] == defaults.PIPELINE_NAME and pipeline["description"] == defaults.PIPELINE_DESCRIPTION
    (version,) = kfp_server.versions.values()
    spec = _spec(version)
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-train"]["container"]["image"] == GPU_IMG
    assert executors["exec-download"]["container"]["image"] == CPU_IMG
    assert executors["exec-train"]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert _k8s(version)["exec-train"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}

    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == defaults.KFP_EXPERIMENT
    (run,) = kfp_server.runs
    assert run["display_name"] == "first-run" and run["experiment_id"] == experiment["experiment_id"]
    assert run["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": version["pipeline_version_id"]
    }
    assert "pipeline_spec" not in run  # the run points at the uploaded version the UI lists
    assert run["runtime_config"] == {
        "pipeline_root": "gs://bkt/pipeline-root",
        "parameters": {
            "source": "gs://bkt/emotionet/sheet.xlsx",
            "registry": "gs://bkt/registry",
            "download_store": "gs://bkt/store",
            "epochs": 3,
            "backbone": "vgg16",
            # A cluster's download step faces the internet: private addresses are off unless asked.
            "download_allow_private": False,
        },
    }
    assert run["service_account"] == "au-pipeline"
    assert f"run {run['run_id']} started" in capsys.readouterr().out


def test_a_second_submit_uploads_a_new_version_of_the_same_pipeline(kfp_server):
    assert cli.submit(parse("submit", ["--host", kfp_server.url, *URIS])) == 0
    assert cli.submit(parse("submit", ["--host", kfp_server.url, *URIS, "--version-name", "v2", "--disable-caching"])) == 0
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.experiments) == 1
    uploads = [r for r in kfp_server.requests if r["path"].endswith("/pipelines/upload_version")]
    (pipeline_id,) = kfp_server.pipelines
    assert [(r["query"]["name"], r["query"]["pipelineid"]) for r in uploads] == [("v2", pipeline_id)]
    second = kfp_server.runs[1]
    assert kfp_server.versions[second["pipeline_version_reference"]["pipeline_version_id"]]["display_name"] == "v2"


def test_schedule_creates_a_recurring_run_with_kfps_six_field_cron(kfp_server, capsys):
    argv = ["--host", kfp_server.url, *URIS, "--cron", "0 3 * * 1", "--pipeline-root", "gs://bkt/root",
            "--schedule-name", "weekly-retrain", "--service-account", "au-pipeline"]
    assert cli.schedule(parse("schedule", argv)) == 0
    (recurring,) = kfp_server.recurring_runs
    (version,) = kfp_server.versions.values()
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert recurring["display_name"] == "weekly-retrain" and recurring["mode"] == "ENABLE"
    # Runs share the download store: never two at once, no backfill of missed times.
    assert recurring["max_concurrency"] == 1 and recurring["no_catchup"] is True
    assert recurring["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert recurring["runtime_config"]["parameters"]["download_store"] == "gs://bkt/store"
    assert recurring["runtime_config"]["pipeline_root"] == "gs://bkt/root"
    assert recurring["service_account"] == "au-pipeline"
    assert not kfp_server.runs
    assert "0 0 3 * * 1" in capsys.readouterr().out


def test_a_schedule_without_a_download_store_is_refused_before_anything_is_sent(kfp_server, capsys):
    argv = ["--host", kfp_server.url, "--source", "gs://bkt/s.xlsx", "--registry", "gs://bkt/r", "--cron", "0 3 * * *"]
    assert cli.schedule(parse("schedule", argv)) == 2
    err = capsys.readouterr().err
    assert "--download-store gs://" in err and "only images" in err
    assert kfp_server.requests == []


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--source", "gs://b/s.xlsx"], "--registry gs://"),  # the default registry is a local folder
        (["--source", "/home/me/sheet.xlsx", "--registry", "gs://b/r"], "--source '/home/me/sheet.xlsx'"),
        (["--registry", "gs://b/r"], "--source gs://"),
        (URIS + ["--schema-uri", "runs/schema"], "--schema-uri 'runs/schema'"),
        (URIS + ["--pipeline-root", "/tmp/root"], "--pipeline-root '/tmp/root'"),
    ],
)
def test_paths_a_pod_cannot_see_are_refused_with_the_flag_to_fix(kfp_server, capsys, argv, words):
    assert cli.submit(parse("submit", ["--host", kfp_server.url, *argv])) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert kfp_server.requests == []


def test_no_secret_value_reaches_the_server(kfp_server, tmp_path, monkeypatch):
    token = "tok-3b1f-must-stay-in-the-header"
    env_secret = "env-9c2e-must-not-leak"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env_secret)
    monkeypatch.setenv("HF_TOKEN", env_secret)
    (tmp_path / "token").write_text(token + "\n")
    argv = ["--host", kfp_server.url, *URIS, "--token-file", str(tmp_path / "token"),
            "--secret-env", "hf-token:token=HF_TOKEN", "--gcp-credentials-secret", "gcp-sa-key"]
    assert cli.submit(parse("submit", argv)) == 0
    assert kfp_server.requests
    for request in kfp_server.requests:
        assert token.encode() not in request["body"] and env_secret.encode() not in request["body"]
        assert request["headers"].get("authorization") == f"Bearer {token}"
        assert env_secret not in json.dumps(request["headers"])
    (version,) = kfp_server.versions.values()
    k8s = _k8s(version)["exec-download"]
    assert k8s["secretAsEnv"][0]["secretName"] == "hf-token"
    assert {v["secretName"] for v in k8s["secretAsVolume"]} == {"gcp-sa-key"}


def test_submit_sends_a_spec_compiled_before(kfp_server, tmp_path):
    spec_path = tmp_path / "pipeline.yaml"
    compile_spec(cli.platform_from_args(parse("submit", ["--image-cpu", CPU_IMG])), str(spec_path))
    assert cli.submit(parse("submit", ["--host", kfp_server.url, *URIS, "--package", str(spec_path)])) == 0
    upload = next(r for r in kfp_server.requests if r["path"].endswith("/pipelines/upload"))
    assert spec_path.read_bytes() in upload["body"]


def test_an_error_of_the_kfp_server_is_one_message_and_exit_1(kfp_context, capsys):
    with FakeKFP(fail={"POST /runs": 500}) as server:
        assert cli.submit(parse("submit", ["--host", server.url, *URIS])) == 1
    err = capsys.readouterr().err
    assert f"KFP at {server.url} answered 500" in err and "Traceback" not in err


def test_an_unreachable_host_is_one_message_and_exit_1(kfp_context, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.submit(parse("submit", ["--host", f"http://127.0.0.1:{port}", *URIS])) == 1
    assert f"cannot reach KFP at http://127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "cron, kfp, vertex",
    [
        ("0 3 * * 1", "0 0 3 * * 1", "0 3 * * 1"),
        ("  30   2 1 * *  ", "0 30 2 1 * *", "30 2 1 * *"),
        ("0 0 3 * * MON-FRI", "0 0 3 * * MON-FRI", "0 3 * * MON-FRI"),
        ("*/15 * * * *", "0 */15 * * * *", "*/15 * * * *"),
        ("@daily", "@daily", None),
        ("@every 6h30m", "@every 6h30m", None),
        ("@sometimes", None, None),
        ("TZ=Europe/Paris 0 3 * * 1", None, "TZ=Europe/Paris 0 3 * * 1"),
        ("0 3 * *", None, None),
        ("30 0 3 * * 1", "30 0 3 * * 1", None),  # Vertex AI has no seconds
        ("0 3 * * 1 2025 x", None, None),
        ("0 3 * * $(reboot)", None, None),
    ],
)
def test_cron_is_converted_for_each_scheduler_or_refused_clearly(cron, kfp, vertex):
    for convert, expected in ((kfp_cron, kfp), (vertex_cron, vertex)):
        if expected is None:
            with pytest.raises(ClusterError, match="--cron"):
                convert(cron)
        else:
            assert convert(cron) == expected


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "where to run?"),
        (["--host", "http://h:8080", "--vertex-project", "p", "--vertex-region", "r"], "not both"),
        (["--host", "ml-pipeline:8888"], "http(s)://"),
        (["--vertex-project", "p", "--vertex-region", "europe-west4"], "--pipeline-root gs://"),
        (["--vertex-project", "p", "--pipeline-root", "gs://b/root"], "both --vertex-project and --vertex-region"),
        (["--vertex-project", "p", "--vertex-region", "r", "--pipeline-root", "gs://b/root"], "--gpu-type NVIDIA_TESLA_T4"),
        (["--vertex-project", "p", "--vertex-region", "r", "--pipeline-root", "gs://b/root", "--gpu-type", "NVIDIA_L4",
          "--toleration", "nvidia.com/gpu=present:NoSchedule"], "are for Kubernetes (KFP)"),
    ],
)
def test_where_to_run_is_checked_first(capsys, argv, words):
    assert cli.submit(parse("submit", [*argv, *URIS])) == 2
    assert words in capsys.readouterr().err


class _FakeAiplatform(types.ModuleType):
    """Stands in for google.cloud.aiplatform; records what the pipeline asks of it."""

    def __init__(self):
        super().__init__("google.cloud.aiplatform")
        self.calls = []
        calls = self.calls

        class PipelineJob:
            def __init__(self, **kwargs):
                calls.append(("PipelineJob", kwargs))
                self.resource_name = "projects/p/locations/r/pipelineJobs/job-1"

            def submit(self, **kwargs):
                calls.append(("submit", kwargs))

            def create_schedule(self, **kwargs):
                calls.append(("create_schedule", kwargs))
                return types.SimpleNamespace(resource_name="projects/p/locations/r/schedules/s-1")

        self.PipelineJob = PipelineJob


def _real_signature_names(method: str) -> set:
    """Argument names of aiplatform.PipelineJob.<method>, read from its source without the slow import."""
    spec = importlib.util.find_spec("google.cloud.aiplatform")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("google-cloud-aiplatform is not installed")
    source = Path(list(spec.submodule_search_locations)[0]) / "pipeline_jobs.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "PipelineJob":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    return {a.arg for a in item.args.args + item.args.kwonlyargs}
    raise AssertionError(f"PipelineJob.{method} not found in {source}")


VERTEX = ["--vertex-project", "my-project", "--vertex-region", "europe-west4", "--pipeline-root", "gs://bkt/root",
          "--gpu-type", "NVIDIA_TESLA_T4", "--service-account", "pipelines@my-project.iam.gserviceaccount.com"]


@pytest.fixture
def vertex_calls(monkeypatch, capsys):
    """submit, then schedule, against the stand-in SDK: the calls it recorded, and what the commands printed."""
    fake = _FakeAiplatform()
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", fake)
    assert cli.submit(parse("submit", [*VERTEX, *URIS, "--epochs", "2"])) == 0
    assert cli.schedule(parse("schedule", [*VERTEX, *URIS, "--cron", "0 0 3 * * 1"])) == 0
    return fake.calls, capsys.readouterr().out


def test_vertex_submit_and_schedule_call_the_sdk_with_the_spec_and_parameters(vertex_calls):
    calls, out = vertex_calls
    (_, job), (_, submitted), (_, job2), (_, sched) = calls
    assert [c[0] for c in calls] == ["PipelineJob", "submit", "PipelineJob", "create_schedule"]
    assert job["project"] == "my-project" and job["location"] == "europe-west4"
    assert job["pipeline_root"] == "gs://bkt/root" and job["template_path"].endswith(".yaml")
    assert job["parameter_values"] == {
        "source": "gs://bkt/emotionet/sheet.xlsx", "registry": "gs://bkt/registry", "download_store": "gs://bkt/store",
        "epochs": 2, "download_allow_private": False,
    }
    assert submitted == {"service_account": "pipelines@my-project.iam.gserviceaccount.com"}
    assert sched["cron"] == "0 3 * * 1" and sched["max_concurrent_run_count"] == 1
    assert "schedules/s-1" in out


@pytest.fixture(scope="module")
def sdk_signatures():
    """The installed SDK's argument names, read before vertex_calls puts the stand-in in its place."""
    return {method: _real_signature_names(method) for method in ("__init__", "submit", "create_schedule")}


def test_what_vertex_is_passed_is_what_the_installed_sdk_takes(sdk_signatures, vertex_calls):
    # Skipped alone where the SDK is not installed: the calls above are checked against the stand-in regardless.
    real = sdk_signatures
    (_, job), (_, submitted), _, (_, sched) = vertex_calls[0]
    assert set(job) <= real["__init__"]
    assert set(submitted) <= real["submit"]
    assert set(sched) <= real["create_schedule"]


def test_vertex_without_its_sdk_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", None)
    assert cli.submit(parse("submit", [*VERTEX, *URIS])) == 2
    assert "pip install google-cloud-aiplatform" in capsys.readouterr().err
