"""What the Beam steps (convert, filter) share: runner options, and the shard statistics both merge into
examples_summary.json (contract 3)."""
from __future__ import annotations

import os
import shlex

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from components.common import examples
from components.common.machine import local_cores  # noqa: F401 - the steps' Beam options read it here

_UNCOMPRESSED = CompressionTypes.UNCOMPRESSED


def pipeline_options(beam_args: str = "") -> PipelineOptions:
    """PipelineOptions from a beam_args string; with no --runner, Beam's local FnApiRunner.

    The runner is always named: Beam 2.72's DirectRunner first tries to download and start
    the Prism runner, which hangs or fails without a network. FnApiRunner is the
    DirectRunner's own batch engine. Locally it runs in_memory (convert spreads its heavy stage
    over every core itself). Flags in beam_args win over these defaults.
    """
    try:
        argv = shlex.split(beam_args or "")
    except ValueError as e:
        raise ValueError(f"beam_args {beam_args!r} cannot be split into flags: {e}") from None
    for flag in argv:
        if not flag.startswith("--"):
            raise ValueError(
                f"beam_args {beam_args!r}: {flag!r} is not a --flag; expected e.g. "
                '"--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp"'
            )
    if not PipelineOptions(argv).view_as(StandardOptions).runner:
        argv = ["--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"] + argv
    return PipelineOptions(argv)


# One dict shape for a part, a shard and the whole run:
# {"splits": {split: {"examples": n, "au": [[pos, neg, unk], ...]}}, "counters": {name: n},
#  "shards": [[split, index, path, examples], ...]}


def empty_stats() -> dict:
    return {"splits": {}, "counters": {}, "shards": []}


def add_stats(total: dict, other: dict) -> dict:
    """Adds other into total (in place) and returns total."""
    for split, s in other["splits"].items():
        t = total["splits"].setdefault(split, {"examples": 0, "au": None})
        t["examples"] += s["examples"]
        t["au"] = s["au"] if t["au"] is None else (np.asarray(t["au"]) + np.asarray(s["au"])).tolist()
    for name, n in other["counters"].items():
        total["counters"][name] = total["counters"].get(name, 0) + n
    total["shards"].extend(other["shards"])
    return total


class MergeStats(beam.CombineFn):
    """Sums the statistics of parts or shards into those of the run."""

    def create_accumulator(self):
        return empty_stats()

    def add_input(self, acc, stats):
        return add_stats(acc, stats)

    def merge_accumulators(self, accs):
        total = empty_stats()
        for a in accs:
            add_stats(total, a)
        return total

    def extract_output(self, acc):
        acc["shards"].sort()
        return acc


def write_stats(stats: dict, path: str) -> str:
    import json

    with FileSystems.create(path, mime_type="application/json", compression_type=_UNCOMPRESSED) as f:
        f.write(json.dumps(stats).encode())
    return path


def read_stats(path: str) -> dict:
    import json

    with FileSystems.open(path, compression_type=_UNCOMPRESSED) as f:
        return json.loads(f.read().decode())


def write_summary(output_dir: str, au_ids, stats: dict, plan: dict, has_va: bool, policy, counters: dict,
                  parameters: dict) -> dict:
    """Drops the shards of splits left empty and those of earlier runs, then writes examples_summary.json (last)."""
    from components.common import storage

    splits = {}
    written = set()
    for split in examples.SPLITS:
        s = stats["splits"].get(split, {"examples": 0, "au": [[0, 0, 0]] * len(au_ids)})
        files = [sh[2] for sh in stats["shards"] if sh[0] == split]
        shards = plan.get(split, {}).get("shards", 0)
        if s["examples"] == 0:
            for f in files:  # an empty split has no shards
                storage.delete(f)
            files, shards = [], 0
        for index in range(shards):
            # A shard no image hashed to (a few huge images) still exists, empty, so -of-N holds.
            name = storage.join(output_dir, examples.shard_name(split, index, shards))
            if not any(os.path.basename(f) == os.path.basename(name) for f in files):
                storage.write_bytes(name, b"")
                files.append(name)
        written.update(files)
        splits[split] = {"examples": int(s["examples"]), "shards": int(shards),
                         "au": examples.summary_au_table(au_ids, s["au"])}
    examples.remove_stale_shards(output_dir, written)
    summary = {
        "au_ids": [int(a) for a in au_ids],
        "policy": policy,
        "has_va": bool(has_va),
        "splits": splits,
        "counters": {k: int(v) for k, v in sorted(counters.items())},
        "parameters": parameters,
    }
    examples.write_summary(output_dir, summary)
    return summary
