"""The test faces the model got most wrong (errors.json): per AU the highest probabilities where the label is 0 and the
lowest where it is 1, and the most wrong in the worst slices, each with a small thumbnail of the crop the model saw."""
from __future__ import annotations

import base64
import heapq
import io

import numpy as np

from components.common import labels
from components.common.evaluation import (ERRORS_PER_KIND, ERRORS_PER_SLICE, ERRORS_SLICES, ERROR_THUMBNAIL_PX,
                                          FALSE_NEGATIVE, FALSE_POSITIVE)

# Candidates kept per AU and kind while scoring: more than are shown, so that the worst slices find theirs among them.
POOL = 24


class ErrorPool:
    """The most wrong examples of a split, collected batch by batch while it is scored (bounded: POOL per AU per kind,
    with the encoded image of each)."""

    def __init__(self, au_ids: list[int], pool: int = POOL):
        self.au_ids = [int(a) for a in au_ids]
        self.pool = pool
        self.seen = 0  # examples offered, the tie-break: the earlier example first
        # (AU column, kind) -> a min-heap of (wrongness, -order, key, probability, label, encoded)
        self.heaps: dict[tuple[int, str], list] = {(j, k): [] for j in range(len(self.au_ids))
                                                   for k in (FALSE_POSITIVE, FALSE_NEGATIVE)}

    def add(self, keys: list[str], encoded: list[bytes], y_true: np.ndarray, scores: np.ndarray) -> None:
        """One scored batch: labels and probabilities in the model's AU order. A label 999 is never an error."""
        y, s = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
        for i, key in enumerate(keys):
            order = self.seen + i
            for j in range(len(self.au_ids)):
                label, p = int(y[i, j]), float(s[i, j])
                if label == 0:
                    kind, wrongness = FALSE_POSITIVE, p
                elif label == 1:
                    kind, wrongness = FALSE_NEGATIVE, 1.0 - p
                else:  # labels.UNKNOWN: not annotated, so neither right nor wrong
                    continue
                heap = self.heaps[(j, kind)]
                item = (wrongness, -order, key, p, label, encoded[i])
                if len(heap) < self.pool:
                    heapq.heappush(heap, item)
                elif item[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, item)
        self.seen += len(keys)

    def _ranked(self, j: int, kind: str) -> list[tuple]:
        return sorted(self.heaps[(j, kind)], key=lambda t: (-t[0], -t[1]))

    def report(self, split: str, slice_groups: dict[str, list[str]] | None = None, keys: list[str] | None = None,
               measured: list[dict] | None = None, per_kind: int = ERRORS_PER_KIND) -> dict:
        """errors.json: per AU its false positives and negatives (most wrong first, at most per_kind each), the most
        wrong examples of the ERRORS_SLICES worst measured slices, and a thumbnail per example named.

        slice_groups/keys: {feature: slice of each example} in the order of keys (the scored split's), to name each
        example's slices; measured: metrics.json's slices "measured" (the worst slices are chosen among them).
        """
        where = {k: i for i, k in enumerate(keys or [])}
        groups = slice_groups or {}
        encoded: dict[str, bytes] = {}

        def entry(j, kind, t):
            wrongness, _, key, p, label, data = t
            encoded[key] = data
            row = where.get(key)
            return {"key": key, "split": split, "au": self.au_ids[j], "kind": kind, "probability": round(p, 4),
                    "label": label, "slices": {f: v[row] for f, v in groups.items()} if row is not None else {}}

        per_au = []
        for j, au in enumerate(self.au_ids):
            per_au.append({"au": au, "name": labels.AU_NAMES.get(au, ""),
                           FALSE_POSITIVE: [entry(j, FALSE_POSITIVE, t) for t in self._ranked(j, FALSE_POSITIVE)[:per_kind]],
                           FALSE_NEGATIVE: [entry(j, FALSE_NEGATIVE, t) for t in self._ranked(j, FALSE_NEGATIVE)[:per_kind]]})
        by_slice = []
        rated = sorted((m for m in measured or [] if m.get("macro_f1") is not None),
                       key=lambda m: (m["macro_f1"], m["examples"]))
        for m in rated[:ERRORS_SLICES]:
            values = groups.get(m["feature"])
            if values is None:
                continue
            inside = [(t, j, kind) for (j, kind), heap in self.heaps.items() for t in heap
                      if t[2] in where and values[where[t[2]]] == m["value"]]
            inside.sort(key=lambda x: (-x[0][0], -x[0][1]))
            chosen, names = [], set()
            for t, j, kind in inside:  # an example once, at its most wrong AU
                if t[2] not in names and len(chosen) < ERRORS_PER_SLICE:
                    names.add(t[2])
                    chosen.append(entry(j, kind, t))
            by_slice.append({"feature": m["feature"], "value": m["value"], "examples": m["examples"],
                             "macro_f1": m["macro_f1"], "errors": chosen})
        return {"split": split, "per_kind": per_kind, "thumbnail_px": ERROR_THUMBNAIL_PX,
                "note": ("false positives: the highest probabilities where the label is 0; false negatives: the lowest "
                         f"where it is 1; a label {labels.UNKNOWN} (not annotated) is never an error. Slice errors "
                         "are the most wrong of the worst slices among the split's most wrong per AU"),
                "per_au": per_au, "slices": by_slice,
                "thumbnails": {k: thumbnail(v) for k, v in sorted(encoded.items())}}


def thumbnail(encoded: bytes, px: int = ERROR_THUMBNAIL_PX) -> str | None:
    """A picture's small JPEG (its longer side px) as base64, or None when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(encoded)) as im:
            im = im.convert("RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return base64.b64encode(buf.getvalue()).decode()
