"""Unit tests of the local run's console (pipeline.local._Console): progress lines as a live bar on a terminal,
nothing but the start and end lines elsewhere, every line in the step's log."""
import io

from components.common import progress
from components.report.records import StepRecord
from pipeline import local


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_step(stream, lines, tmp_path, verbose=False, clock=None):
    console = local._Console(str(tmp_path / "logs"), verbose, stream=stream, clock=clock or Clock())
    log = console.start("download")
    for line in lines:
        console.line(line)
    console.end(StepRecord("download", "succeeded", 12.3, log=log, figures="1301 images ok, 0 failed"))
    return log


def test_format_bar():
    line = progress.Line("download", 1301, 2500, "URLs")
    assert local.format_bar(line, 12.4) == (
        "download         [##########..........]  52%  1,301/2,500 URLs  12 s")
    assert local.format_bar(progress.Line("train", 0, 0, ""), 0).startswith("train            [....................]   0%  0/0")
    assert "[####################] 100%" in local.format_bar(progress.Line("convert", 9, 7, "images"), 1)


def test_a_progress_line_is_a_live_bar_on_a_terminal(tmp_path):
    stream, clock = Terminal(), Clock()
    console = local._Console(str(tmp_path / "logs"), False, stream=stream, clock=clock)
    console.start("download")
    clock.now = 12.0
    console.line("progress: download 1301/2500 URLs\n")
    assert stream.getvalue().endswith(
        "\r\033[Kdownload         [##########..........]  52%  1,301/2,500 URLs  12 s")
    # While the work goes on, the step's other lines do not replace the bar ...
    console.line("fetched https://example.org/1.jpg\n")
    assert stream.getvalue().endswith("1,301/2,500 URLs  12 s")
    # ... once it is done, they do again, and the end line takes the screen line.
    console.line("progress: download 2500/2500 URLs\n")
    console.line("summary table\n")
    assert stream.getvalue().endswith("\r\033[K    summary table")
    console.end(StepRecord("download", "succeeded", 12.3, log=console.log.name))
    assert stream.getvalue().endswith("\r\033[Kdownload         succeeded    12.3s\n")
    assert "progress:" not in stream.getvalue()


def test_off_a_terminal_only_the_start_and_end_lines_and_the_log_keeps_every_line(tmp_path):
    stream = io.StringIO()
    lines = ["progress: download 0/2500 URLs\n", "a line of the step\n", "progress: download 2500/2500 URLs\n"]
    log = run_step(stream, lines, tmp_path)
    assert stream.getvalue().splitlines() == [
        "download         started", "download         succeeded    12.3s  1301 images ok, 0 failed"]
    with open(log) as f:
        assert f.read() == "".join(lines)


def test_verbose_streams_the_log_as_it_comes(tmp_path):
    stream = Terminal()
    lines = ["progress: download 0/2500 URLs\n", "a line of the step\n"]
    run_step(stream, lines, tmp_path, verbose=True)
    assert stream.getvalue() == "".join(lines)


def test_a_bar_or_a_line_wider_than_the_terminal_is_cut_to_one_screen_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    stream = Terminal()
    console = local._Console(str(tmp_path / "logs"), False, stream=stream, clock=Clock())
    console.start("train")
    console.line("progress: train 5/10 batches, epoch 1/2 and a long detail\n")
    shown = stream.getvalue().rsplit("\r\033[K", 1)[1]
    assert shown == "train            [##########..........]"[:39]
    console.line("progress: train 10/10 batches\n")
    console.line("x" * 30 + "the end of a long line\n")
    shown = stream.getvalue().rsplit("\r\033[K", 1)[1]
    assert len(shown) == 39 and shown.endswith("the end of a long line")


KFP_FAILURE = [
    "2026-01-01 00:00:00,000 - INFO - Looking for component `download` in --component_module_path `x.py`\n",
    "progress: download 300/300 URLs\n",
]
TASK_FAILED = "2026-01-01 00:00:02,000 - ERROR - Task 'download' finished with status FAILURE\n"


def fail_step(stream, lines, tmp_path, verbose=False):
    console = local._Console(str(tmp_path / "logs"), verbose, stream=stream, clock=Clock())
    rec = StepRecord("download", "failed", 2.0, log=console.start("download"))
    for line in lines:
        console.line(line)
    console.end(rec)
    return rec


def test_a_refused_step_shows_its_refusal_line_alone(tmp_path):
    stream = io.StringIO()
    refusal = "0 of 300 images downloaded (none): connection_refused 300 (100%). Is the image server running?"
    rec = fail_step(stream, KFP_FAILURE + [f"refused: download: {refusal}\n", TASK_FAILED], tmp_path)
    assert rec.refusal == refusal
    assert stream.getvalue().splitlines() == [
        "download         started", "download         failed        2.0s",
        f"    | refused: download: {refusal}", f"    full log: {rec.log}"]
    # run_summary.json keeps it, for the report and a sweep
    assert local.step_json(rec)["refusal"] == refusal


def test_a_crashed_step_shows_its_log_tail_with_the_traceback(tmp_path):
    stream = io.StringIO()
    crash = ["Traceback (most recent call last):\n", '  File "logic.py", line 9, in run\n',
             "KeyError: 'ok'\n", TASK_FAILED]
    rec = fail_step(stream, KFP_FAILURE + crash, tmp_path)
    assert rec.refusal == ""
    shown = stream.getvalue().splitlines()
    assert "    | Traceback (most recent call last):" in shown and "    | KeyError: 'ok'" in shown
    assert shown[-1] == f"    full log: {rec.log}"


def test_verbose_still_finds_the_refusal(tmp_path):
    stream = Terminal()
    rec = fail_step(stream, KFP_FAILURE + ["refused: download: no image\n", TASK_FAILED], tmp_path, verbose=True)
    assert rec.refusal == "no image"
    assert stream.getvalue() == "".join(KFP_FAILURE + ["refused: download: no image\n", TASK_FAILED])
