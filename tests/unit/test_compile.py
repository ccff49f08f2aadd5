"""compile.py and the cluster platform: the YAML read back holds images, resources, GPU, node pool, retries, caching, no secrets."""
import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

from components.common import images
from pipeline import defaults
from pipeline.dag import STEPS, au_pipeline
from pipeline.platform import ClusterPlatform, SecretEnv, SecretVolume, Toleration, parse_node_selector

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("compile_cli", ROOT / "compile.py")
compile_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compile_cli)

GPU_STEPS = {"train", "evaluate"}
FAKE_SECRET = "s3cr3t-value-that-must-not-leak-7f3a"
CLUSTER_FLAGS = [
    "--image-cpu", "europe-docker.pkg.dev/p/au/pipeline-cpu:1.2.3",
    "--image-gpu", "europe-docker.pkg.dev/p/au/pipeline-gpu:1.2.3",
    "--gpu-type", "nvidia.com/gpu",
    "--gpu-count", "2",
    "--node-selector", "cloud.google.com/gke-accelerator=nvidia-tesla-t4",
    "--node-selector", "pool=gpu",
    "--toleration", "nvidia.com/gpu=present:NoSchedule",
    "--toleration", "preemptible:NoExecute",
    "--cpu", "convert=8:16",
    "--memory", "train=24Gi",
    "--secret-env", "hf-token:token=HF_TOKEN",
    "--secret-volume", "extra-certs:/etc/extra-certs",
    "--gcp-credentials-secret", "gcp-sa-key",
]


def _compile(tmp_path, name, argv):
    out = tmp_path / name
    assert compile_cli.main(["--output", str(out), *argv]) == 0
    text = out.read_text()
    docs = list(yaml.safe_load_all(text))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return text, docs[0], platform


@pytest.fixture(scope="module")
def cluster_spec(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    # Secrets in this process's environment must never be frozen into the spec.
    mp.setenv("HF_TOKEN", FAKE_SECRET)
    mp.setenv("GOOGLE_APPLICATION_CREDENTIALS_JSON", FAKE_SECRET)
    try:
        yield _compile(tmp_path_factory.mktemp("cluster"), "cluster.yaml", CLUSTER_FLAGS)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def default_spec(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("default"), "pipeline.yaml", [])


def _executor(spec, step):
    component = spec["root"]["dag"]["tasks"][step]["componentRef"]["name"]
    label = spec["components"][component]["executorLabel"]
    return label, spec["deploymentSpec"]["executors"][label]["container"]


def test_the_spec_has_all_nine_steps_in_order_of_the_dag(cluster_spec):
    _, spec, _ = cluster_spec
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS) == {
        "ingest", "download", "validate", "convert", "filter-examples", "train", "evaluate", "push", "report"
    }
    assert tasks["convert"]["dependentTasks"] == ["download", "ingest", "validate"]
    assert "train" in tasks["evaluate"]["dependentTasks"] and "evaluate" in tasks["push"]["dependentTasks"]
    # the run report is the last step: it reads every step's output and shows in the KFP UI as an HTML artifact
    assert set(tasks["report"]["dependentTasks"]) == set(STEPS) - {"report"}
    outputs = spec["components"][tasks["report"]["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    assert outputs["page"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_every_parameter_has_its_default_and_the_description_the_ui_shows(cluster_spec):
    _, spec, _ = cluster_spec
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    signature = inspect.signature(au_pipeline.pipeline_func).parameters
    assert set(parameters) == set(signature)
    for name, p in parameters.items():
        assert "defaultValue" in p, f"{name} has no default"
        default = signature[name].default
        assert p["defaultValue"] == default and type(default)(p["defaultValue"]) == default, name
        assert p.get("description", "").strip(), f"{name} has no description for the KFP UI (pipeline/dag.py docstring)"
    assert spec["pipelineInfo"]["description"] == defaults.PIPELINE_DESCRIPTION


def test_each_step_describes_its_parameters_as_the_pipeline_does(cluster_spec):
    """The KFP UI's run form (the pipeline's inputs) and each step's inputs say the same words: both come from the
    step's one declaration (components/<step>/params.py)."""
    _, spec, _ = cluster_spec
    root = spec["root"]["inputDefinitions"]["parameters"]
    fed = 0
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        inputs = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]
        for name, given in task.get("inputs", {}).get("parameters", {}).items():
            source = given.get("componentInputParameter")
            if source:
                fed += 1
                assert inputs["parameters"][name]["description"] == root[source]["description"], (task_name, name)
        for name, artifact in inputs.get("artifacts", {}).items():
            assert artifact.get("description", "").strip(), f"{task_name}'s {name} has no description"
    assert fed >= len(root)  # every pipeline parameter feeds a step


def test_each_step_runs_in_its_image_and_installs_nothing(cluster_spec):
    text, spec, _ = cluster_spec
    for step in STEPS:
        _, container = _executor(spec, step)
        kind = "gpu" if step in GPU_STEPS else "cpu"
        assert container["image"] == f"europe-docker.pkg.dev/p/au/pipeline-{kind}:1.2.3", step
        command = " ".join(container["command"] + container["args"])
        assert "pip install" not in command and "ensurepip" not in command, step
        assert "kfp.dsl.executor_main" in command
    assert "pip install" not in text and images.CPU_IMAGE not in text and images.GPU_IMAGE not in text


def test_train_requests_the_gpus_and_lands_on_the_gpu_node_pool(cluster_spec):
    _, spec, platform = cluster_spec
    label, container = _executor(spec, "train")
    accelerator = container["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "2"
    assert platform[label]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4", "pool": "gpu"
    }
    assert platform[label]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "preemptible", "operator": "Exists", "effect": "NoExecute"},
    ]
    # Without --gpu-evaluate the other steps stay off the GPU pool.
    for step in set(STEPS) - {"train"}:
        label, container = _executor(spec, step)
        assert "accelerator" not in container.get("resources", {}), step
        assert "nodeSelector" not in platform.get(label, {}) and "tolerations" not in platform.get(label, {}), step


def test_evaluate_joins_train_on_the_gpu_when_asked(tmp_path):
    _, spec, platform = _compile(
        tmp_path, "p.yaml", ["--gpu-evaluate", "--node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
                             "--toleration", "nvidia.com/gpu=present:NoSchedule"]
    )
    for step in ("train", "evaluate"):
        label, container = _executor(spec, step)
        assert container["resources"]["accelerator"]["resourceCount"] == "1"
        assert platform[label]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert platform[label]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_every_step_has_cpu_and_memory_requests_and_limits(cluster_spec):
    _, spec, _ = cluster_spec
    expected = {step: list(values) for step, values in defaults.CLUSTER_RESOURCES.items()}
    expected["convert"][0:2] = ["8", "16"]
    expected["train"][2:4] = ["24Gi", "24Gi"]
    assert set(expected) == set(STEPS) | {"annotate"}  # the annotate DAG's step has its resources there too
    for step in STEPS:
        r = _executor(spec, step)[1]["resources"]
        got = [r["resourceCpuRequest"], r["resourceCpuLimit"], r["resourceMemoryRequest"], r["resourceMemoryLimit"]]
        assert got == expected[step], step


def test_download_and_the_data_steps_retry_with_backoff(cluster_spec):
    _, spec, _ = cluster_spec
    tasks = spec["root"]["dag"]["tasks"]
    assert {"download", "ingest", "validate", "convert", "filter-examples"} <= set(defaults.CLUSTER_RETRY_STEPS)
    for step in STEPS:
        policy = tasks[step].get("retryPolicy")
        if step in defaults.CLUSTER_RETRY_STEPS:
            assert policy == {
                "maxRetryCount": defaults.CLUSTER_RETRIES,
                "backoffDuration": "60s",
                "backoffFactor": 2.0,
                "backoffMaxDuration": "3600s",
            }, step
        else:
            assert policy is None, step


def test_caching_is_on_only_where_a_step_is_deterministic(cluster_spec):
    _, spec, _ = cluster_spec
    tasks = spec["root"]["dag"]["tasks"]
    cached = {step for step in STEPS if tasks[step]["cachingOptions"].get("enableCache")}
    assert cached == {"convert", "filter-examples"} == set(defaults.CLUSTER_CACHED_STEPS)
    # The steps that read the world (sheet, web, schema, live model) or write it (registry) never hit a stale cache.
    assert not cached & {"ingest", "download", "validate", "train", "evaluate", "push"}


def test_secrets_reach_the_spec_as_names_only(cluster_spec):
    text, spec, platform = cluster_spec
    assert FAKE_SECRET not in text
    for step in STEPS:
        label, container = _executor(spec, step)
        k8s = platform[label]
        assert k8s["secretAsEnv"] == [{
            "keyToEnv": [{"secretKey": "token", "envVar": "HF_TOKEN"}],
            "secretName": "hf-token",
            "secretNameParameter": {"runtimeValue": {"constant": "hf-token"}},
        }]
        mounts = {v["secretName"]: v["mountPath"] for v in k8s["secretAsVolume"]}
        assert mounts == {"extra-certs": "/etc/extra-certs", "gcp-sa-key": defaults.CLUSTER_CREDENTIALS_MOUNT}
        assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"} in container["env"]


def test_without_cluster_flags_the_spec_is_valid_with_the_default_images(default_spec):
    from kfp import components

    text, spec, platform = default_spec
    assert components.load_component_from_text(text).name == defaults.PIPELINE_NAME
    for step in STEPS:
        _, container = _executor(spec, step)
        assert container["image"] == (images.GPU_IMAGE if step in GPU_STEPS else images.CPU_IMAGE)
    assert _executor(spec, "train")[1]["resources"]["accelerator"]["resourceType"] == defaults.CLUSTER_GPU_TYPE
    assert platform == {}  # no node selector, toleration or secret unless asked


def test_gpu_count_zero_runs_train_on_cpu(tmp_path):
    _, spec, _ = _compile(tmp_path, "cpu.yaml", ["--gpu-count", "0"])
    assert "accelerator" not in _executor(spec, "train")[1]["resources"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--toleration", "nvidia.com/gpu"], "KEY[=VALUE]:EFFECT"),
        (["--toleration", "nvidia.com/gpu=present:Sometimes"], "NoSchedule"),
        (["--node-selector", "cloud.google.com/gke-accelerator"], "KEY=VALUE"),
        (["--cpu", "trian=4"], "unknown step 'trian'"),
        (["--memory", "train=lots"], "step train"),
        (["--secret-env", "hf-token:HF_TOKEN"], "SECRET:KEY=ENV"),
        (["--secret-volume", "gcp-sa:relative/path"], "SECRET:/MOUNT/PATH"),
        (["--gcp-credentials-secret", "Not_A_Name"], "secret name"),
    ],
)
def test_a_bad_flag_is_one_clear_message_and_exit_2(tmp_path, capsys, argv, words):
    assert compile_cli.main(["--output", str(tmp_path / "x.yaml"), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "x.yaml").exists()


def test_gpu_count_must_be_one_kfp_accepts(capsys):
    with pytest.raises(SystemExit) as e:
        compile_cli.main(["--gpu-count", "3"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_parsers_of_the_platform_flags():
    assert Toleration.parse("nvidia.com/gpu=present:NoSchedule").operator == "Equal"
    assert Toleration.parse("dedicated:PreferNoSchedule") == Toleration(key="dedicated", effect="PreferNoSchedule")
    assert Toleration.parse("dedicated:PreferNoSchedule").operator == "Exists"
    assert parse_node_selector("cloud.google.com/gke-nodepool=gpu-pool") == ("cloud.google.com/gke-nodepool", "gpu-pool")
    assert SecretEnv.parse("s3:id=AWS_ACCESS_KEY_ID,key=AWS_SECRET_ACCESS_KEY").key_to_env == {
        "id": "AWS_ACCESS_KEY_ID", "key": "AWS_SECRET_ACCESS_KEY"
    }
    assert SecretVolume.parse("gcp-sa:/var/secrets/google") == SecretVolume("gcp-sa", "/var/secrets/google")
    with pytest.raises(ValueError, match="GPU count 3"):
        ClusterPlatform(gpu_count=3)
