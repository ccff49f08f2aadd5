"""Each step's one declaration (components/<step>/params.py) agrees with its KFP component, its CLI and logic.run."""
import importlib
import inspect
import re

import pytest


# --- ingest, download, validate, publish ------------------------------------------------------------------------------
# Each step and the fewest arguments its CLI needs.
IO_STEPS = {
    "ingest": ["--source", "sheet.csv", "--output", "out"],
    "download": ["--manifest", "m", "--output", "out"],
    "validate": ["--manifest", "m", "--downloads", "d", "--output", "out"],
    "publish": ["--source", "s", "--destination", "d"],
}
# Every flag these CLIs accepted before they were built from the declaration, with a value where one is taken: they
# must all still parse (scripts and docs use them).
IO_STEP_OLD_FLAGS = {
    "ingest": [],
    "download": ["--store", "s", "--workers", "2", "--timeout", "1.5", "--max-attempts", "2", "--max-bytes", "10",
                 "--no-allow-private", "--deadline", "4", "--per-host", "3", "--max-pixels", "100",
                 "--max-redirects", "1", "--retry-permanent", "--backoff", "0.5", "--backoff-max", "2",
                 "--retry-after-max", "5", "--min-ok", "0.5", "--no-progress"],
    "validate": ["--schema", "runs/schema", "--max-anomalies", "3"],
    "publish": [],
}


def _io_step(step):
    spec = importlib.import_module(f"components.{step}.params").SPEC
    return spec, importlib.import_module(f"components.{step}.__main__")


@pytest.mark.parametrize("step", sorted(IO_STEPS))
def test_io_step_component_signature_is_its_declaration(step):
    spec, _ = _io_step(step)
    component = getattr(importlib.import_module(f"components.{step}.component"), step)
    assert spec.check_component(component) == []


@pytest.mark.parametrize("step", sorted(IO_STEPS))
def test_io_step_cli_defaults_are_the_declaration_s(step):
    spec, cli = _io_step(step)
    values = spec.values(cli.build_parser().parse_args(IO_STEPS[step]))
    assert set(values) == {p.name for p in spec.params}
    for p in spec.params:
        if not p.required:
            assert values[p.name] == p.default and type(values[p.name]) is type(p.default), p.name


@pytest.mark.parametrize("step", sorted(IO_STEPS))
def test_io_step_cli_still_accepts_its_old_flags(step):
    _, cli = _io_step(step)
    cli.build_parser().parse_args(IO_STEPS[step] + IO_STEP_OLD_FLAGS[step])


def test_download_cli_flags_reach_their_parameters():
    spec, cli = _io_step("download")
    args = cli.build_parser().parse_args(IO_STEPS["download"] + IO_STEP_OLD_FLAGS["download"])
    assert spec.values(args) == dict(
        spec.defaults.as_dict(), store="s", workers=2, timeout=1.5, max_attempts=2, max_bytes=10, allow_private=False,
        deadline=4.0, per_host=3, max_pixels=100, max_redirects=1, retry_permanent=True, backoff=0.5, backoff_max=2.0,
        retry_after_max=5.0, min_ok=0.5)
    assert args.no_progress is True and args.manifest == "m" and args.downloads == "out"


@pytest.mark.parametrize("step", sorted(IO_STEPS))
def test_io_step_logic_run_defaults_are_the_declaration_s(step):
    spec, _ = _io_step(step)
    run = importlib.import_module(f"components.{step}.logic").run
    declared = spec.defaults.as_dict()
    with_default = {n: p.default for n, p in inspect.signature(run).parameters.items()
                    if n in declared and p.default is not inspect.Parameter.empty}
    assert with_default == {n: declared[n] for n in with_default}
    # Every optional parameter of the declaration has its default in logic.run (a required one may have none).
    assert set(with_default) == {p.name for p in spec.params if not p.required}


# --- convert, faces, filter ------------------------------------------------------------------------------------------
# Each CLI and the fewest arguments it needs; the faces CLI is no pipeline step (no component): its SPEC is a CLI's.
FACE_STEPS = {
    "convert": ["--manifest", "m", "--downloads", "d", "--output", "out"],
    "filter": ["--examples", "e", "--output", "out"],
    "faces": ["a.jpg"],
}
# Every flag these CLIs accepted before they were built from the declaration, with a value where one is taken.
FACE_STEP_OLD_FLAGS = {
    "convert": ["--validation-fraction", "0.2", "--test-fraction", "0.1", "--max-side", "256",
                "--beam-args=--runner=DirectRunner", "--faces", "whole", "--no-face", "whole", "--face-size", "128",
                "--face-margin", "0.3", "--face-min-score", "0.6"],
    "filter": ["--aus", "1,2,4", "--policy", "drop", "--beam-args=--runner=DirectRunner"],
    "faces": ["b.png", "--output", "crops", "--no-face", "whole", "--face-size", "128", "--face-margin", "0.3",
              "--face-min-score", "0.6", "--json"],
}


def _face_step(step):
    spec = importlib.import_module(f"components.{step}.params").SPEC
    return spec, importlib.import_module(f"components.{step}.__main__")


@pytest.mark.parametrize("step, component", [("convert", "convert"), ("filter", "filter_examples")])
def test_convert_and_filter_component_signatures_are_their_declarations(step, component):
    spec, _ = _face_step(step)
    assert spec.check_component(getattr(importlib.import_module(f"components.{step}.component"), component)) == []


@pytest.mark.parametrize("step", sorted(FACE_STEPS))
def test_convert_faces_filter_cli_help_lists_every_declared_flag_with_its_help(step, capsys):
    spec, cli = _face_step(step)
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    squeezed = "".join(text.split())  # argparse wraps lines, at hyphens too
    flags = set(re.findall(r"--[a-z0-9-]+", text))
    for p in spec.params:
        assert p.cli_flag in flags, f"{step}: {p.cli_flag} missing from --help"
        assert "".join(p.help.split()) in squeezed, f"{step}: the help of {p.name} differs from its declaration"
    for a in spec.inputs + spec.outputs:
        assert "".join(a.help.split()) in squeezed, f"{step}: the help of {a.name} differs from its declaration"
        if a.flag != "-":
            assert (a.flag or "--" + a.name.replace("_", "-")) in flags, f"{step}: no flag for {a.name}"


@pytest.mark.parametrize("step", sorted(FACE_STEPS))
def test_convert_faces_filter_cli_defaults_are_the_declaration_s(step):
    spec, cli = _face_step(step)
    values = spec.values(cli.build_parser().parse_args(FACE_STEPS[step]))
    assert values == spec.defaults.as_dict()
    assert all(type(values[p.name]) is type(p.default) for p in spec.params)


@pytest.mark.parametrize("step", sorted(FACE_STEPS))
def test_convert_faces_filter_cli_still_accept_their_old_flags(step):
    spec, cli = _face_step(step)
    values = spec.values(cli.build_parser().parse_args(FACE_STEPS[step] + FACE_STEP_OLD_FLAGS[step]))
    # Each old flag reached its parameter: none kept its default.
    assert [n for n, v in values.items() if v == spec.defaults.as_dict()[n]] == []


def test_the_faces_cli_declares_the_face_settings_but_the_mode():
    from components.common.faces import FACE_PARAMS
    from components.faces.params import SPEC

    assert SPEC.params == tuple(p for p in FACE_PARAMS if p.name != "faces")


def test_face_settings_and_the_detector_default_to_the_face_declaration():
    from components.common import faces
    from components.common.facefinder import detect

    settings = faces.FaceSettings()
    declared = {p.name: p.default for p in faces.FACE_PARAMS}
    assert (settings.mode, settings.no_face, settings.size, settings.margin, settings.min_score) == (
        declared["faces"], declared["no_face"], declared["face_size"], declared["face_margin"],
        declared["face_min_score"])
    assert inspect.signature(detect.get).parameters["min_score"].default == declared["face_min_score"]
    assert inspect.signature(detect.get).parameters["max_side"].default == faces.DETECT_MAX_SIDE


@pytest.mark.parametrize("step", ["convert", "filter"])
def test_convert_and_filter_logic_run_defaults_are_the_declaration_s(step):
    spec, _ = _face_step(step)
    run = importlib.import_module(f"components.{step}.logic").run
    declared = spec.defaults.as_dict()
    # convert takes the face settings as one FaceSettings, `faces` (its defaults: the test above).
    face_names = {p.name for p in importlib.import_module("components.common.faces").FACE_PARAMS}
    with_default = {n: p.default for n, p in inspect.signature(run).parameters.items()
                    if n in declared and n not in face_names}
    assert with_default == {n: declared[n] for n in with_default}
    assert set(with_default) == set(declared) - face_names


# --- train, evaluate, push, report -------------------------------------------------------------------------------------
REPORT_FOLDERS = ["--manifest", "m", "--downloads", "d", "--validation", "v", "--examples", "e", "--filtered", "f",
                  "--model", "mo", "--evaluation", "ev", "--pushed", "p"]
# Each step, its component's name and the fewest arguments its CLI needs.
MODEL_STEPS = {
    "train": ("train", ["--examples", "e", "--output", "out"]),
    "evaluate": ("evaluate", ["--examples", "e", "--model", "m", "--output", "out"]),
    "push": ("push", ["--model", "m", "--evaluation", "ev", "--destination", "reg"]),
    "report": ("report", REPORT_FOLDERS + ["--output", "r.html"]),
}
# Every flag these CLIs accepted before they were built from the declaration, each with a value other than its default.
MODEL_STEP_OLD_FLAGS = {
    "train": ["--task", "va", "--backbone", "vgg16", "--image-size", "64", "--weights", "none", "--fine-tune", "head",
              "--epochs", "3", "--batch-size", "8", "--optimizer", "rmsprop", "--learning-rate", "0.01", "--seed", "7",
              "--checkpoint-dir", "ck", "--no-augment", "--lr-decay", "0.5", "--lr-decay-epochs", "3", "--l2", "0.001",
              "--dropout", "0.5", "--rmsprop-rho", "0.8", "--rmsprop-momentum", "0.7", "--epsilon", "0.001",
              "--backbone-lr-multiplier", "0.5", "--patience", "2", "--pos-weight", "balanced", "--max-pos-weight",
              "5", "--bn-momentum", "0.99", "--cache-mb", "10", "--shuffle-buffer", "16", "--no-mixed-precision",
              "--steps-per-epoch", "4"],
    "evaluate": ["--registry", "gs://b/r", "--model-name", "m2", "--min-macro-f1", "0.1", "--min-macro-auc", "0.2",
                 "--tolerance", "0.3", "--batch-size", "8", "--manifest", "mf"],
    "push": ["--model-name", "m2", "--force", "--keep", "3", "--output", "o", "--no-infra-validate",
             "--infra-image", "emotionet-au/pipeline-cpu:local"],
    "report": ["--run-name", "nightly"],
}
# The old flags that name their default: they must still parse too.
MODEL_STEP_OLD_DEFAULT_FLAGS = {"train": ["--augment", "--mixed-precision"], "evaluate": ["--registry", ""],
                                "push": [], "report": []}


@pytest.mark.parametrize("step", sorted(MODEL_STEPS))
def test_train_evaluate_push_report_component_signatures_are_their_declarations(step):
    spec, _ = _io_step(step)
    component = getattr(importlib.import_module(f"components.{step}.component"), MODEL_STEPS[step][0])
    assert spec.check_component(component) == []


@pytest.mark.parametrize("step", sorted(set(IO_STEPS) | set(MODEL_STEPS)))
def test_every_step_cli_help_lists_every_declared_flag_with_its_help(step, capsys):
    spec, cli = _io_step(step)
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    squeezed = "".join(text.split())  # argparse wraps lines, at hyphens too
    flags = set(re.findall(r"--[a-z0-9-]+", text))
    for p in spec.params:
        assert p.cli_flag in flags, f"{step}: {p.cli_flag} missing from --help"
        assert "".join(p.help.split()) in squeezed, f"{step}: the help of {p.name} differs from its declaration"
    for a in spec.inputs + spec.outputs:
        if a.flag != "-":
            assert "".join(a.help.split()) in squeezed, f"{step}: the help of {a.name} differs from its declaration"
            assert (a.flag or "--" + a.name.replace("_", "-")) in flags, f"{step}: no flag for {a.name}"


@pytest.mark.parametrize("step", sorted(MODEL_STEPS))
def test_train_evaluate_push_report_cli_defaults_are_the_declaration_s(step):
    spec, cli = _io_step(step)
    values = spec.values(cli.build_parser().parse_args(MODEL_STEPS[step][1]))
    assert set(values) == {p.name for p in spec.params}
    for p in spec.params:
        if not p.required:
            assert values[p.name] == p.default and type(values[p.name]) is type(p.default), p.name


def test_push_cli_still_needs_its_destination(capsys):
    _, cli = _io_step("push")
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--model", "m", "--evaluation", "ev"])
    assert e.value.code == 2 and "--destination" in capsys.readouterr().err


@pytest.mark.parametrize("step", sorted(MODEL_STEPS))
def test_train_evaluate_push_report_cli_still_accept_their_old_flags(step):
    spec, cli = _io_step(step)
    needed = MODEL_STEPS[step][1]
    cli.build_parser().parse_args(needed + MODEL_STEP_OLD_DEFAULT_FLAGS[step])
    old = MODEL_STEP_OLD_FLAGS[step]
    values = spec.values(cli.build_parser().parse_args(needed + old))
    # Each old flag reached its parameter: none kept its default (parameters added since have no old flag).
    artifact_flags = {a.flag or "--" + a.name.replace("_", "-") for a in spec.inputs + spec.outputs}
    param_of = {f: p.name for p in spec.params for f in (p.cli_flag, "--no-" + p.cli_flag[2:])}
    named = [param_of[a] for a in old if a.startswith("--") and a not in artifact_flags]
    assert [n for n in named if values[n] == spec.defaults.as_dict()[n]] == []


class _Called(Exception):
    """What a stand-in logic.run raises: the CLI's call, caught before any work."""


@pytest.mark.parametrize("step", sorted(MODEL_STEPS))
def test_train_evaluate_push_report_cli_flags_reach_logic_run(step, monkeypatch, tmp_path):
    spec, cli = _io_step(step)
    logic = importlib.import_module(f"components.{step}.logic")
    calls = []

    def run(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Called

    monkeypatch.setattr(logic, "run", run)
    needed = MODEL_STEPS[step][1]
    if step == "report":  # its CLI refuses a folder that is not there
        needed = [str(tmp_path) if a in REPORT_FOLDERS[1::2] else a for a in needed]
    args = cli.build_parser().parse_args(needed + MODEL_STEP_OLD_FLAGS[step])
    with pytest.raises(_Called):
        cli.main(needed + MODEL_STEP_OLD_FLAGS[step])
    (positional, keywords), = calls
    # An optional input artifact (evaluate's --manifest) comes as a keyword beside the parameters.
    optional = {a.name: getattr(args, a.name) for a in spec.inputs if not a.required}
    assert keywords == {**spec.values(args), **optional}
    assert optional in ({}, {"manifest": "mf"})
    # The artifacts come first, in logic.run's order.
    folders = {name: str(tmp_path) for name in REPORT_FOLDERS[::2]}
    assert list(positional) == {"train": ["e", "out"], "evaluate": ["e", "m", "out"], "push": ["m", "ev", "o"],
                                "report": [{k.lstrip("-"): v for k, v in folders.items()}, "r.html"]}[step]


@pytest.mark.parametrize("step", sorted(MODEL_STEPS))
def test_train_evaluate_push_report_logic_run_defaults_are_the_declaration_s(step):
    spec, _ = _io_step(step)
    run = importlib.import_module(f"components.{step}.logic").run
    declared = spec.defaults.as_dict()
    with_default = {n: p.default for n, p in inspect.signature(run).parameters.items()
                    if n in declared and p.default is not inspect.Parameter.empty}
    # Every parameter has its declared default in logic.run (push's destination too: the CLI alone needs it).
    assert with_default == declared


def test_report_reads_the_inputs_its_declaration_names():
    from components.report import logic
    from components.report.params import REPORT_INPUTS, SPEC

    assert logic.REPORT_INPUTS is REPORT_INPUTS
    assert [a.name for a in SPEC.inputs] == [name for name, _ in REPORT_INPUTS]


def test_no_step_and_nothing_in_common_imports_pipeline():
    """What import-linter's third contract says, read from the source itself: every step folder and common."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "components"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "pipeline"]
    assert found == []
