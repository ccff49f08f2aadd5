"""The filter step: keeps an Action Unit set in every example and applies a policy to its unknown (999) labels."""
from __future__ import annotations

import logging
import os
import re
from typing import Sequence

from components.common import examples, labels, storage
from components.common.errors import StepRefusal
from components.common.examples import EXAMPLES_WRITTEN
from components.filter.params import POLICIES, SPEC

_LOG = logging.getLogger(__name__)

# Statistics of a run in progress; removed when the run ends.
STAGING_DIR = ".filter-staging"
_SHARD_RE = re.compile(r"^(train|validation|test)-(\d{5})-of-(\d{5})\.tfrecord$")

# Counters of the filter step (Beam Metrics, and examples_summary.json).
EXAMPLES_READ = "examples_read"
DROPPED_UNKNOWN = "dropped_unknown"  # examples left out by policy drop
ZEROED_LABELS = "zeroed_labels"  # 999 labels made 0 by policy zero
COUNTERS = (EXAMPLES_READ, EXAMPLES_WRITTEN, DROPPED_UNKNOWN, ZEROED_LABELS)


class FilterError(StepRefusal, ValueError):
    """Examples or settings filter cannot use, or a split left empty; the message says what to do."""


def parse_aus(aus) -> list[int]:
    """'1,2,4' or [1, 2, 4] -> [1, 2, 4], in the given order; ValueError naming the bad item."""
    if isinstance(aus, str):
        return labels.parse_au_list(aus)
    return labels.parse_au_list(",".join(str(int(a)) for a in aus))


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise FilterError(
            f"policy {policy!r} is not one of {', '.join(POLICIES)} (drop: leave out an example with 999 in a "
            "kept AU; mask: keep it, training ignores 999; zero: make 999 a 0)"
        )
    return policy


def filter_record(record: bytes, keep_ids: Sequence[int], policy: str, name: str = "example"):
    """One serialized example with only keep_ids (in that order) and the policy applied to 999.

    Returns (serialized example or None when policy drop leaves it out, its kept labels, the
    number of labels zeroed). Everything else in the example (image, key, valence/arousal) is kept.
    """
    example = examples.decode_example(record)
    feature = example.features.feature
    au_ids = list(feature[examples.LABEL_AU_IDS].int64_list.value)
    values = list(feature[examples.LABEL_AU].int64_list.value)
    position = {a: i for i, a in enumerate(au_ids)}
    missing = [a for a in keep_ids if a not in position]
    if missing or len(values) != len(au_ids):
        key = feature[examples.IMAGE_KEY].bytes_list.value[0].decode() if examples.IMAGE_KEY in feature else "?"
        problem = (f"has no label for AU{missing[0]} (its au_ids: {au_ids})" if missing
                   else f"has {len(values)} labels for {len(au_ids)} AU ids")
        raise ValueError(f"{name} (image {key}) {problem}")
    kept = [values[position[a]] for a in keep_ids]
    zeroed = 0
    if labels.UNKNOWN in kept:
        if policy == "drop":
            return None, kept, 0
        if policy == "zero":
            zeroed = kept.count(labels.UNKNOWN)
            kept = [labels.NEGATIVE if v == labels.UNKNOWN else v for v in kept]
    feature[examples.LABEL_AU_IDS].int64_list.value[:] = [int(a) for a in keep_ids]
    feature[examples.LABEL_AU].int64_list.value[:] = kept
    return example.SerializeToString(), kept, zeroed


def input_shards(examples_dir: str) -> list[dict]:
    """Every shard of an examples folder as {"split", "index", "count", "path"}."""
    shards = []
    for split in examples.SPLITS:
        for path in examples.shard_files(examples_dir, split):
            m = _SHARD_RE.match(os.path.basename(path))
            shards.append({"split": split, "index": int(m.group(2)), "count": int(m.group(3)), "path": path})
    return shards


def _absolute(uri: str) -> str:
    return uri if storage.is_gcs(uri) else os.path.abspath(uri)


def run(
    examples_dir: str,
    output_dir: str,
    aus=SPEC.defaults.aus,
    policy: str = SPEC.defaults.policy,
    beam_args: str = SPEC.defaults.beam_args,
) -> dict:
    """Writes examples_dir's examples with only the AUs `aus` and `policy` for 999 to output_dir; returns the summary.

    Each input shard becomes the output shard of the same name; a split left with no example
    has no shards. examples_summary.json is written last. Refuses (ValueError) an examples folder
    with no example, and a policy that leaves none in a split train or evaluate needs.
    """
    keep_ids = parse_aus(aus)
    check_policy(policy)
    examples_dir, output_dir = _absolute(examples_dir), _absolute(output_dir)
    if examples_dir.rstrip("/") == output_dir.rstrip("/"):
        raise FilterError(f"--output {output_dir} is the examples folder itself; write the filtered examples elsewhere")
    source = examples.read_summary(examples_dir)
    absent = [a for a in keep_ids if a not in source["au_ids"]]
    if absent:
        raise FilterError(
            f"AU{absent[0]} is not in the examples of {examples_dir} (they have AUs "
            f"{','.join(map(str, source['au_ids']))}); choose AUs among those"
        )
    from components.common import beamio
    from components.filter import transforms as filter_transforms

    options = beamio.pipeline_options(beam_args)
    shards = input_shards(examples_dir)
    storage.delete(storage.join(output_dir, examples.EXAMPLES_SUMMARY_FILE))  # the folder is being rewritten
    stats = beamio.empty_stats()
    if shards:
        stats = _run_pipeline(shards, output_dir, keep_ids, policy, options, filter_transforms)
    _check_not_empty(examples_dir, source, shards, stats, keep_ids, policy)
    plan = {s["split"]: {"shards": s["count"]} for s in shards}
    summary = beamio.write_summary(
        output_dir, keep_ids, stats, plan, has_va=source.get("has_va", False), policy=policy,
        counters={**dict.fromkeys(COUNTERS, 0), **stats["counters"]},
        # The face settings the images were cut with travel on to train (and so to the model).
        parameters={"aus": ",".join(map(str, keep_ids)), "policy": policy, "source": examples_dir,
                    "faces": (source.get("parameters") or {}).get("faces"),
                    # What convert counted and was given (downloads missed, faces skipped, the sheet): the model
                    # card reads them from the model, which sees this folder only.
                    "convert": (source.get("parameters") or {}).get("convert")
                    or {"counters": source.get("counters"), "parameters": source.get("parameters")}},
    )
    _LOG.info("filter: %s", {s: v["examples"] for s, v in summary["splits"].items()})
    return summary


# The splits the next steps cannot do without: train trains on one, evaluate measures on the other
# (with no validation split train only warns).
NEEDED_SPLITS = ("train", "test")


def _check_not_empty(examples_dir: str, source: dict, shards: list[dict], stats: dict, keep_ids, policy: str) -> None:
    """ValueError, in the user's words, when there was no example to filter or the policy left none in a needed split."""
    if not stats["counters"].get(EXAMPLES_READ, 0):
        found = f"its {len(shards)} shards hold no record" if shards else "it has no train/validation/test shard"
        raise FilterError(
            f"{examples_dir} holds no example ({found}): nothing to filter; rerun convert and fix what it reports"
        )
    for split in NEEDED_SPLITS:
        had = any(s["split"] == split for s in shards)  # an empty split has no shards (convert drops them)
        read = ((source.get("splits") or {}).get(split) or {}).get("examples")
        if policy != "drop" or not had or read == 0 or stats["splits"].get(split, {}).get("examples", 0):
            continue  # only drop leaves examples out; a split that came empty is the next step's to refuse
        table = ((source.get("splits") or {}).get(split) or {}).get("au") or {}
        unknown = sorted(((int((table.get(str(a)) or {}).get("unknown", 0)), a) for a in keep_ids), reverse=True)
        where = ", ".join(f"AU{a} in {n:,}" for n, a in unknown if n)
        need = "train learns from" if split == "train" else "evaluate measures the model on"
        raise FilterError(
            f"policy {policy} left no example in the {split} split of {examples_dir}, which {need}: "
            + (f"all {read:,} were dropped" if read else "every one was dropped")
            + f" for a 999 (not annotated) in a kept AU{f' ({where})' if where else ''}. "
            "--policy mask keeps them (training ignores 999), or keep AUs that are annotated (--aus)"
        )


def _run_pipeline(shards, output_dir, keep_ids, policy, options, filter_transforms) -> dict:
    import apache_beam as beam

    from components.common import beamio

    staging = storage.join(output_dir, STAGING_DIR)
    stats_path = storage.join(staging, "stats.json")
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "Shards" >> beam.Create(shards)
        | "FilterExamples" >> filter_transforms.FilterExamples(output_dir, keep_ids, policy)
        | "WriteStats" >> beam.Map(beamio.write_stats, stats_path)
    )
    state = pipeline.run().wait_until_finish()
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise RuntimeError(f"the filter pipeline ended in state {state}; see the runner's log")
    stats = beamio.read_stats(stats_path)
    storage.delete(staging)
    return stats
