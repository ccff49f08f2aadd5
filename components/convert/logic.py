"""The convert step: manifest + ledger + images -> train/validation/test TFRecord shards and examples_summary.json."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from components.common import examples, labels, ledger, storage
from components.common.errors import StepRefusal
from components.common.examples import EXAMPLES_WRITTEN
from components.common.faces import REASONS, FaceSettings, counter_name
from components.common.manifest import read_manifest, sheet_identity
from components.convert.params import MIN_PARTS, PART_BYTES, SHARD_BYTES, SPEC

_LOG = logging.getLogger(__name__)

# Work list, parts and statistics of a run in progress; removed when the run ends.
STAGING_DIR = ".convert-staging"
# Used for shard sizing when the ledger has no byte count for an image.
ASSUMED_IMAGE_BYTES = 64 * 1024


class ConvertError(StepRefusal, ValueError):
    """Inputs convert cannot use, or no example written; the message names the file and what to do."""


@dataclass
class WorkList:
    """The images to convert, one row each, in NumPy arrays (a few hundred bytes an image, no object per row)."""

    keys: np.ndarray  # bytes keys (S20)
    ext: np.ndarray  # int8 index into ledger.FORMATS (download names each image images/<key>.<format>)
    split: np.ndarray  # int8 index into examples.SPLITS
    au: np.ndarray  # (N, 60) int16: 0, 1, 999
    va: np.ndarray  # (N, 2) float32, NaN where the manifest has none
    size: np.ndarray  # int64 bytes of the downloaded image (for shard sizing)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index) -> "WorkList":
        return WorkList(*(getattr(self, f)[index] for f in ("keys", "ext", "split", "au", "va", "size")))


def build_work_list(manifest, downloaded, validation_fraction: float, test_fraction: float):
    """The manifest rows whose ledger status is ok, each with its split; returns (WorkList, counters).

    manifest: read_manifest's (keys, au, va); downloaded: ledger.read_downloaded's (keys, format index, bytes).
    """
    keys, au, va = manifest
    ok_keys, ok_ext, ok_size = downloaded
    order = np.argsort(ok_keys, kind="stable")
    pos = np.clip(np.searchsorted(ok_keys[order], keys), 0, max(len(ok_keys) - 1, 0))
    found = (ok_keys[order][pos] == keys) if len(ok_keys) else np.zeros(len(keys), bool)
    at = order[pos[found]]
    split_index = {s: i for i, s in enumerate(examples.SPLITS)}
    work = WorkList(
        keys=keys[found],
        ext=ok_ext[at],
        split=np.array([split_index[examples.split_for_key(k.decode(), validation_fraction, test_fraction)]
                        for k in keys[found]], np.int8),
        au=au[found],
        va=va[found] if va is not None else np.full((int(found.sum()), 2), np.nan, np.float32),
        size=ok_size[at],
    )
    counters = {
        "manifest_rows": int(len(keys)),
        "downloaded_ok": int(len(work)),
        "not_downloaded": int(len(keys) - len(work)),
        "ledger_ok_not_in_manifest": int(len(ok_keys) - len(work)),
    }
    return work, counters


def make_plan(work: WorkList, shard_bytes: int = SHARD_BYTES, part_bytes: int = PART_BYTES,
              min_parts: int = MIN_PARTS) -> dict:
    """{split: {"shards", "parts", "examples", "bytes"}} for each split with images.

    Shards hold about shard_bytes each (at least one per non-empty split). Each shard is cut
    into parts of at most part_bytes, and the run into at least min_parts parts in all, so the
    work spreads over every core even when the data makes a single shard per split.
    """
    plan = {}
    for index, split in enumerate(examples.SPLITS):
        rows = work.split == index
        count = int(rows.sum())
        if not count:
            continue
        size = int(work.size[rows].sum())
        shards = max(1, math.ceil(size / shard_bytes))
        parts = max(1, math.ceil(size / shards / part_bytes), math.ceil(min_parts * count / len(work) / shards))
        plan[split] = {"shards": shards, "parts": int(parts), "examples": count, "bytes": size}
    return plan


def slot_for_key(key: str, shards: int, parts: int) -> tuple[int, int]:
    """(shard, part) of an image inside its split, from its key's hash (stable across runs and machines)."""
    h = int(hashlib.sha256(("shard:" + key).encode()).hexdigest()[:15], 16)
    return h % shards, (h // shards) % parts


def assign_parts(work: WorkList, plan: dict):
    """(work sorted by split, shard, part and key — the order of the shards; shard array; part array)."""
    slots = np.array([slot_for_key(k.decode(), plan[examples.SPLITS[s]]["shards"], plan[examples.SPLITS[s]]["parts"])
                      for k, s in zip(work.keys, work.split)], np.int64).reshape(-1, 2)
    order = np.lexsort((work.keys, slots[:, 1], slots[:, 0], work.split))
    return work.take(order), slots[order, 0], slots[order, 1]


def write_work_list(work: WorkList, shard, part, uri: str, images_dir: str) -> list[dict]:
    """Writes the work list (one Parquet row group per part) and returns the parts, each naming its row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    au = np.ascontiguousarray(work.au)
    table = pa.table({
        "key": pa.array(work.keys.astype(str)),
        "ext": pa.array(np.array(ledger.FORMATS)[work.ext]),
        "au": pa.FixedSizeBinaryArray.from_buffers(pa.binary(au.shape[1] * 2), len(work),
                                                   [None, pa.py_buffer(au.tobytes())]),
        "valence": pa.array(work.va[:, 0], pa.float32()),
        "arousal": pa.array(work.va[:, 1], pa.float32()),
    })
    group = (work.split.astype(np.int64) << 48) | (shard << 24) | part
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(work) else np.array([], np.int64)
    ends = np.r_[starts[1:], len(work)]
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "worklist.parquet")
        with pq.ParquetWriter(local, table.schema) as writer:
            for start, end in zip(starts, ends):
                writer.write_table(table.slice(start, end - start), row_group_size=int(end - start))
                parts.append({"split": examples.SPLITS[work.split[start]], "shard": int(shard[start]),
                              "part": int(part[start]), "work_list": uri, "row_group": len(parts),
                              "images_dir": images_dir, "examples": int(end - start)})
        storage.upload_file(local, uri)
    return parts


def _absolute(uri: str) -> str:
    return uri if storage.is_gcs(uri) else os.path.abspath(uri)


def run(
    manifest_dir: str,
    downloads_dir: str,
    output_dir: str,
    validation_fraction: float = SPEC.defaults.validation_fraction,
    test_fraction: float = SPEC.defaults.test_fraction,
    max_side: int = SPEC.defaults.max_side,
    beam_args: str = SPEC.defaults.beam_args,
    shard_bytes: int = SHARD_BYTES,
    part_bytes: int = PART_BYTES,
    min_parts: int = MIN_PARTS,
    faces: FaceSettings | None = None,
    progress: bool = False,
) -> dict:
    """Converts every downloaded image of the manifest to contract-3 examples in output_dir; returns the summary.

    faces (default FaceSettings(): crop): each image's largest face is found, its eyes levelled
    and it is cropped; an image with no face is skipped or kept whole, counted by reason.
    Undecodable or missing images are counted and skipped. examples_summary.json is written
    last: a folder without it is a run that did not finish. progress prints progress lines of the
    images converted (part by part; components.common.progress) for a pipeline's console, on the
    local runner.
    """
    faces = faces if faces is not None else FaceSettings()
    examples.split_for_key("", validation_fraction, test_fraction)  # checks the fractions up front
    if int(max_side) < 0:
        raise ConvertError(f"max_side is {max_side}; expected 0 (keep the size) or a positive number of pixels")
    manifest_dir, downloads_dir, output_dir = map(_absolute, (manifest_dir, downloads_dir, output_dir))
    from components.common import beamio
    from components.convert import transforms

    options = beamio.pipeline_options(beam_args)  # bad beam_args fail here, before any work

    try:
        manifest = read_manifest(manifest_dir)
        downloaded = ledger.read_downloaded(downloads_dir, ASSUMED_IMAGE_BYTES)
    except ValueError as e:  # the manifest or the ledger is not what its contract says
        raise ConvertError(str(e)) from None
    has_va = manifest[2] is not None
    work, counters = build_work_list(manifest, downloaded, validation_fraction, test_fraction)
    del manifest
    plan = make_plan(work, shard_bytes, part_bytes, min_parts)
    has_va = has_va and bool((~np.isnan(work.va).any(axis=1)).any())
    au_ids = list(labels.ALL_AU_IDS)

    staging = storage.join(output_dir, STAGING_DIR)
    storage.delete(storage.join(output_dir, examples.EXAMPLES_SUMMARY_FILE))  # the folder is being rewritten
    storage.delete(staging)
    stats = beamio.empty_stats()
    if plan:
        _LOG.info("converting %d images: %s", len(work), plan)
        parts = write_work_list(*assign_parts(work, plan), storage.join(staging, "worklist.parquet"),
                                storage.join(downloads_dir, ledger.IMAGES_DIR))
        # Only a runner in this process can count every part; a distributed one has its own view of progress.
        progress_total = len(work) if progress and transforms.runs_in_this_process(options) else 0
        del work  # from here on the pipeline holds a few parts per core, whatever the dataset size
        stats = _run_pipeline(parts, plan, au_ids, output_dir, staging, int(max_side), options, faces, progress_total)

    if not stats["counters"].get(EXAMPLES_WRITTEN, 0):
        storage.delete(staging)
        raise ConvertError(_why_no_example(counters, stats["counters"], downloads_dir, faces))
    summary = beamio.write_summary(output_dir, au_ids, stats, plan, has_va=has_va, policy=None,
                                   counters={**counters, **stats["counters"]},
                                   # The manifest read (evaluate's slices by the URL's host follow it) and the
                                   # sheet it came from (the model card names it).
                                   parameters={"manifest": manifest_dir, "sheet": sheet_identity(manifest_dir),
                                               "validation_fraction": validation_fraction,
                                               "test_fraction": test_fraction, "max_side": int(max_side),
                                               "faces": faces.to_dict()})
    storage.delete(staging)
    return summary


def _why_no_example(counters: dict, converted: dict, downloads_dir: str, faces: FaceSettings) -> str:
    """Why convert wrote no example, in the words of the step that lost the images."""
    if not counters["downloaded_ok"]:
        return (f"none of the manifest's {counters['manifest_rows']} images was downloaded ok (ledger of "
                f"{downloads_dir}): nothing to convert; fix what download reports and rerun it")
    skipped = converted.get("faces_skipped", 0)
    if skipped:
        reasons = ", ".join(f"{r.replace('_', ' ')} {converted[counter_name(r)]}"
                            for r in REASONS if converted.get(counter_name(r)))
        return (f"no example written: all {skipped} decodable images were skipped without a usable face ({reasons}); "
                f"check the images, lower --face-min-score ({faces.min_score}), or keep them with --no-face whole "
                "or --faces whole")
    return (f"no example written: of {counters['downloaded_ok']} downloaded images, "
            f"{converted.get('skipped_undecodable', 0)} could not be decoded and "
            f"{converted.get('skipped_missing_file', 0)} were missing from {downloads_dir}; rerun download")


def _run_pipeline(parts, plan, au_ids, output_dir, staging, max_side, options, faces: FaceSettings,
                  progress_total: int = 0) -> dict:
    import apache_beam as beam

    from components.common import beamio
    from components.convert import transforms

    stats_path = storage.join(staging, "stats.json")
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | "Parts" >> beam.Create(parts)
        | "ImagesToTFRecords" >> transforms.ImagesToTFRecords(
            output_dir, storage.join(staging, "parts"), plan, au_ids, max_side,
            processes=transforms.local_processes(options), faces=faces.to_dict(), progress_total=progress_total)
        | "WriteStats" >> beam.Map(beamio.write_stats, stats_path)
    )
    result = pipeline.run()
    state = result.wait_until_finish()
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise RuntimeError(f"the convert pipeline ended in state {state}; see the runner's log")
    return beamio.read_stats(stats_path)
