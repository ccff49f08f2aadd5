"""The annotate step: manifest + downloads (or a folder's listing) + a pushed model -> sharded annotation Parquet and
annotate_summary.json, on Apache Beam (RunInference)."""
from __future__ import annotations

import logging
import math
import os
import shlex
import tempfile
from dataclasses import dataclass

import numpy as np

from components.annotate.params import IMAGES_PER_SHARD, IMAGES_PER_WORKER, SPEC
from components.common import annotations, inference, labels, ledger, manifest, model, registry, storage
from components.common.errors import StepRefusal

_LOG = logging.getLogger(__name__)

# The work list and the run's tally while it runs; removed when the run ends.
STAGING_DIR = ".annotate-staging"


class AnnotateError(StepRefusal, ValueError):
    """Inputs annotate cannot use (a model URI without LATEST, a manifest without its images...); the message names
    the file and what to do."""


@dataclass
class WorkList:
    """The images to annotate, in the manifest's order."""

    keys: list[str]
    urls: list[str]
    paths: list[str]  # where each image's bytes are: downloads/images/<key>.<ext>, or the listing's path
    labels: np.ndarray | None  # (N, len(au_ids)) int16: 0, 1, 999; None when the manifest has no AU label

    def __len__(self) -> int:
        return len(self.keys)


def _is_web(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def read_work_list(manifest_dir: str, downloads_dir: str, au_ids) -> tuple[WorkList, dict]:
    """The manifest's images that can be read, each with its labels for au_ids; and counters.

    A row whose url is http(s) is read from the downloads folder when its ledger status is ok (the others are
    counted as not_downloaded); a row whose url is a path or gs:// URI (a folder's listing) is read from there.
    """
    try:
        path = manifest.resolve_manifest(manifest_dir)
    except FileNotFoundError as e:
        raise AnnotateError(str(e)) from None
    au_columns = [annotations.au_column(a) for a in au_ids]
    from components.common.tables import column_array, read_columns

    try:
        table = read_columns(path, ("key", "url", "row", *au_columns), ("key", "url"), "manifest")
    except ValueError as e:
        raise AnnotateError(f"{e}: expected key and url (contract 1); rerun ingest, or list the folder again") from None
    keys, urls = table["key"].to_pylist(), table["url"].to_pylist()
    rows = table["row"].to_pylist() if "row" in table.column_names else list(range(1, len(keys) + 1))
    present = [c for c in au_columns if c in table.column_names]
    au = None
    if present:
        au = np.full((len(keys), len(au_ids)), labels.UNKNOWN, np.int16)  # an AU the sheet lacks is unknown
        for j, name in enumerate(au_columns):
            if name not in present:
                continue
            values = column_array(table, name, np.int64, fill=-1)
            bad = ~np.isin(values, labels.VALID_LABELS)
            if bad.any():
                i = int(bad.argmax())
                raise AnnotateError(f"manifest {path}, row {rows[i]} (key {keys[i]}): {name} is "
                                    f"{'missing' if values[i] == -1 else int(values[i])}; expected 0, 1 or 999; "
                                    "rerun ingest")
            au[:, j] = values
    del table
    seen: set[str] = set()
    first = []
    for i, key in enumerate(keys):
        if key not in seen:  # a key that repeats keeps its first row, as every reader of the manifest does
            seen.add(key)
            first.append(i)
    web = [i for i in first if _is_web(urls[i])]
    where: dict[str, str] = {}
    if web:
        if not downloads_dir:
            raise AnnotateError(f"manifest {path} has {len(web)} http(s) URLs but no downloads folder was given: "
                                "pass the folder written by download (--downloads)")
        try:
            ok_keys, ok_ext, _ = ledger.read_downloaded(downloads_dir, 0)
        except (FileNotFoundError, ValueError) as e:
            raise AnnotateError(str(e)) from None
        images = storage.join(downloads_dir, ledger.IMAGES_DIR)
        where = {k.decode(): storage.join(images, f"{k.decode()}.{ledger.FORMATS[e]}") for k, e in zip(ok_keys, ok_ext)}
    chosen, paths = [], []
    for i in first:
        image = where.get(keys[i]) if _is_web(urls[i]) else urls[i]
        if image is not None:
            chosen.append(i)
            paths.append(image)
    work = WorkList([keys[i] for i in chosen], [urls[i] for i in chosen], paths,
                    au[chosen] if au is not None else None)
    downloaded = sum(1 for i in web if keys[i] in where)
    counters = {"manifest_rows": len(keys), "not_downloaded": len(web) - downloaded, "work": len(work)}
    return work, counters


def write_work_list(work: WorkList, uri: str) -> str:
    """The work list as one Parquet file (key, url, path, labels) that Beam reads in splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"key": pa.array(work.keys, pa.string()), "url": pa.array(work.urls, pa.string()),
               "path": pa.array(work.paths, pa.string())}
    if work.labels is not None:
        columns["labels"] = pa.array(work.labels.tolist(), pa.list_(pa.int16()))
    else:
        columns["labels"] = pa.nulls(len(work), pa.list_(pa.int16()))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "worklist.parquet")
        pq.write_table(pa.table(columns), local, row_group_size=4096)
        storage.upload_file(local, uri)
    return uri


def pipeline_options(beam_args: str, images: int):
    """Beam options: beam_args, and without a --runner Beam's local FnApiRunner on every core.

    Locally each worker is a process of its own (multi_processing: started afresh, so no MediaPipe graph is ever
    inherited across a fork) that loads the model once; a worker costs seconds to start (Beam, TensorFlow, the
    model), so a small run gets fewer of them: one per IMAGES_PER_WORKER images, at most one per core, and a run
    that needs one scores in this process. Flags in beam_args win over these.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from components.common import beamio

    try:
        beamio.pipeline_options(beam_args)  # checks the flags; names a bad one
    except ValueError as e:
        raise AnnotateError(str(e)) from None
    argv = shlex.split(beam_args or "")
    if PipelineOptions(argv).view_as(StandardOptions).runner:
        return PipelineOptions(argv)
    workers = max(1, min(beamio.local_cores(), math.ceil(images / IMAGES_PER_WORKER)))
    mode = "multi_processing" if workers > 1 else "in_memory"
    return PipelineOptions(["--runner=FnApiRunner", f"--direct_num_workers={workers}",
                            f"--direct_running_mode={mode}"] + argv)


def scorer_threads(options) -> int:
    """The face-finding threads of each worker's scorer: the cores each local worker process has to itself (every
    core when the run scores in this process); 1 on any other runner, which starts a worker process per core (as
    Dataflow does)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from components.common import beamio

    runner = options.view_as(StandardOptions).runner or ""
    if runner not in ("FnApiRunner", "DirectRunner", "PrismRunner", ""):
        return 1
    direct = options.view_as(DirectOptions)
    processes = int(direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1
    return max(1, beamio.local_cores() // max(1, processes))


def resolve(model_uri: str, threshold: float | None) -> dict:
    """The model a run scores with, resolved once here (so every worker loads the same version even if LATEST
    moves): {"uri", "model_dir", "version", "au_ids", "thresholds", "threshold_source", "faces"}."""
    if not model_uri:
        raise AnnotateError("no model given: pass --model, a registry model root (<registry>/<model_name>), a "
                            "pushed version folder or a model folder")
    try:
        model_dir, version = registry.resolve_model(model_uri)
        config = model.read_model_config(model_dir)
    except (registry.RegistryError, model.ModelError) as e:
        raise AnnotateError(str(e)) from None
    if config["task"] != "au":
        raise AnnotateError(f"{model_dir} is a {config['task']} model: annotate writes Action Units; pass a model "
                            "trained with --task au")
    from components.common import faces

    try:
        settings = faces.FaceSettings.from_dict(config.get("faces")).to_dict()
        thresholds, source = inference.read_thresholds(model_dir, config["au_ids"], threshold)
    except (TypeError, ValueError) as e:
        raise AnnotateError(f"{storage.join(model_dir, model.MODEL_CONFIG_FILE)}: {e}") from None
    return {"uri": model_uri, "model_dir": model_dir, "version": version, "au_ids": config["au_ids"],
            "thresholds": thresholds, "threshold_source": source, "faces": settings}


def _absolute(uri: str) -> str:
    return uri if not uri or storage.is_gcs(uri) else os.path.abspath(uri)


def run(
    manifest_dir: str,
    downloads_dir: str,
    output_dir: str,
    model: str = SPEC.defaults.model,
    which_faces: str = SPEC.defaults.which_faces,
    threshold: float = SPEC.defaults.threshold,
    batch_size: int = SPEC.defaults.batch_size,
    beam_args: str = SPEC.defaults.beam_args,
    images_per_shard: int = IMAGES_PER_SHARD,
    scorer=None,
) -> dict:
    """Annotates every readable image of the manifest with the model into output_dir; returns the summary.

    threshold 0 uses the model's thresholds. A bad image (missing, not an image, damaged, too large or small, one the
    model fails on) is a row with its reason and never stops the run. annotate_summary.json is written last: a
    folder without it is a run that did not finish. scorer: what makes the scorer (inference.Scorer; tests pass a
    stand-in).
    """
    if which_faces not in inference.WHICH_FACES:
        raise AnnotateError(f"which_faces is {which_faces!r}; expected one of {', '.join(inference.WHICH_FACES)}")
    if int(batch_size) < 1:
        raise AnnotateError(f"batch_size is {batch_size}; expected 1 or more")
    if not 0.0 <= float(threshold) < 1.0:
        raise AnnotateError(f"threshold is {threshold}; expected 0 (the model's) or a probability below 1")
    manifest_dir, downloads_dir, output_dir = map(_absolute, (manifest_dir, downloads_dir, output_dir))
    chosen = resolve(model, float(threshold) or None)
    au_ids = chosen["au_ids"]
    work, counters = read_work_list(manifest_dir, downloads_dir, au_ids)
    if not len(work):
        raise AnnotateError(
            f"nothing to annotate: none of the manifest's {counters['manifest_rows']} images was downloaded ok "
            f"(ledger of {downloads_dir}); fix what download reports and rerun it")
    options = pipeline_options(beam_args, len(work))
    shards = max(1, math.ceil(len(work) / int(images_per_shard)))
    staging = storage.join(output_dir, STAGING_DIR)
    annotations.remove_shards(output_dir)  # the folder is being rewritten
    storage.delete(staging)
    work_uri = write_work_list(work, storage.join(staging, "worklist.parquet"))
    has_labels = work.labels is not None
    del work
    _LOG.info("annotating %d images with %s (version %s) in %d shards", counters["work"], chosen["model_dir"],
              chosen["version"], shards)
    from components.annotate import transforms

    handler = transforms.ScorerModelHandler(chosen["model_dir"], which_faces, int(batch_size),
                                            float(threshold) or None, scorer=scorer, threads=scorer_threads(options))
    total, beam_counters = _run_pipeline(work_uri, output_dir, staging, shards, handler, au_ids, chosen["version"],
                                         options)
    summary = make_summary(total, counters, chosen, has_labels, shards,
                           {"which_faces": which_faces, "threshold": float(threshold), "batch_size": int(batch_size)})
    summary["counters"] = beam_counters
    annotations.write_summary(output_dir, summary)
    storage.delete(staging)
    return summary


def _run_pipeline(work_uri, output_dir, staging, shards, handler, au_ids, version, options) -> tuple[dict, dict]:
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    from components.annotate import transforms
    from components.common import beamio

    tally_path = storage.join(staging, "tally.json")
    pipeline = beam.Pipeline(options=options)
    items = (pipeline
             | "ReadWorkList" >> beam.io.ReadFromParquet(work_uri)
             # One read makes one bundle: spread the images over every worker.
             | "Spread" >> beam.Reshuffle())
    rows, tallies = items | "Annotate" >> transforms.AnnotateImages(handler, au_ids, version)
    _ = rows | "WriteShards" >> beam.io.WriteToParquet(
        storage.join(output_dir, annotations.SHARD_PREFIX), annotations.schema(au_ids), num_shards=shards,
        shard_name_template=annotations.SHARD_TEMPLATE, file_name_suffix=annotations.SHARD_SUFFIX)
    _ = (tallies
         | "Tally" >> beam.CombineGlobally(transforms.Tally(len(au_ids)))
         | "WriteTally" >> beam.Map(beamio.write_stats, tally_path))
    result = pipeline.run()
    state = result.wait_until_finish()
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise RuntimeError(f"the annotate pipeline ended in state {state}; see the runner's log")
    counters = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(transforms.NAMESPACE))["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + int(c.committed or 0)
    return beamio.read_stats(tally_path), {name: counters.get(name, 0) for name in transforms.COUNTERS}


def agreement(confusion: list[int]) -> dict:
    """Accuracy, F1 and Cohen's kappa of one AU from its [tp, fp, tn, fn] on the known labels; a measure that
    cannot be computed (no known label; kappa when both sides are constant) is None."""
    tp, fp, tn, fn = (int(v) for v in confusion)
    n = tp + fp + tn + fn
    out = {"known": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": None, "f1": None, "kappa": None}
    if not n:
        return out
    out["accuracy"] = (tp + tn) / n
    out["f1"] = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else None
    observed = (tp + tn) / n
    # Chance agreement: both say 1 at their own rates, or both say 0.
    expected = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
    out["kappa"] = (observed - expected) / (1 - expected) if expected < 1 else None
    return out


def make_summary(total: dict, counters: dict, chosen: dict, has_labels: bool, shards: int, parameters: dict) -> dict:
    """annotate_summary.json from the run's tally: counts, per-AU positives and, with labels, the agreement."""
    au_ids = chosen["au_ids"]
    per_au = {annotations.au_column(a): agreement(c) for a, c in zip(au_ids, total["confusion"])}
    agree = None
    if has_labels:
        def macro(name):
            values = [m[name] for m in per_au.values() if m[name] is not None]
            return sum(values) / len(values) if values else None

        agree = {"compared": total["compared"], "labelled": total["labelled"],
                 "basis": "each image's largest face against the manifest's labels; 999 (unknown) left out",
                 "per_au": per_au, "macro": {m: macro(m) for m in ("accuracy", "f1", "kappa")}}
    return {
        "model": chosen,
        "counts": {
            "manifest_rows": counters["manifest_rows"], "not_downloaded": counters["not_downloaded"],
            "images": total["images"], "images_scored": total["images_scored"], "faces": total["faces"],
            "no_face": sum(total["no_face"].values()), "no_face_reasons": dict(sorted(total["no_face"].items())),
            "bad": sum(total["bad"].values()), "bad_reasons": dict(sorted(total["bad"].items())),
            "rows": total["rows"],
        },
        "positives": {annotations.au_column(a): n for a, n in zip(au_ids, total["positives"])},
        "agreement": agree,
        "shards": [annotations.shard_name(i, shards) for i in range(shards)],
        "parameters": parameters,
    }


def format_summary(summary: dict) -> str:
    """The summary for a person: counts, and per AU the positives and the agreement with the labels."""
    c = summary["counts"]
    m = summary["model"]
    lines = [f"model {m['model_dir']} (version {m['version'] or '-'}), thresholds: {m['threshold_source']}",
             f"{c['images']} images: {c['images_scored']} with faces ({c['faces']} faces), {c['no_face']} without a "
             f"face, {c['bad']} bad" + (f" ({', '.join(f'{r} {n}' for r, n in c['bad_reasons'].items())})"
                                        if c["bad"] else "")
             + (f"; {c['not_downloaded']} manifest rows not downloaded" if c["not_downloaded"] else "")]
    agree = summary.get("agreement")
    head = f"{'AU':<6} {'positives':>9}"
    if agree:
        head += f" {'known':>6} {'accuracy':>8} {'F1':>6} {'kappa':>6}"
    lines += ["", head]

    def fmt(v):
        return f"{v:.3f}" if v is not None else "-"

    for name, positives in summary["positives"].items():
        line = f"{name:<6} {positives:>9}"
        if agree:
            a = agree["per_au"][name]
            line += f" {a['known']:>6} {fmt(a['accuracy']):>8} {fmt(a['f1']):>6} {fmt(a['kappa']):>6}"
        lines.append(line)
    if agree:
        mac = agree["macro"]
        lines.append(f"{'macro':<6} {'':>9} {'':>6} {fmt(mac['accuracy']):>8} {fmt(mac['f1']):>6} "
                     f"{fmt(mac['kappa']):>6}")
        lines.append(f"(agreement on {agree['compared']} of {agree['labelled']} labelled images: {agree['basis']})")
    return "\n".join(lines)
