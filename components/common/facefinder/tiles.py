"""Where the face finder looks a second time, at a finer scale: overlapping square tiles of a picture, and the non-maximum suppression that merges what they find (numpy only: no detector here)."""
from __future__ import annotations

import math

import numpy as np

# BlazeFace (full range) sees its input squeezed into 192 x 192 px. On 300 small-faces demo scenes of 480..1024 px
# (python benchmarks/faces.py), its pass over the whole picture found 96% of the faces of 21 px or more in that view,
# boxed at IoU 0.85 with the truth on average, but only two thirds of those under 18 px, boxed at 0.75-0.79; tiles
# found 87-100% of those at IoU 0.86-0.88. So a picture whose whole-picture pass gives no face of SURE_IN_VIEW px is
# searched again in tiles, each of TILE_SIDE px: a TILE_FACE px face is 24 px in the view of such a tile.
DETECTOR_VIEW = 192
SURE_IN_VIEW = 20
TILE_FACE = 48  # px: the smallest face the tiles are for
TILE_SIDE = TILE_FACE * DETECTOR_VIEW // 24  # 384 px
# When the tiles are searched (Detector's `tiles`): auto (default): in a picture larger than a tile whose
# whole-picture pass found no face of SURE_IN_VIEW px: every tile if it found none, the tile around each face if it
# found only small ones (tiles_around); always: every tile of every picture larger than a tile, even beside a
# clear face (a group photo's small faces beside a large one), at several times the cost; never: the whole picture
# only (the face finder before the tiles).
TILE_POLICIES = ("auto", "always", "never")
# A face found in a tile needs this confidence (or --face-min-score, if higher). The tiles are searched where the
# picture gave no clear face, so every picture without a face is searched again, many times over. Measured on 300
# pictures without a face (demo backgrounds and smoothed noise, 480..1280 px): tiles at 0.5 reported a face in 17
# (scores 0.60-0.74), at 0.7 in at most 2; of 97 true faces found in tiles (demo scenes), 95% scored 0.75 or more.
TILE_MIN_SCORE = 0.7
# Of two detections whose boxes overlap by more than this IoU, or of which the smaller lies mostly (SAME_INSIDE)
# inside the other (a face cut by a tile's edge, beside the whole face in the next tile), the more confident stays.
NMS_IOU = 0.3
SAME_INSIDE = 0.6


def _starts(length: int, side: int, overlap: int) -> list[int]:
    """Where tiles of `side` px begin along `length` px: evenly spread, sharing at least `overlap` px."""
    if side >= length:
        return [0]
    count = math.ceil((length - overlap) / (side - overlap))
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def tile_boxes(width: int, height: int, side: int = TILE_SIDE) -> list[tuple[int, int, int, int]]:
    """The (x0, y0, x1, y1) tiles of a width x height picture, row by row; [] when it is no larger than one tile.

    Tiles are square (the detector squeezes its input into a square), `side` px or the picture's
    shorter side if that is smaller. Neighbours share at least a quarter of a tile, and at least
    an eighth of the picture's longer side: the largest face the whole-picture pass may miss
    (24 px of its 192 px view), so that such a face lies whole inside some tile.
    """
    width, height = int(width), int(height)
    if max(width, height) <= side:
        return []
    side = min(side, width, height)
    overlap = min(side // 2, max(side // 4, max(width, height) // 8))
    return [(x, y, x + side, y + side) for y in _starts(height, side, overlap) for x in _starts(width, side, overlap)]


def sure(faces, width: int, height: int) -> bool:
    """Whether the whole-picture pass found a face it sees clearly: one of SURE_IN_VIEW px or more in its view of a
    width x height picture (faces: anything with a `side` in the picture's pixels, as detect.Face)."""
    return any(f.side * DETECTOR_VIEW / max(width, height) >= SURE_IN_VIEW for f in faces)


def tiles_around(tiles, boxes) -> list[tuple[int, int, int, int]]:
    """Of `tiles`, the one that shows each of `boxes` best (the most of it, then the nearest its centre), once each:
    where the whole picture found only faces it does not see clearly, those are looked at again, not every tile."""
    if not len(tiles) or not len(boxes):
        return []
    t = np.asarray(tiles, np.float64).reshape(-1, 4)
    centres = (t[:, :2] + t[:, 2:]) / 2
    chosen: list[int] = []
    for box in np.asarray(boxes, np.float64).reshape(-1, 4):
        shown = _intersection(box, t)
        near = np.hypot(*(centres - (box[:2] + box[2:]) / 2).T)
        best = int(np.lexsort((near, -shown))[0])
        if best not in chosen:
            chosen.append(best)
    return [tuple(int(v) for v in t[i]) for i in sorted(chosen)]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with each of (n, 4) boxes (x0, y0, x1, y1)."""
    inter = _intersection(box, boxes)
    union = _area(box[None])[0] + _area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    return w * h


def nms(boxes, scores, iou: float = NMS_IOU, inside: float = SAME_INSIDE) -> list[int]:
    """Indices of the boxes kept, most confident first: each box suppresses the less confident ones that overlap it
    by more than `iou`, or that lie more than `inside` of their own area within it (or it within them)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = list(np.argsort(-scores, kind="stable"))
    areas = _area(boxes)
    keep: list[int] = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(best))
        if not len(rest):
            break
        inter = _intersection(boxes[best], boxes[rest])
        union = areas[best] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        smaller = np.minimum(areas[best], areas[rest])
        within = np.where(smaller > 0, inter / np.where(smaller > 0, smaller, 1), 0.0)
        order = [int(i) for i, o, w in zip(rest, overlap, within) if o <= iou and w <= inside]
    return keep
