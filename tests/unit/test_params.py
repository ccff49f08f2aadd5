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
def test_io_step_cli_help_lists_every_declared_flag_with_its_help(step, capsys):
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
            assert (a.flag or "--" + a.name.replace("_", "-")) in flags, f"{step}: no flag for {a.name}"


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


def test_convert_faces_filter_and_common_import_nothing_from_pipeline():
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "components"
    found = []
    for folder in ("convert", "faces", "filter", "common"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                found += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "pipeline"]
    assert found == []
