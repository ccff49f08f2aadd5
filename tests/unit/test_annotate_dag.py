"""The annotate DAG (pipeline/annotate_dag.py): compiled by `compile.py --pipeline annotate` for a cluster, its
parameters as flags of `pipeline.py annotate` and `submit --pipeline annotate`, and what those refuse before any
step runs."""
import argparse
import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from components.annotate.params import SPEC as ANNOTATE
from pipeline import defaults
from pipeline.annotate_dag import STEPS, annotate_pipeline, build_images_pipeline
from pipeline.cluster import ClusterError, cli
from pipeline.params import pipeline_parameters

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compile_cli = _load("compile_cli_annotate", "compile.py")
pipeline_cli = _load("pipeline_cli_annotate", "pipeline.py")
CPU_IMG = "europe-docker.pkg.dev/p/au/pipeline-cpu:1.2.3"


def test_compile_writes_the_annotate_dag_for_a_cluster(tmp_path):
    out = tmp_path / "annotate.yaml"
    assert compile_cli.main(["--pipeline", "annotate", "--output", str(out), "--image-cpu", CPU_IMG,
                             "--cpu", "annotate=16:16"]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == defaults.ANNOTATE_PIPELINE_NAME
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS) == {"ingest", "download", "annotate"}
    inputs = tasks["annotate"]["inputs"]["artifacts"]
    assert inputs["manifest"]["taskOutputArtifact"] == {"producerTask": "ingest", "outputArtifactKey": "manifest"}
    assert inputs["downloads"]["taskOutputArtifact"] == {"producerTask": "download", "outputArtifactKey": "downloads"}
    label = spec["components"][tasks["annotate"]["componentRef"]["name"]]["executorLabel"]
    container = spec["deploymentSpec"]["executors"][label]["container"]
    assert container["image"] == CPU_IMG
    assert container["resources"]["resourceCpuLimit"] == "16"
    assert container["resources"]["resourceMemoryLimit"] == defaults.CLUSTER_RESOURCES["annotate"][3]
    # The DAG's inputs are described with the declarations' words (the KFP UI's form).
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["model"]["description"] == ANNOTATE.param("model").help
    assert params["annotate_batch_size"]["defaultValue"] == ANNOTATE.defaults.batch_size
    assert {"source", "download_store", "model", "which_faces", "beam_args"} <= set(params)


def test_the_images_form_imports_the_listing_and_runs_annotate_alone(tmp_path):
    from kfp import compiler

    out = tmp_path / "images.yaml"
    compiler.Compiler().compile(build_images_pipeline("/data/listing"), str(out))
    spec = yaml.safe_load(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"annotate", "importer"}
    artifacts = tasks["annotate"]["inputs"]["artifacts"]
    assert artifacts["manifest"] == artifacts["downloads"]  # the listing is both
    assert {n for n, _, _, _ in pipeline_parameters(build_images_pipeline("/x"))} == {
        p.dag_name for p in ANNOTATE.dag_params}


def test_pipeline_annotate_flags_are_the_annotate_dags(capsys):
    with pytest.raises(SystemExit) as e:
        pipeline_cli.main(["annotate", "--help"])
    assert e.value.code == 0
    text = "".join(capsys.readouterr().out.split())
    for name, _, _, _ in pipeline_parameters(annotate_pipeline):
        assert "--" + name.replace("_", "-") in text
    assert "--output" in text and "--preset" not in text and "--epochs" not in text


def test_pipeline_annotate_refuses_bad_arguments_before_any_step(tmp_path, capsys):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("http://x/1.jpg" + ",0" * 60 + "\n")
    runs = str(tmp_path / "runs")
    assert pipeline_cli.main(["annotate", "--source", str(sheet), "--runs-dir", runs]) == 2
    assert "give --source" in capsys.readouterr().err
    os.makedirs(tmp_path / "registry" / "au" / "20260101T000000Z-half" / "saved_model")
    assert pipeline_cli.main(["annotate", "--source", str(sheet), "--model", str(tmp_path / "registry" / "au"),
                              "--runs-dir", runs]) == 2
    assert "has no LATEST: no push to it has finished yet" in capsys.readouterr().err
    assert pipeline_cli.main(["annotate", "--source", str(tmp_path / "nope.xlsx"), "--model", "m",
                              "--runs-dir", runs]) == 2
    assert "nope.xlsx does not exist" in capsys.readouterr().err
    assert not os.path.exists(runs)  # nothing ran


def _submit_args(argv):
    parser = argparse.ArgumentParser()
    cli.add_submit_arguments(parser)
    return parser.parse_args(argv)


def test_submit_annotate_takes_the_annotate_dags_parameters_and_checks_their_uris():
    uris = ["--source", "gs://b/sheet.xlsx", "--download-store", "gs://b/store"]
    args = _submit_args(["--pipeline", "annotate", *uris, "--model", "gs://b/registry/au-detector",
                         "--annotate-batch-size", "64"])
    assert cli.cluster_parameters(args, scheduled=False) == {
        "source": "gs://b/sheet.xlsx", "download_store": "gs://b/store", "model": "gs://b/registry/au-detector",
        "annotate_batch_size": 64, "download_allow_private": False}
    with pytest.raises(ClusterError, match="--model 'runs/registry/au-detector': on a cluster it must be a gs://"):
        cli.cluster_parameters(_submit_args(["--pipeline", "annotate", *uris, "--model", "runs/registry/au-detector"]),
                               scheduled=False)
    with pytest.raises(ClusterError, match="pass --model gs://"):
        cli.cluster_parameters(_submit_args(["--pipeline", "annotate", *uris]), scheduled=False)
    with pytest.raises(ClusterError, match="--pipeline annotate takes no --epochs"):
        cli.cluster_parameters(_submit_args(["--pipeline", "annotate", *uris, "--model", "gs://b/m", "--epochs", "3"]),
                               scheduled=False)
