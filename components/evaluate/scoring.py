"""Scoring a model on an examples folder: its serving signature over each split's shards (local or gs://), the
candidate's and the live model's, with the step's refusal (EvaluateError) for what cannot be scored."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from components.common import examples as ex
from components.common import labels, storage
from components.common import model as model_contract
from components.common import progress as progress_lines
from components.common import registry as model_registry
from components.common.errors import StepRefusal
from components.evaluate.blessing import headline
from components.evaluate.metrics import compute_metrics, label_rows, va_metrics


class EvaluateError(StepRefusal):
    """Input the evaluate step cannot use; the message says which file and what to do."""


def read_model_config(model_dir: str) -> dict:
    """model_config.json of a model folder (components.common.model), a problem with it as this step's EvaluateError."""
    try:
        return model_contract.read_model_config(model_dir)
    except model_contract.ModelError as e:
        raise EvaluateError(str(e)) from e


def _local_shards(examples_dir: str, split: str, workdir: str) -> list[str]:
    files = ex.shard_files(examples_dir, split)
    if storage.is_gcs(examples_dir):
        local = []
        for f in files:
            dst = os.path.join(workdir, "examples", model_registry.basename(f))
            storage.download_file(f, dst)
            local.append(dst)
        files = local
    return files


def score_split(signature, files: list[str], examples_au_ids: list[int], model_au_ids: list[int], task: str,
                batch_size: int, source: str = "", progress=None, errors=None) -> dict:
    """Runs the model over the shards of one split: labels (in the model's AU order) and outputs.

    progress: a components.common.progress.Progress counting the batches, or None. errors: a
    components.evaluate.errors.ErrorPool given each batch's keys, images, labels and probabilities (AU models), or None.
    """
    import tensorflow as tf

    spec = ex.feature_spec(len(examples_au_ids))
    if task == "va":
        # Varlen, so an example without valence/arousal is told apart from one with 0, 0.
        spec[ex.LABEL_VA] = tf.io.VarLenFeature(tf.float32)
    if task == "au":
        missing = [a for a in model_au_ids if a not in examples_au_ids]
        if missing:
            raise EvaluateError(
                f"the model predicts AU{', AU'.join(map(str, missing))}, which the examples in {source} do not label "
                f"(they have AUs {examples_au_ids}); evaluate on examples filtered to the model's AUs"
            )
        columns = [examples_au_ids.index(a) for a in model_au_ids]
    keys, y_true, scores = [], [], []
    dataset = tf.data.TFRecordDataset(files).batch(batch_size).map(lambda s: tf.io.parse_example(s, spec))
    try:
        for batch in dataset:
            ids = batch[ex.LABEL_AU_IDS].numpy()
            if ids.size and not (ids == np.asarray(examples_au_ids)[None, :]).all():
                raise EvaluateError(f"{source}: an example's label/au_ids differ from "
                                    f"{ex.EXAMPLES_SUMMARY_FILE}'s {examples_au_ids}")
            encoded = list(batch[ex.IMAGE_ENCODED].numpy())
            out = model_contract.run_signature(signature, encoded, task)
            batch_keys = [k.decode() for k in batch[ex.IMAGE_KEY].numpy()]
            keys.extend(batch_keys)
            if task == "au":
                if out.ndim != 2 or out.shape[1] != len(model_au_ids):
                    raise EvaluateError(
                        f"the model returns probabilities of shape {out.shape}, but its model_config.json lists "
                        f"{len(model_au_ids)} AUs"
                    )
                y = batch[ex.LABEL_AU].numpy()[:, columns]
                bad = ~np.isin(y, labels.VALID_LABELS)
                if bad.any():
                    key = batch[ex.IMAGE_KEY].numpy()[np.flatnonzero(bad.any(axis=1))[0]].decode()
                    raise EvaluateError(f"{source}: example {key} has label {int(y[bad][0])}; labels must be 0, 1 or "
                                        f"{labels.UNKNOWN}. Re-run convert and filter")
                y_true.append(y)
                if errors is not None and not np.isnan(out).any():
                    errors.add(batch_keys, encoded, y, out)
            else:
                va = tf.sparse.to_dense(batch[ex.LABEL_VA], default_value=np.nan).numpy()
                if va.shape[1] < 2:
                    va = np.full((len(out), 2), np.nan)
                y_true.append(va[:, :2])
            if np.isnan(out).any():
                raise EvaluateError(f"{source}: the model returned NaN; it cannot be evaluated (was training unstable?)")
            scores.append(out.astype(np.float64))
            if progress is not None:
                progress.update()
    except model_contract.ModelError as e:
        raise EvaluateError(str(e)) from e
    except tf.errors.DataLossError as e:
        raise EvaluateError(f"{source}: a TFRecord shard is corrupt ({e}); re-run convert and filter") from e
    except tf.errors.InvalidArgumentError as e:
        raise EvaluateError(f"{source}: cannot read or score the examples ({e.message})") from e
    width = len(model_au_ids) if task == "au" else 2
    return {
        "keys": keys,
        "y_true": np.concatenate(y_true) if y_true else np.zeros((0, width)),
        "scores": np.concatenate(scores) if scores else np.zeros((0, width)),
    }


def score_model(model_uri: str, config: dict, examples_dir: str, summary: dict, splits: Sequence[str],
                 workdir: str, batch_size: int, progress: bool = False, whose: str = "", errors=None) -> dict:
    """Scores each split; progress prints progress lines of its batches (`<split> batches<whose>`); errors (an
    ErrorPool) collects the test split's most wrong examples."""
    local_model = model_registry.fetch_local(model_uri, workdir)
    try:
        signature = model_contract.load_signature(local_model)
    except model_contract.ModelError as e:
        raise EvaluateError(str(e)) from e
    out = {}
    for split in splits:
        files = _local_shards(examples_dir, split, os.path.join(workdir, split))
        lines = None
        if progress and files:
            n = int(((summary.get("splits") or {}).get(split) or {}).get("examples") or 0)
            lines = progress_lines.Progress("evaluate", math.ceil(n / batch_size), f"{split} batches{whose}")
        out[split] = score_split(signature, files, [int(a) for a in summary["au_ids"]], config["au_ids"],
                                 config["task"], batch_size, source=f"{examples_dir} ({split} split)", progress=lines,
                                 errors=errors if split == "test" else None)
        if lines is not None:
            lines.close()
    return out


def live_baseline(registry_uri: str, model_name: str, config: dict, examples_dir: str, summary: dict,
                   workdir: str, batch_size: int, progress: bool = False,
                   scored_out: dict | None = None) -> tuple[dict | None, list[str]]:
    """The live model's version and scores on this test split, or None with the reason why it is not compared.

    scored_out: filled with the live model's test scores ({"keys", "y_true", "scores"}, the candidate's AU order) when
    it is compared, for the slice checks.
    """
    if not registry_uri:
        return None, ["no registry given: judged on the thresholds alone"]
    try:
        root = model_registry.model_root(registry_uri, model_name)
        live = model_registry.live_version(root)
    except model_registry.RegistryError as e:
        return None, [f"the live model cannot be read ({e}): judged on the thresholds alone"]
    if live is None:
        return None, [f"first model: {root} has no {model_registry.LATEST} yet, judged on the thresholds alone"]
    version, uri = live
    try:
        live_config = read_model_config(uri)
    except EvaluateError as e:
        return None, [f"the live version {version} cannot be read ({e}): judged on the thresholds alone"]
    if live_config["task"] != config["task"]:
        return None, [f"the live version {version} is a {live_config['task']} model, this is a {config['task']} model: "
                      "not comparable, judged on the thresholds alone"]
    if config["task"] == "au" and sorted(live_config["au_ids"]) != sorted(config["au_ids"]):
        return None, [f"the live version {version} detects AUs {live_config['au_ids']}, this model {config['au_ids']}: "
                      "not comparable, judged on the thresholds alone"]
    try:
        scored = score_model(uri, live_config, examples_dir, summary, ["test"], os.path.join(workdir, "live"),
                              batch_size, progress, whose=f" of the live model {version}")["test"]
    except EvaluateError as e:
        return None, [f"the live version {version} cannot be scored ({e}): judged on the thresholds alone"]
    if config["task"] == "va":
        m = va_metrics(scored)
    else:
        # Same column order as the candidate, so the per-AU numbers line up.
        order = [live_config["au_ids"].index(a) for a in config["au_ids"]]
        scored = {"keys": scored["keys"], "y_true": scored["y_true"][:, order], "scores": scored["scores"][:, order]}
        if scored_out is not None:
            scored_out.update(scored)
        m = {"task": "au", "at_default": label_rows(compute_metrics(scored["y_true"], scored["scores"]), config["au_ids"])}
    note = f"live model: version {version} in {root}, scored on the same test split"
    return {"version": version, "uri": uri, **headline(m)}, [note]
