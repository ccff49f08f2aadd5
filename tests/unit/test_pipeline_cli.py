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
