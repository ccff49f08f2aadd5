"""The Beam side of convert: the PTransform that turns images into contract-3 TFRecord shards, and how many
local processes it converts with (runner options and shard statistics: components.common.beamio).

Image bytes never pass through a shuffle, and the runner never holds a row per image: the
driver cuts the work list into parts (a Parquet row group each); a worker converts a part and
streams its examples to the part's own file, and the parts of a shard are concatenated into
it at the end (a TFRecord file is a plain sequence of records). Memory stays the same
whatever the dataset size: one part's labels and one image per process.
"""
from __future__ import annotations

import gc
import logging
import sys

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.window import GlobalWindows

from components.common import beamio, examples
from components.convert import parts

NAMESPACE = "convert"

_COPY_CHUNK = 8 * 1024 * 1024
_UNCOMPRESSED = CompressionTypes.UNCOMPRESSED


class ConvertOptions(PipelineOptions):
    """The convert step's own Beam option (given in beam_args like any other)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--convert_processes", type=int, default=0,
            help="Local processes that convert images at once; 0: every core on the local in_memory runner, "
                 "1 on any runner that has workers of its own.")


def runs_in_this_process(options: PipelineOptions) -> bool:
    """Whether the runner runs the transforms in this process: the local in_memory runner with one worker."""
    from apache_beam.options.pipeline_options import DirectOptions

    runner = str(options.view_as(StandardOptions).runner or "")
    direct = options.view_as(DirectOptions)
    return runner.split(".")[-1] in ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner") and (
        direct.direct_running_mode in (None, "in_memory") and (direct.direct_num_workers or 1) == 1
    )


def local_processes(options: PipelineOptions) -> int:
    """Processes each worker converts with: --convert_processes, else every core for the local in_memory runner."""
    chosen = options.view_as(ConvertOptions).convert_processes
    if chosen and chosen > 0:
        return int(chosen)
    return beamio.local_cores() if runs_in_this_process(options) else 1


# --- convert ----------------------------------------------------------------------------------


def read_part_items(part: dict) -> list[dict]:
    """The work items of a part: inline in part["items"], or its row group of the work list (sorted by key)."""
    if "items" in part:
        return sorted(part["items"], key=lambda it: it["key"])
    import pyarrow.parquet as pq

    path = part["work_list"]
    source = path if "://" not in path else FileSystems.open(path, compression_type=_UNCOMPRESSED)
    columns = pq.ParquetFile(source).read_row_group(part["row_group"]).to_pydict()
    images_dir = part["images_dir"]
    return [
        {"key": key, "path": FileSystems.join(images_dir, f"{key}.{ext}"), "au": au,
         "va": None if v is None or a is None or v != v or a != a else [v, a]}
        for key, ext, au, v, a in zip(columns["key"], columns["ext"], columns["au"], columns["valence"],
                                      columns["arousal"])
    ]


class _ConvertPartFn(beam.DoFn):
    """Converts the images of one part and streams their examples to the part's own file.

    processes > 1 converts the parts of a bundle in that many local processes at once. It is
    how a local run uses every core: Beam's multi_processing mode starts one SDK worker per
    core, and each spends seconds importing Beam (more than the whole demo set takes), while a
    forked process starts in milliseconds. On a distributed runner it stays 1: the runner
    already runs one worker per core.
    """

    def __init__(self, staging_dir: str, au_ids, max_side: int, processes: int = 1, faces: dict | None = None,
                 progress_total: int = 0):
        self._staging_dir = staging_dir
        self._au_ids = [int(a) for a in au_ids]
        self._max_side = int(max_side)
        self._faces = dict(faces) if faces else None
        self._processes = int(processes)
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in parts.COUNTERS}
        self._pool = None
        self._pending = []
        self._progress_total = int(progress_total)
        self._progress = None

    def setup(self):
        if self._progress_total:
            from components.common import progress

            self._progress = progress.Progress("convert", self._progress_total, "images")
        if self._processes > 1 and "tensorflow" in sys.modules:
            # TensorFlow's thread pools would be copied half-alive into forked children; the step
            # itself never imports it, so only a caller that did (a notebook, a test run) gets here.
            logging.getLogger(__name__).warning(
                "TensorFlow is loaded in this process: converting in this process instead of %d forked ones",
                self._processes)
            self._processes = 1
        if self._processes > 1 and self._faces and self._faces.get("mode") == "crop":
            from components.common.facefinder import detect

            if detect.running_here():
                # MediaPipe's threads would be copied half-alive too: its forked children hang.
                logging.getLogger(__name__).warning(
                    "the face detector already ran in this process: converting in this process instead of %d "
                    "forked ones", self._processes)
                self._processes = 1
        if self._processes > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: the children start in milliseconds with Pillow and protobuf loaded and run only
            # parts.convert_part (no Beam, gRPC or TensorFlow). Spawn and forkserver would re-import
            # the caller's __main__ script in each child, which breaks scripts without a main guard.
            # Freezing the collector keeps it from touching (and so copying) every inherited page.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            gc.freeze()
            self._pool = ProcessPoolExecutor(self._processes, mp_context=context)

    def teardown(self):
        if self._progress is not None:
            self._progress.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            gc.unfreeze()

    def start_bundle(self):
        self._pending = []

    def process(self, part):
        task = {
            "split": part["split"], "shard": part["shard"], "part": part["part"],
            "path": FileSystems.join(
                self._staging_dir, f"{part['split']}-{part['shard']:05d}-part-{part['part']:05d}.tfrecord"),
            "items": read_part_items(part),
            "au_ids": self._au_ids, "max_side": self._max_side, "faces": self._faces,
        }
        if self._pool is None:
            yield self._count(parts.convert_part(task))
            return
        self._pending.append(self._pool.submit(parts.convert_part, task))
        # Two parts a process in flight keep every core busy and memory bounded.
        while len(self._pending) > 2 * self._processes:
            yield self._count(self._pending.pop(0).result())

    def finish_bundle(self):
        pending, self._pending = self._pending, []
        for future in pending:
            yield GlobalWindows.windowed_value(self._count(future.result()))

    def _count(self, result: dict) -> dict:
        for name, n in result["stats"]["counters"].items():
            self._counters[name].inc(n)
        if self._progress is not None:
            self._progress.update(result["images"])
        return result


class _ConcatenateShardFn(beam.DoFn):
    """Makes a shard of its parts (in part order) and deletes the parts."""

    def __init__(self, output_dir: str, plan: dict):
        self._output_dir = output_dir
        self._plan = plan

    def process(self, element):
        (split, shard), pieces = element
        pieces = sorted(pieces, key=lambda p: p["part"])
        final = FileSystems.join(self._output_dir, examples.shard_name(split, shard, self._plan[split]["shards"]))
        paths = [p["path"] for p in pieces]
        if len(paths) == 1:
            FileSystems.rename(paths, [final])
        else:
            with FileSystems.create(final, compression_type=_UNCOMPRESSED) as out:
                for path in paths:
                    with FileSystems.open(path, compression_type=_UNCOMPRESSED) as f:
                        while chunk := f.read(_COPY_CHUNK):
                            out.write(chunk)
            FileSystems.delete(paths)
        stats = beamio.empty_stats()
        for p in pieces:
            beamio.add_stats(stats, p["stats"])
        stats["shards"] = [[split, shard, final, stats["splits"][split]["examples"]]]
        yield stats


@beam.ptransform_fn
def ImagesToTFRecords(parts_of_work, output_dir: str, staging_dir: str, plan: dict, au_ids, max_side: int = 0,
                      processes: int = 1, faces: dict | None = None,
                      progress_total: int = 0):  # noqa: N802 - Beam names transforms in CamelCase
    """Parts of the work -> contract-3 TFRecord shards in output_dir; returns a PCollection of one statistics dict.

    Each part is {"split", "shard", "part"} and either "items" (a list of {"key", "path"
    (images/<key>.<ext>), "au" (int16 bytes, one per au_id), "va" ([valence, arousal] or
    None)}) or "work_list", "row_group", "images_dir" (logic.write_work_list). plan: {split:
    {"shards": n}} for every split with images. Undecodable and missing images are counted
    and skipped. processes: local processes converting parts at once (local_processes). faces:
    a components.common.faces.FaceSettings dict (None: whole images, no detection); each worker
    process loads the face detector once. progress_total (the images of all parts; 0 for none):
    progress lines of the images converted, part by part, for a pipeline's console (one worker only).
    """
    return (
        parts_of_work
        | "FindAlignCropFacesAndWritePart" >> beam.ParDo(
            _ConvertPartFn(staging_dir, au_ids, max_side, processes, faces, progress_total))
        | "KeyByShard" >> beam.Map(lambda p: ((p["split"], p["shard"]), p))
        | "GroupByShard" >> beam.GroupByKey()
        | "ConcatenateParts" >> beam.ParDo(_ConcatenateShardFn(output_dir, plan))
        | "MergeStats" >> beam.CombineGlobally(beamio.MergeStats())
    )
