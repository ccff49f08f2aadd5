"""The evaluate step: the study's measures per Action Unit and overall on the test split, and the blessing."""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

from components.common import examples as ex
from components.common import labels, storage
from components.common.evaluation import (BLESSING_FILE, ERRORS_FILE, EVALUATION_REPORT_FILE, METRICS_FILE,
                                          SLICES_FILE, VA_FILE)
from components.evaluate import slices as slicing
from components.evaluate.blessing import headline, judge, judge_slices
from components.evaluate.errors import ErrorPool
from components.evaluate.kfp_logging import log_kfp
from components.evaluate.metrics import au_metrics, va_metrics
from components.evaluate.params import SPEC
from components.evaluate.plots import curve_pngs, va_png
from components.evaluate.scoring import EvaluateError, live_baseline, read_model_config, score_model
from components.evaluate.tables import format_report


def _no_test_example(examples_dir: str, summary: dict) -> str:
    """Why evaluate has nothing to measure, and what to change: the test fraction convert split with."""
    parameters = summary.get("parameters") or {}
    fraction = parameters.get("test_fraction")
    if fraction is None and parameters.get("source"):  # a filtered folder names the one convert wrote
        try:
            fraction = (ex.read_summary(parameters["source"]).get("parameters") or {}).get("test_fraction")
        except (OSError, ValueError):
            pass
    now = f" (it is {fraction})" if fraction is not None else ""
    return (f"the test split of {examples_dir} has no example (no test-*.tfrecord shard holds one): there is nothing "
            f"to measure the model on; convert with a larger --test-fraction{now}, or from more images")


def _slice_sources(examples_dir: str, summary: dict, manifest: str, slice_by: str
                   ) -> tuple[str | None, list[str], list[dict]]:
    """(the manifest to read, its columns to slice by, the slices that cannot be made and why), checked before any
    scoring: a --slice-by column the manifest lacks is refused now, not after minutes of scoring."""
    wanted = slicing.parse_slice_by(slice_by)
    unavailable: list[dict] = []
    if manifest:
        try:
            slicing.manifest_schema(manifest)
        except (OSError, ValueError) as e:
            raise EvaluateError(f"--manifest {manifest}: {e}") from e
    else:
        manifest, why = slicing.find_manifest(examples_dir, summary)
        if manifest is None:
            if wanted:
                raise EvaluateError(f"--slice-by {slice_by}: {why}")
            unavailable.append({"feature": slicing.URL_HOST, "reason": why})
            return None, [], unavailable
    try:
        slicing.check_columns(manifest, wanted)
    except slicing.SliceError as e:
        raise EvaluateError(str(e)) from e
    return manifest, ["url"] + [c for c in wanted if c != "url"], unavailable


def _slice_groups(examples_dir: str, test: dict, manifest: str | None, columns: list[str],
                  unavailable: list[dict]) -> dict[str, list[str]]:
    """The slice of each test example by every feature (components.evaluate.slices.groups)."""
    try:
        facts = slicing.align(slicing.read_facts(ex.shard_files(examples_dir, "test")), test["keys"])
    except ValueError as e:
        raise EvaluateError(f"{examples_dir} (test split): {e}") from e
    values = {}
    if manifest:
        try:
            values = slicing.manifest_columns(manifest, test["keys"], columns)
        except (OSError, ValueError) as e:
            unavailable.append({"feature": slicing.URL_HOST, "reason": f"the manifest cannot be read ({e})"})
    found = slicing.groups(facts, test["y_true"], values)
    for feature, why in ((slicing.FACE_SHARE, "the examples carry no face box (whole images, or converted before "
                          "face boxes were recorded)"),
                         (slicing.IMAGE_SIZE, "the examples do not record their source image's size (converted "
                          "before face/source_size)")):
        if feature not in found:
            unavailable.append({"feature": feature, "reason": why})
    return found


def _live_slices(live: dict, keys: list[str], groups: dict[str, list[str]], measured: list[dict]) -> dict | None:
    """The live model's macro F1 on each measured slice of the candidate, or None when its rows do not line up."""
    if list(live["keys"]) != list(keys):
        index = {k: i for i, k in enumerate(live["keys"])}
        if any(k not in index for k in keys):
            return None
        order = [index[k] for k in keys]
        live = {"y_true": live["y_true"][order], "scores": live["scores"][order]}
    return slicing.macro_f1_by_slice(live["y_true"], live["scores"], groups, measured)


def _jsonable(x):
    """NaN (an undefined AUC) becomes null: strict JSON has no NaN."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def run(
    examples_dir: str,
    model_dir: str,
    output_dir: str,
    registry: str = SPEC.defaults.registry,
    model_name: str = SPEC.defaults.model_name,
    min_macro_f1: float = SPEC.defaults.min_macro_f1,
    min_macro_auc: float = SPEC.defaults.min_macro_auc,
    tolerance: float = SPEC.defaults.tolerance,
    batch_size: int = SPEC.defaults.batch_size,
    min_slice_size: int = SPEC.defaults.min_slice_size,
    min_slice_macro_f1: float = SPEC.defaults.min_slice_macro_f1,
    slice_tolerance: float = SPEC.defaults.slice_tolerance,
    slice_by: str = SPEC.defaults.slice_by,
    manifest: str = "",  # ingest's output folder (an input artifact, optional): "" = the one convert recorded
    kfp_metrics=None,
    kfp_classification_metrics=None,
    report_path: str | None = None,
    progress: bool = False,
) -> dict:
    """Scores the model on the test split (thresholds tuned on validation), judges it, writes the evaluation folder.

    Returns {"metrics": ..., "blessing": ...} as written to metrics.json and blessing.json. Refuses
    (EvaluateError) a test split with no example, or whose every label is 999. progress prints
    progress lines of the batches scored (components.common.progress) for a pipeline's console. An AU model is
    also measured per slice (components.evaluate.slices: metrics.json's "slices", slices.png), and its worst slice
    and each slice against the live model's are part of the blessing.
    """
    if batch_size < 1:
        raise EvaluateError(f"batch size {batch_size} must be at least 1")
    if min_slice_size < 1:
        raise EvaluateError(f"min slice size {min_slice_size} must be at least 1")
    try:
        summary = ex.read_summary(examples_dir)
    except FileNotFoundError as e:
        raise EvaluateError(str(e)) from e
    except ValueError as e:
        raise EvaluateError(
            f"{storage.join(examples_dir, ex.EXAMPLES_SUMMARY_FILE)} is not valid JSON ({e}); re-run filter") from e
    config = read_model_config(model_dir)
    if config["task"] == "va" and not summary.get("has_va"):
        raise EvaluateError(f"the model predicts valence/arousal, but the examples in {examples_dir} have none "
                            f"({ex.EXAMPLES_SUMMARY_FILE}: has_va is false)")
    manifest, columns, unavailable = _slice_sources(examples_dir, summary, manifest, slice_by)
    test_count = ((summary.get("splits") or {}).get("test") or {}).get("examples")
    if not ex.shard_files(examples_dir, "test") or test_count == 0:
        raise EvaluateError(_no_test_example(examples_dir, summary))
    with tempfile.TemporaryDirectory(prefix="evaluate-") as workdir:
        splits = ["test", "validation"] if config["task"] == "au" else ["test"]
        pool = ErrorPool(config["au_ids"]) if config["task"] == "au" else None  # errors.json, collected while scoring
        scored = score_model(model_dir, config, examples_dir, summary, splits, os.path.join(workdir, "candidate"),
                              batch_size, progress, errors=pool)
        test = scored["test"]
        if not len(test["y_true"]):
            raise EvaluateError(_no_test_example(examples_dir, summary))
        if config["task"] == "au" and (test["y_true"] == labels.UNKNOWN).all():
            raise EvaluateError(
                f"every label of the test split of {examples_dir} is {labels.UNKNOWN} (not annotated): none of its "
                f"{len(test['y_true'])} examples is annotated for any of AU{', AU'.join(map(str, config['au_ids']))}, "
                "so no measure can be computed; keep AUs that the sheet annotates (--aus), or use a sheet whose "
                "images are annotated for these AUs"
            )
        if config["task"] == "au":
            metrics = au_metrics(test, scored.get("validation"), config["au_ids"])
        else:
            metrics = va_metrics(test)
        metrics["model"] = {k: config.get(k) for k in ("backbone", "image_size", "task", "au_ids") if k in config}
        live_scored: dict = {}
        baseline, notes = live_baseline(registry, model_name, config, examples_dir, summary, workdir, batch_size,
                                         progress, scored_out=live_scored)
        live_slices = None
        if config["task"] == "au":
            groups = _slice_groups(examples_dir, test, manifest, columns, unavailable)
            metrics["slices"] = slicing.slice_metrics(test, [metrics["thresholds"]["tuned"][str(a)]
                                                             for a in config["au_ids"]],
                                                      config["au_ids"], groups, min_slice_size, unavailable)
            errors = pool.report("test", groups, test["keys"], metrics["slices"]["measured"])
            if baseline is not None and live_scored:
                live_slices = _live_slices(live_scored, test["keys"], groups, metrics["slices"]["measured"])
    verdict = judge(headline(metrics), baseline, config["task"], min_macro_f1, min_macro_auc, tolerance, notes)
    if "slices" in metrics:
        by_slice = judge_slices(metrics["slices"], live_slices, min_slice_macro_f1, slice_tolerance)
        if baseline is not None and live_slices is None:
            by_slice["reasons"].append("the live model's test scores do not line up with the candidate's examples: "
                                       "its slices are not compared")
        verdict = {"blessed": verdict["blessed"] and all(c["passed"] for c in by_slice["checks"]),
                   "reasons": verdict["reasons"] + by_slice["reasons"],
                   "checks": verdict["checks"] + by_slice["checks"]}
    blessing = {
        "blessed": verdict["blessed"],
        "reasons": verdict["reasons"],
        "checks": verdict["checks"],
        "baseline": baseline,
        "candidate": headline(metrics),
        "criteria": {"min_macro_f1": min_macro_f1, "min_macro_auc": min_macro_auc, "tolerance": tolerance,
                     "min_slice_size": min_slice_size, "min_slice_macro_f1": min_slice_macro_f1,
                     "slice_tolerance": slice_tolerance},
        "registry": registry,
        "model_name": model_name,
    }
    metrics, blessing = _jsonable(metrics), _jsonable(blessing)
    report = format_report(metrics, blessing)
    # A blessing left from an earlier run must not stand beside this run's files if this one dies midway.
    storage.delete(storage.join(output_dir, BLESSING_FILE))
    storage.write_text(storage.join(output_dir, METRICS_FILE), json.dumps(metrics, indent=2))
    storage.write_text(storage.join(output_dir, EVALUATION_REPORT_FILE), report)
    if config["task"] == "au":
        storage.write_text(storage.join(output_dir, ERRORS_FILE), json.dumps(_jsonable(errors), indent=1))
        for name, png in curve_pngs(test, config["au_ids"]).items():
            storage.write_bytes(storage.join(output_dir, name), png)
        storage.write_bytes(storage.join(output_dir, SLICES_FILE),
                            slicing.slice_png(metrics["slices"], metrics["at_default"]["macro"]["f1"]))
    else:
        storage.delete(storage.join(output_dir, ERRORS_FILE))  # an earlier AU model's gallery is not this model's
        storage.write_bytes(storage.join(output_dir, VA_FILE), va_png(test))
    from components.evaluate import canonical  # push's infra validation sends these to the candidate's server

    canonical.write(output_dir, model_dir, examples_dir)
    # Written last: push reads it, so its presence means the folder is whole.
    storage.write_text(storage.join(output_dir, BLESSING_FILE), json.dumps(blessing, indent=2))
    if report_path:
        os.makedirs(os.path.dirname(report_path) or ".", exist_ok=True)
        with open(report_path, "w", encoding="utf-8") as f:
            f.write(report)
    log_kfp(metrics, blessing, test, kfp_metrics, kfp_classification_metrics)
    return {"metrics": metrics, "blessing": blessing}
