"""A run's step records (status, time, outputs, key figures), what the run report and a local run's console show."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


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
        why = next((r for r in p.get("reasons", []) if r.startswith("infra validation failed")), "") if p else ""
        return (f"pushed version {p['version']}" if p.get("pushed") else f"not pushed{': ' + why if why else ''}"
                ) if p else ""
    return ""
