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
from dataclasses import dataclass, field

from components.common import errors, progress

LOGS_DIR = "logs"  # <run_dir>/logs/<step>.log: every step's full output (the KFP executor's included)
# Lines of a failed step's log shown on the console under its name.
FAILED_LOG_TAIL = 15


@dataclass
class StepRecord:
    name: str
    status: str = "not run"
    seconds: float | None = 0.0  # None where it is not known (the report step on a cluster)
    outputs: dict = field(default_factory=dict)  # output name -> local path or value
    log: str = ""  # the step's full output
    figures: str = ""  # its key figures, one line for a person
    refusal: str = ""  # why the step refused its input (its `refused: <step>: <message>` line); "" when it did not


@dataclass
class RunResult:
    run_dir: str
    ok: bool
    steps: list[StepRecord]
    error: str = ""

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)

    def output_path(self, step: str, output: str) -> str | None:
        s = self.step(step)
        return s.outputs.get(output) if s else None


def _describe(value):
    path = getattr(value, "path", None)
    if path is not None:
        return path
    return value


def read_json(folder, name: str) -> dict:
    """A step output's JSON file as a dict; {} when the folder or file is missing or unreadable."""
    try:
        with open(os.path.join(str(folder), name)) as f:
            return json.load(f)
    except (OSError, ValueError, TypeError):
        return {}


def step_figures(step: str, outputs: dict) -> str:
    """The few numbers a person wants from a finished step, read from its outputs (contracts 1-6)."""
    from components.common import evaluation, examples, ledger, manifest, model, registry, validation

    if step == "ingest":
        s = read_json(outputs.get("manifest"), manifest.INGEST_SUMMARY_FILE)
        return f"{s['kept']} rows kept, {s['rejected']} rejected" if s else ""
    if step == "download":
        s = read_json(outputs.get("downloads"), ledger.DOWNLOAD_SUMMARY_FILE)
        return f"{s['ok']} images ok, {s['failed']} failed" if s else ""
    if step == "validate":
        s = read_json(outputs.get("validation"), validation.VALIDATION_SUMMARY_FILE)
        return f"{s.get('anomaly_count', 0)} anomalies, failure rate {s.get('failure_rate', 0):.1%}" if s else ""
    if step in ("convert", "filter-examples"):
        s = read_json(outputs.get("examples") or outputs.get("filtered"), examples.EXAMPLES_SUMMARY_FILE)
        if not s:
            return ""
        splits = " / ".join(str(s["splits"].get(name, {}).get("examples", 0)) for name in examples.SPLITS)
        out = f"{splits} train/validation/test examples"
        if step == "convert":
            from components.common.faces import face_counters

            c = face_counters(s["counters"])
            out += f"; {c['faces_cropped']} face crops, {c['faces_skipped']} skipped without a face"
        return out
    if step == "train":
        h = read_json(outputs.get("model"), model.HISTORY_FILE)
        if not h:
            return ""
        epochs = len(h["epochs"]) if isinstance(h.get("epochs"), list) else h.get("epochs")
        loss = h.get("best_val_loss")
        return (f"{epochs} epochs, best validation loss {loss:.3f} (epoch {h.get('best_epoch')})" if loss is not None
                else f"{epochs} epochs")
    if step == "evaluate":
        m = read_json(outputs.get("evaluation"), evaluation.METRICS_FILE)
        b = read_json(outputs.get("evaluation"), evaluation.BLESSING_FILE)
        if not m or "at_default" not in m:
            return ""
        d = m["at_default"]["macro"]
        return f"macro F1 {d['f1']:.3f}, AUC {d['auc']:.3f}; {'blessed' if b.get('blessed') else 'not blessed'}"
    if step == "push":
        p = read_json(outputs.get("pushed"), registry.PUSH_FILE)
        return (f"pushed version {p['version']}" if p.get("pushed") else "not pushed") if p else ""
    return ""


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
                 containers=None) -> RunResult:
    """Runs the DAG with kfp.local, pipeline root run_dir: each step a subprocess in this Python environment
    (SubprocessRunner), or, given `containers` (a pipeline.containers.ContainerRun), each step in a container of its
    image (DockerRunner), as a cluster runs it.

    The console gets a line as each step starts and ends; each step's full output is kept in
    run_dir/logs/<step>.log (verbose also streams it to the console, as kfp.local does).
    """
    from kfp import local

    from pipeline.dag import STEPS

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
    records: dict[str, StepRecord] = {name: StepRecord(name) for name in STEPS}
    error = ""
    with warnings.catch_warnings():
        # kfp.local warns that our cluster images are not python images; they are not used here.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        with _record_steps(records, console), in_containers:
            try:
                pipeline_func(**arguments)
            except Exception as e:  # kfp.local raises when the pipeline fails even with raise_on_error=False
                error = f"{type(e).__name__}: {e}"
    steps = [records[n] for n in STEPS]
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
