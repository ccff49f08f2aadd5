"""The Beam side of annotate: a ModelHandler for the shared scorer, and the PTransform that turns work items into
annotation rows (RunInference finds and scores the faces) and per-image tallies, with its counters.

A work item is {"key", "url", "path", "labels"}: the image's manifest key, its URL (or path), where its bytes are,
and its manifest labels for the model's AUs (0, 1, 999; None when the manifest has none).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from components.annotate.params import MAX_IMAGE_BYTES
from components.common import annotations, inference, labels
from components.common import faces as face_contract

NAMESPACE = "annotate"  # the counters' namespace (the runner's UI, and the step's log)
# Counters: every image once, the faces scored, the images without a face (and of them those whose face was too
# small), and each reason an image could not be scored.
COUNTERS = ("images", "faces", "no_face", face_contract.TINY_FACE) + annotations.BAD_REASONS
_UNREAD = "unread"  # the tagged output of images whose file could not be read
_TALLY = "tally"  # the tagged output of per-image tallies


class ScorerModelHandler(ModelHandler):
    """RunInference's handler of a model the shared scorer (components.common.inference.Scorer) loads: each worker
    process loads it once (RunInference shares it between the worker's threads); a batch is a list of
    {"item", "data"} (the work item and its bytes), and each result is the scorer's result for the image.
    threads: the scorer's face-finding threads in each worker (logic.scorer_threads: the cores a worker process
    has to itself)."""

    def __init__(self, model_dir: str, which_faces: str = "all", batch_size: int = 32, threshold: float | None = None,
                 scorer=None, threads: int = 1):
        super().__init__()
        self._model_dir, self._which_faces = model_dir, which_faces
        self._batch_size, self._threshold, self._threads = int(batch_size), threshold, int(threads)
        # What makes the scorer: inference.Scorer, or a stand-in of the same signature (tests).
        self._scorer = scorer

    def load_model(self):
        make = self._scorer or inference.Scorer
        if make is inference.Scorer:
            inference.quiet_libraries()  # in the worker, before TensorFlow and MediaPipe are imported
        return make(self._model_dir, which_faces=self._which_faces, batch_size=self._batch_size,
                    threshold=self._threshold, workers=self._threads)

    def run_inference(self, batch: Sequence[dict], model, inference_args: dict | None = None
                      ) -> Iterable[PredictionResult]:
        results = model.score([e["data"] for e in batch], [e["item"]["url"] for e in batch])
        # The bytes stop here: only the work item and the result go downstream.
        return [PredictionResult(e["item"], r) for e, r in zip(batch, results)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Beam's BatchElements grows batches up to this while a batch's time stays reasonable.
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(e["data"]) for e in batch)  # not the default pickle of every image


def read_bytes(path: str, max_bytes: int) -> tuple[bytes | None, str | None, str]:
    """(the file's bytes, None, ""), or (None, reason, message) when it is missing or too big to be a photograph.
    Any other I/O error is raised: the runner retries the bundle."""
    try:
        if "://" in path:
            from apache_beam.io.filesystems import FileSystems

            matched = FileSystems.match([path])[0].metadata_list
            if not matched:
                raise FileNotFoundError(path)
            size = matched[0].size_in_bytes
        else:
            size = os.path.getsize(path)
        if size > max_bytes:
            return None, inference.TOO_LARGE, (f"{path} is {size / 2**20:.0f} MB, more than any photograph "
                                               f"({max_bytes // 2**20} MB): not read; shrink it")
        if "://" in path:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                return f.read(), None, ""
        with open(path, "rb") as f:
            return f.read(), None, ""
    except FileNotFoundError:
        return None, annotations.MISSING, (f"{path} does not exist although the ledger (or the listing) names it; "
                                           "rerun download, or list the folder again")


class _ReadImageFn(beam.DoFn):
    """A work item -> {"item", "data"}, or to the unread output a scorer-like result saying why it has no bytes."""

    def __init__(self, max_bytes: int):
        self._max_bytes = int(max_bytes)

    def process(self, item):
        data, reason, message = read_bytes(item["path"], self._max_bytes)
        if data is None:
            yield beam.pvalue.TaggedOutput(_UNREAD, PredictionResult(item, {
                "image": item["url"], "width": 0, "height": 0, "faces": [], "faces_found": 0, "error": message,
                "reason": reason}))
            return
        yield {"item": item, "data": data}


def tally(rows: list[dict], item_labels, au_ids) -> dict:
    """What one image adds to the summary, from its annotation rows: its status and reason, its faces, each AU's
    positives among them, and the active flags of its largest face beside its labels (for the agreement)."""
    status, reason = rows[0][annotations.STATUS], rows[0][annotations.REASON]
    scored = [r for r in rows if r[annotations.STATUS] == annotations.SCORED]
    positives = [sum(int(r[annotations.active_column(a)]) for r in scored) for a in au_ids]
    first = [int(scored[0][annotations.active_column(a)]) for a in au_ids] if scored else None
    return {"status": status, "reason": reason, "faces": len(scored), "positives": positives, "first": first,
            "labels": None if item_labels is None else [int(v) for v in item_labels]}


class _RowsFn(beam.DoFn):
    """A scored image -> its annotation rows (main output) and its tally (tagged), counted."""

    def __init__(self, au_ids, version: str | None):
        self._au_ids, self._version = [int(a) for a in au_ids], version
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in COUNTERS}

    def process(self, prediction: PredictionResult):
        item, result = prediction.example, prediction.inference
        rows = annotations.result_rows(result, item["key"], item["url"], self._au_ids, self._version)
        yield from rows
        t = tally(rows, item.get("labels"), self._au_ids)
        self._counters["images"].inc()
        self._counters["faces"].inc(t["faces"])
        if t["status"] == annotations.NO_FACE:
            self._counters["no_face"].inc()
            if t["reason"] == face_contract.TINY_FACE:
                self._counters[face_contract.TINY_FACE].inc()
        elif t["status"] == annotations.BAD and t["reason"] in self._counters:
            self._counters[t["reason"]].inc()
        yield beam.pvalue.TaggedOutput(_TALLY, t)


def empty_tally(n_aus: int) -> dict:
    return {"images": 0, "images_scored": 0, "faces": 0, "rows": 0, "no_face": {}, "bad": {},
            "positives": [0] * n_aus, "confusion": [[0, 0, 0, 0] for _ in range(n_aus)], "compared": 0,
            "labelled": 0}


def add_tally(total: dict, t: dict) -> dict:
    """Adds one image's tally into the run's (in place). confusion: [tp, fp, tn, fn] per AU, on the known labels
    (0 or 1) of images whose largest face was scored."""
    total["images"] += 1
    total["rows"] += max(1, t["faces"])
    total["faces"] += t["faces"]
    if t["status"] == annotations.SCORED:
        total["images_scored"] += 1
    elif t["status"] == annotations.NO_FACE:
        total["no_face"][t["reason"]] = total["no_face"].get(t["reason"], 0) + 1
    else:
        total["bad"][t["reason"]] = total["bad"].get(t["reason"], 0) + 1
    total["positives"] = [a + b for a, b in zip(total["positives"], t["positives"])]
    if t["labels"] is not None:
        total["labelled"] += 1
        if t["first"] is not None:
            total["compared"] += 1
            for j, (label, active) in enumerate(zip(t["labels"], t["first"])):
                if label == labels.UNKNOWN:
                    continue
                total["confusion"][j][{(1, 1): 0, (0, 1): 1, (0, 0): 2, (1, 0): 3}[(int(label), int(active))]] += 1
    return total


def merge_tallies(a: dict, b: dict) -> dict:
    """The sum of two run tallies (a new dict)."""
    out = empty_tally(len(a["positives"]))
    for key in ("images", "images_scored", "faces", "rows", "compared", "labelled"):
        out[key] = a[key] + b[key]
    for key in ("no_face", "bad"):
        out[key] = {r: a[key].get(r, 0) + b[key].get(r, 0) for r in sorted(set(a[key]) | set(b[key]))}
    out["positives"] = [x + y for x, y in zip(a["positives"], b["positives"])]
    out["confusion"] = [[x + y for x, y in zip(p, q)] for p, q in zip(a["confusion"], b["confusion"])]
    return out


class Tally(beam.CombineFn):
    """Sums per-image tallies into the run's: the figures of annotate_summary.json."""

    def __init__(self, n_aus: int):
        self._n = int(n_aus)

    def create_accumulator(self):
        return empty_tally(self._n)

    def add_input(self, acc, t):
        return add_tally(acc, t)

    def merge_accumulators(self, accs):
        out = empty_tally(self._n)
        for acc in accs:
            out = merge_tallies(out, acc)
        return out

    def extract_output(self, acc):
        return acc


@beam.ptransform_fn
def AnnotateImages(items, model_handler: ModelHandler, au_ids, version: str | None,  # noqa: N802 - Beam's CamelCase
                   max_bytes: int = MAX_IMAGE_BYTES):
    """Work items -> (annotation rows, per-image tallies): two PCollections.

    Each image's file is read (a missing or oversized one becomes a bad row), RunInference finds its faces and
    scores them with model_handler's model (loaded once per worker), and each result becomes the image's rows
    (components.common.annotations) and its tally (Tally sums them). A bad image never fails the run: it is a row
    with its reason, counted under it.
    """
    read = items | "ReadImages" >> beam.ParDo(_ReadImageFn(max_bytes)).with_outputs(_UNREAD, main="read")
    scored = read.read | "FindFacesAndScore" >> RunInference(model_handler)
    results = (scored, read[_UNREAD]) | "WithUnread" >> beam.Flatten()
    out = results | "ToRows" >> beam.ParDo(_RowsFn(au_ids, version)).with_outputs(_TALLY, main="rows")
    return out.rows, out[_TALLY]
