"""Unit tests of a step's refusal (components/common/errors.py): one line `refused: <step>: <message>`, exit status 2,
no traceback, in a component body and a CLI alike; a bug keeps its traceback."""
import importlib
import types

import pytest

from components.common import errors


class Refused(errors.StepRefusal):
    pass


def test_the_refusal_line_is_one_line_naming_the_step():
    assert errors.refusal_line("download", Refused("0 of 3 images downloaded")) == (
        "refused: download: 0 of 3 images downloaded")
    # a message over several lines is read as one: a step's log is searched line by line
    assert errors.refusal_line("validate", "2 anomalies:\n  AU2: values\n\n  AU4: values") == (
        "refused: validate: 2 anomalies: AU2: values AU4: values")
    assert errors.refusal_line("push", Refused()) == "refused: push: Refused"


def test_refuse_prints_the_line_on_stderr_and_returns_2(capsys):
    assert errors.refuse("ingest", Refused("sheet.csv is empty; expected the EmotioNet sheet")) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "refused: ingest: sheet.csv is empty; expected the EmotioNet sheet\n"


def test_refusals_ends_the_process_with_the_line_and_exit_2_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        with errors.refusals("evaluate"):
            print("scored 0 examples")
            raise Refused("the test split of ex/ has no example; rerun convert with --test-fraction above 0")
    assert e.value.code == 2
    assert e.value.__cause__ is None and e.value.__suppress_context__  # nothing for Python to print but the exit
    out, err = capsys.readouterr()
    assert out == "scored 0 examples\n"
    assert err.splitlines() == [
        "refused: evaluate: the test split of ex/ has no example; rerun convert with --test-fraction above 0"]


def test_refusals_lets_a_bug_through_with_its_traceback(capsys):
    with pytest.raises(ZeroDivisionError):
        with errors.refusals("train"):
            1 / 0
    with errors.refusals("train"):
        pass  # no refusal, nothing printed
    assert capsys.readouterr() == ("", "")


def test_find_refusal_reads_the_last_refusal_line_of_a_log():
    log = "\n".join([
        "2026-01-01 00:00:00,000 - INFO - Looking for component `download`",
        "progress: download 300/300 URLs",
        "refused: download: 0 of 300 images downloaded (none): connection_refused 300 (100%). Is the server up?",
        "2026-01-01 00:00:02,000 - ERROR - Task 'download' finished with status FAILURE",
    ])
    assert errors.find_refusal(log) == errors.Refusal(
        "download", "0 of 300 images downloaded (none): connection_refused 300 (100%). Is the server up?")
    assert errors.find_refusal(log).step == "download"
    assert errors.find_refusal("refused: filter: a\nrefused: filter: b\n").message == "b"


def test_find_refusal_finds_none_in_a_crash():
    log = ('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
           "ZeroDivisionError: division by zero\n"
           "ERROR - Task 'train' finished with status FAILURE\n"
           "the server refused: the step says so in passing\n")
    assert errors.find_refusal(log) is None
    assert errors.find_refusal("") is None


@pytest.mark.parametrize("module, name", [
    ("components.ingest.logic", "SheetError"),
    ("components.download.logic", "DownloadError"),
    ("components.validate.logic", "ValidateError"),
    ("components.validate.logic", "AnomaliesFound"),
    ("components.convert.logic", "ConvertError"),
    ("components.filter.logic", "FilterError"),
    ("components.train.plan", "TrainError"),
    ("components.evaluate.scoring", "EvaluateError"),
    ("components.push.logic", "PushError"),
    ("components.publish.logic", "PublishError"),
])
def test_every_step_refuses_with_a_step_refusal(module, name):
    # What the component bodies catch: a step error that is not a StepRefusal would end its run with a traceback.
    assert issubclass(getattr(importlib.import_module(module), name), errors.StepRefusal)


def test_a_component_body_refuses_with_one_line(tmp_path, capsys):
    from components.ingest.component import ingest

    sheet = tmp_path / "sheet.csv"
    sheet.write_text("")
    manifest = types.SimpleNamespace(path=str(tmp_path / "manifest"), uri="", metadata={})
    with pytest.raises(SystemExit) as e:
        ingest.python_func(source=str(sheet), manifest=manifest)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"refused: ingest: {sheet} is empty; expected the EmotioNet sheet (URL then AU1..AU60 "
                                "per row)"]
