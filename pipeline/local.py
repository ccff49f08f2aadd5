"""Runs the whole DAG on this machine with kfp.local (subprocesses in this environment) and summarises each step."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings

from components.common import errors, progress
from components.report.records import RunResult, StepRecord, step_figures
from components.report.render import render

LOGS_DIR = "logs"  # <run_dir>/logs/<step>.log: every step's full output (the KFP executor's included)
REPORT_FILE = "report.html"  # <run_dir>/report.html: the run report, with the step times
# Lines of a failed step's log shown on the console under its name.
FAILED_LOG_TAIL = 15


def _describe(value):
    path = getattr(value, "path", None)
    if path is not None:
        return path
    return value


BAR_WIDTH = 20  # characters of a progress bar on the console


def format_bar(line, seconds: float) -> str:
    """A progress line as the console's bar: `download  [#########...........]  45%  1,125/2,500 URLs  12 s`."""
    share = min(1.0, line.done / line.total) if line.total > 0 else 0.0
    filled = int(share * BAR_WIDTH)
    unit = f" {line.unit}" if line.unit else ""
    return (f"{line.what:<16} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%}  "
            f"{line.done:,}/{line.total:,}{unit}  {seconds:.0f} s")


class _Console:
    """What a person sees of a local run: a line when each step starts and when it ends, a live last line on a
    terminal (a bar while the step prints progress lines), every step's full output kept in
    <run_dir>/logs/<step>.log (and shown as it comes with verbose)."""

    def __init__(self, log_dir: str, verbose: bool, stream=None, clock=time.monotonic):
        self.log_dir = log_dir
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.live = not verbose and self.stream.isatty()
        self.clock = clock
        self.log = None
        self.step = ""  # the step running now
        self.started = 0.0  # when it started (clock)
        self.bar = None  # its latest progress line (components.common.progress.Line) while the work goes on

    def say(self, line: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        self.stream.flush()

    def start(self, step: str) -> str:
        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.log_dir, f"{step}.log")
        self.log = open(path, "w")
        self.step, self.started, self.bar = step, self.clock(), None
        if not self.verbose:
            self.say(f"{step:<16} started")
        return path

    def line(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text)
            self.log.flush()
        if self.verbose:
            self.stream.write(text)
            return
        if not self.live or not text.strip():
            return  # off a terminal the console has only the start and end lines
        bar = progress.parse(text)
        if bar is not None:
            self.bar = bar
            shown = format_bar(bar, self.clock() - self.started)
        elif self.bar is not None and self.bar.done < self.bar.total:
            return  # the bar stays while its work goes on; the line is in the log
        else:
            shown = "    " + text.strip()  # the step's latest line, overwritten
        # One screen line, or \r cannot overwrite it: a bar keeps its head, a log line its tail.
        width = shutil.get_terminal_size((100, 24)).columns - 1
        if len(shown) > width:
            shown = shown[:width] if bar is not None else "    " + shown[-(width - 4):]
        self.stream.write("\r\033[K" + shown)
        self.stream.flush()

    def end(self, rec: StepRecord) -> None:
        """Closes the step's log and says how the step ended. A failed step that refused its input (its log has a
        refusal line) gets that line, and rec.refusal is its message; one that crashed gets its log's last lines,
        where the traceback is."""
        if self.log is not None:
            self.log.close()
            self.log = None
        lines = []
        if rec.status == "failed":
            try:
                with open(rec.log) as f:
                    lines = [line.rstrip() for line in f if line.strip()]
            except OSError:
                pass
            refusal = errors.find_refusal("\n".join(lines))
            rec.refusal = refusal.message if refusal else ""
        if self.verbose:
            return
        figures = f"  {rec.figures}" if rec.figures else ""
        self.say(f"{rec.name:<16} {rec.status:<10} {rec.seconds:6.1f}s{figures}")
        if rec.status == "failed":
            # A refusal is the whole story; the KFP executor's lines around it stay in the log.
            shown = [errors.refusal_line(rec.name, rec.refusal)] if rec.refusal else lines[-FAILED_LOG_TAIL:]
            for line in shown:
                self.say("    | " + line)
            self.say(f"    full log: {rec.log}")


@contextlib.contextmanager
def _record_steps(records: dict[str, StepRecord], console: _Console):
    """Wraps kfp.local's task dispatcher to time each task and keep its status, outputs and log.

    kfp.local only logs per-task status, and streams each task's output to the console; the
    summary a user wants (status, time, key figures, where the outputs and the log are) needs
    the same facts as data, and the executor's own lines belong in the step's log file.
    """
    from kfp.local import logging_utils, subprocess_task_handler, task_dispatcher
    from kfp.local import status as kfp_status

    original = task_dispatcher.run_single_task_implementation
    original_subprocess = subprocess_task_handler.run_local_subprocess
    original_logger = logging_utils.local_logger_context
    original_rule = logging_utils.print_horizontal_line

    def timed(*args, **kwargs):
        name = kwargs.get("component_name") or (args[1] if len(args) > 1 else "?")
        step = name.removeprefix("comp-")
        rec = records.setdefault(step, StepRecord(step))
        rec.status = "running"
        rec.log = console.start(step)
        start = time.monotonic()
        try:
            outputs, st = original(*args, **kwargs)
        except BaseException:
            rec.status = "failed"
            rec.seconds = time.monotonic() - start
            console.end(rec)
            raise
        rec.seconds = time.monotonic() - start
        rec.status = "succeeded" if st == kfp_status.Status.SUCCESS else "failed"
        rec.outputs = {k: _describe(v) for k, v in (outputs or {}).items()}
        rec.figures = step_figures(step, rec.outputs) if rec.status == "succeeded" else ""
        console.end(rec)
        return outputs, st

    def run_and_keep(full_command) -> int:
        import subprocess

        with subprocess.Popen(full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as process:
            for line in iter(process.stdout.readline, ""):
                console.line(line)
            return process.wait()

    @contextlib.contextmanager
    def quiet_logger():
        # kfp.local's own INFO lines (the executor input, each output's repr) go to the log, not the console.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        handler = logging.StreamHandler(_LogWriter(console))
        handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)

    task_dispatcher.run_single_task_implementation = timed
    subprocess_task_handler.run_local_subprocess = run_and_keep
    if not console.verbose:
        logging_utils.local_logger_context = quiet_logger
        logging_utils.print_horizontal_line = lambda: None  # kfp.local's rule between tasks
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original
        subprocess_task_handler.run_local_subprocess = original_subprocess
        logging_utils.local_logger_context = original_logger
        logging_utils.print_horizontal_line = original_rule


class _LogWriter:
    """A file-like object for a logging handler: kfp.local's records go to the running step's log."""

    def __init__(self, console: _Console):
        self.console = console

    def write(self, text: str) -> None:
        if self.console.log is not None:
            self.console.log.write(text)

    def flush(self) -> None:
        if self.console.log is not None:
            self.console.log.flush()


def run_pipeline(arguments: dict, run_dir: str, pipeline_func=None, verbose: bool = False,
                 containers=None, steps=None) -> RunResult:
    """Runs the DAG with kfp.local, pipeline root run_dir: each step a subprocess in this Python environment
    (SubprocessRunner), or, given `containers` (a pipeline.containers.ContainerRun), each step in a container of its
    image (DockerRunner), as a cluster runs it. steps: the step names of pipeline_func, in order, when it is another
    DAG than pipeline.dag's (e.g. pipeline/annotate_dag.py's).

    The console gets a line as each step starts and ends; each step's full output is kept in
    run_dir/logs/<step>.log (verbose also streams it to the console, as kfp.local does).
    """
    from kfp import local

    from pipeline.dag import STEPS

    names = tuple(steps or STEPS)
    os.makedirs(run_dir, exist_ok=True)
    console = _Console(os.path.join(run_dir, LOGS_DIR), verbose)
    if containers is None:
        if pipeline_func is None:
            from pipeline.dag import au_pipeline as pipeline_func
        # use_venv=False: every step runs with this interpreter, so the project's own, already
        # installed environment is what the steps import (no pip at run time).
        runner, in_containers = local.SubprocessRunner(use_venv=False), contextlib.nullcontext()
    else:
        from pipeline.containers import container_settings, run_tasks_in_containers
        from pipeline.dag import build_pipeline
        from pipeline.platform import ImagePlatform

        pipeline_func = pipeline_func or build_pipeline(ImagePlatform(containers.image_cpu, containers.image_gpu))
        settings = container_settings(arguments, run_dir, containers.uid, containers.gid, containers.environ)
        runner = local.DockerRunner()
        in_containers = run_tasks_in_containers(settings, lambda: console.step, console.line)
    local.init(runner=runner, pipeline_root=os.path.abspath(run_dir), raise_on_error=False)
    records: dict[str, StepRecord] = {name: StepRecord(name) for name in names}
    error = ""
    with warnings.catch_warnings():
        # kfp.local warns that our cluster images are not python images; they are not used here.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        with _record_steps(records, console), in_containers:
            try:
                pipeline_func(**arguments)
            except Exception as e:  # kfp.local raises when the pipeline fails even with raise_on_error=False
                error = f"{type(e).__name__}: {e}"
    steps = [records[n] for n in names]
    ok = all(s.status == "succeeded" for s in steps)
    refused = next((s for s in steps if s.refusal), None)
    if refused is not None:  # the cause in the step's words, whatever kfp.local raised about it
        error = f"{refused.name} refused: {refused.refusal}; its log: {refused.log}"
    elif not ok and not error:
        failed = [s.name for s in steps if s.status == "failed"]
        error = (f"step {failed[0]} failed; its log: {records[failed[0]].log}" if failed
                 else "the pipeline stopped early")
    return RunResult(run_dir=run_dir, ok=ok, steps=steps, error=error)


def format_summary(result: RunResult) -> str:
    """Each step, its status, its time and where its outputs are."""
    lines = [f"{'step':<16} {'status':<10} {'time':>8}  outputs"]
    for s in result.steps:
        outs = "; ".join(f"{k}: {v}" for k, v in s.outputs.items()) if s.outputs else "-"
        t = f"{s.seconds:7.1f}s" if s.status not in ("not run",) else "       -"
        lines.append(f"{s.name:<16} {s.status:<10} {t:>8}  {outs}")
    total = sum(s.seconds for s in result.steps)
    lines.append(f"{'total':<16} {'ok' if result.ok else 'FAILED':<10} {total:7.1f}s  pipeline root: {result.run_dir}")
    return "\n".join(lines)


def step_json(s: StepRecord) -> dict:
    """One step of run_summary.json (load_result reads it back)."""
    return {"name": s.name, "status": s.status, "seconds": round(s.seconds, 2), "log": s.log, "figures": s.figures,
            "refusal": s.refusal, "outputs": {k: str(v) for k, v in s.outputs.items()}}


def write_summary(result: RunResult) -> str:
    path = os.path.join(result.run_dir, "run_summary.json")
    with open(path, "w") as f:
        json.dump(
            {
                "ok": result.ok,
                "error": result.error,
                "steps": [step_json(s) for s in result.steps],
            },
            f,
            indent=2,
        )
    return path


def load_result(run_dir: str) -> RunResult:
    """The RunResult of a finished run, read back from its run_summary.json."""
    with open(os.path.join(run_dir, "run_summary.json")) as f:
        d = json.load(f)
    steps = [StepRecord(s["name"], s["status"], s["seconds"], dict(s.get("outputs") or {}), s.get("log", ""),
                        s.get("figures", ""), s.get("refusal", "")) for s in d["steps"]]
    return RunResult(run_dir=os.path.abspath(run_dir), ok=d["ok"], steps=steps, error=d.get("error", ""))


def write_report(result: RunResult) -> str:
    """Writes <run_dir>/report.html, the report package's page of this run with its step times; returns its path."""
    path = os.path.join(result.run_dir, REPORT_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(render(result))
    os.replace(path + ".tmp", path)
    return path
