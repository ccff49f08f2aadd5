"""The filter step's Beam transform: each shard of an examples folder becomes the shard of the same name,
with only the kept AUs and the 999 policy applied. No shuffle: one worker streams one shard.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from components.common import beamio, examples
from components.common.partfiles import create_file, open_file
from components.filter import logic

NAMESPACE = "filter"


class _FilterShardFn(beam.DoFn):
    def __init__(self, output_dir: str, keep_ids, policy: str):
        self._output_dir = output_dir
        self._keep_ids = [int(a) for a in keep_ids]
        self._policy = policy
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in logic.COUNTERS}

    def process(self, shard: dict):
        split = shard["split"]
        target = FileSystems.join(self._output_dir, examples.shard_name(split, shard["index"], shard["count"]))
        counters = dict.fromkeys(logic.COUNTERS, 0)
        kept_labels = []
        with open_file(shard["path"]) as source, create_file(target) as out:
            for i, record in enumerate(examples.read_records(source, shard["path"])):
                counters[logic.EXAMPLES_READ] += 1
                filtered, kept, zeroed = logic.filter_record(
                    record, self._keep_ids, self._policy, name=f"{shard['path']} record {i}")
                counters[logic.ZEROED_LABELS] += zeroed
                if filtered is None:
                    counters[logic.DROPPED_UNKNOWN] += 1
                    continue
                examples.write_record(out, filtered)
                kept_labels.append(kept)
        written = len(kept_labels)
        counters[examples.EXAMPLES_WRITTEN] = written
        for name, n in counters.items():
            self._counters[name].inc(n)
        yield {
            "splits": {split: {"examples": written,
                               "au": examples.label_counts(kept_labels, len(self._keep_ids)).tolist()}},
            "counters": counters,
            "shards": [[split, shard["index"], target, written]],
        }


@beam.ptransform_fn
def FilterExamples(shards, output_dir: str, keep_ids, policy: str):  # noqa: N802 - Beam names transforms in CamelCase
    """Shards {"split", "index", "count", "path"} -> filtered shards of the same names in output_dir.

    Returns a PCollection of one statistics dict (per split: examples and per-AU counts of the
    kept AUs; counters: examples_read, examples_written, dropped_unknown, zeroed_labels).
    """
    return (
        shards
        | "FilterShard" >> beam.ParDo(_FilterShardFn(output_dir, keep_ids, policy))
        | "MergeStats" >> beam.CombineGlobally(beamio.MergeStats())
    )
