"""The pipeline's parameters as flags of `pipeline.py run`: every parameter, its type, its default, its help."""
import argparse

import pytest

from components.download.params import SPEC as DOWNLOAD
from components.filter.params import SPEC as FILTER
from components.train.params import SPEC as TRAIN
from pipeline.dag import au_pipeline
from pipeline.params import add_pipeline_parameter_flags, pipeline_arguments, pipeline_parameters


def parser():
    p = argparse.ArgumentParser()
    add_pipeline_parameter_flags(p)
    return p


def test_every_pipeline_parameter_is_a_flag_with_help():
    params = pipeline_parameters(au_pipeline)
    assert len(params) >= 30
    help_text = parser().format_help()
    for name, typ, default, doc in params:
        assert doc, f"pipeline parameter {name} has no description"
        assert "--" + name.replace("_", "-") in help_text
    names = [p[0] for p in params]
    for required in ("source", "backbone", "image_size", "epochs", "batch_size", "task", "aus", "policy", "registry"):
        assert required in names


def test_only_given_flags_override_the_defaults():
    args = parser().parse_args(["--epochs", "3", "--backbone", "vgg16", "--no-download-allow-private", "--learning-rate", "0.01"])
    assert pipeline_arguments(args) == {"epochs": 3, "backbone": "vgg16", "download_allow_private": False, "learning_rate": 0.01}
    assert pipeline_arguments(parser().parse_args([])) == {}


def test_defaults_come_from_the_steps_declarations():
    params = {n: d for n, _, d, _ in pipeline_parameters(au_pipeline)}
    assert params["epochs"] == TRAIN.defaults.epochs
    assert params["aus"] == FILTER.defaults.aus
    assert params["download_workers"] == DOWNLOAD.defaults.workers


def test_a_wrong_flag_type_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["--epochs", "many"])
    assert e.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_presets_set_the_study_s_experiments_and_flags_beside_them_win():
    import argparse

    from pipeline.params import add_pipeline_parameter_flags, pipeline_arguments

    p = argparse.ArgumentParser()
    add_pipeline_parameter_flags(p)
    sixty = pipeline_arguments(p.parse_args(["--preset", "study-60au"]))
    assert sixty == {"aus": ",".join(str(a) for a in range(1, 61)), "policy": "zero"}
    study = pipeline_arguments(p.parse_args(["--preset", "study-11au", "--backbone", "vgg16", "--epochs", "3"]))
    assert study["optimizer"] == "rmsprop" and study["learning_rate"] == 0.001 and study["policy"] == "drop"
    assert study["backbone"] == "vgg16" and study["epochs"] == 3 and study["batch_size"] == 0  # 0: VGG16's 32
    assert pipeline_arguments(p.parse_args([])) == {}
    with pytest.raises(SystemExit):
        p.parse_args(["--preset", "study-99au"])


def _pipeline_cli():
    """pipeline.py, the script (the package pipeline/ has its name)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("pipeline_cli_presets", Path(__file__).parents[2] / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_defaults_are_the_real_photo_recipe_and_the_demo_preset_is_the_cpu_one():
    from components.common.faces import FACE_PARAMS
    from pipeline import defaults

    params = {n: d for n, _, d, _ in pipeline_parameters(au_pipeline)}
    assert (params["backbone"], params["weights"], params["image_size"], params["fine_tune"]) == (
        "resnet50", "imagenet", 0, "full")
    assert (params["optimizer"], params["learning_rate"], params["batch_size"], params["epochs"]) == (
        "adamw", 0.001, 64, 20)
    assert params["face_size"] == 224 == next(p.default for p in FACE_PARAMS if p.name == "face_size")
    demo = defaults.PRESETS[defaults.DEMO_PRESET]
    # What `make run` trained with before the defaults changed: its console and results stay the same.
    assert demo == {"backbone": "compactcnn", "weights": "none", "image_size": 0, "fine_tune": "full", "epochs": 16,
                    "batch_size": 0, "optimizer": "adam", "learning_rate": 0.002, "face_size": 160}
    for name, preset in defaults.PRESETS.items():
        assert set(preset) <= set(params), f"preset {name} sets what is not a pipeline parameter"


def test_run_without_source_takes_the_demo_preset_under_other_presets_and_flags(tmp_path):
    from pipeline import defaults

    cli = _pipeline_cli()
    p = argparse.ArgumentParser()
    cli.add_run_arguments(p)
    runs = ["--runs-dir", str(tmp_path)]
    demo = defaults.PRESETS[defaults.DEMO_PRESET]
    plain = cli._local_arguments(p.parse_args(runs), "run")
    assert {k: plain[k] for k in demo} == demo
    flagged = cli._local_arguments(p.parse_args([*runs, "--epochs", "2", "--backbone", "resnet50"]), "run")
    assert (flagged["epochs"], flagged["backbone"], flagged["weights"]) == (2, "resnet50", "none")
    study = cli._local_arguments(p.parse_args([*runs, "--preset", "study-60au"]), "run")
    assert study["policy"] == "zero" and study["backbone"] == "compactcnn"
    # A real sheet gets the pipeline's own defaults: none of the demo's values is passed.
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("url\n")
    real = cli._local_arguments(p.parse_args([*runs, "--source", str(sheet)]), "run")
    assert not set(demo) & set(real)
