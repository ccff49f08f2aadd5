"""Synthetic faces whose 11 Action Units each change what a person sees, with their ground-truth labels."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from components.common import labels

# The AUs the faces show, in the order of the arrays below.
FACE_AU_IDS = labels.DEFAULT_AU_IDS
_AU_INDEX = {au: i for i, au in enumerate(FACE_AU_IDS)}

# Expressions drive co-occurrence: each has a share of the faces and, per AU, the chance that
# AU is active. On top of them every AU fires alone now and then (BASE_RATE), so no AU is fully
# predictable from another. Expected prevalence per AU lands between ~12% and ~35%.
BASE_RATE = 0.04
EXPRESSIONS: dict[str, tuple[float, dict[int, float]]] = {
    "neutral": (0.28, {}),
    "happy": (0.22, {6: 0.75, 12: 0.95, 25: 0.35, 26: 0.2}),
    "surprise": (0.12, {1: 0.9, 2: 0.9, 5: 0.8, 25: 0.8, 26: 0.7}),
    "sad": (0.08, {1: 0.85, 4: 0.6, 17: 0.6}),
    "angry": (0.08, {4: 0.9, 5: 0.4, 9: 0.3, 17: 0.4}),
    "disgust": (0.08, {9: 0.9, 4: 0.5, 17: 0.4, 25: 0.5}),
    "fear": (0.08, {1: 0.9, 2: 0.7, 4: 0.7, 5: 0.8, 20: 0.85, 25: 0.8, 26: 0.4}),
    "talking": (0.06, {25: 0.8, 26: 0.5, 20: 0.4}),
}
# A dropped jaw almost always parts the lips (AU26 without AU25 is rare in real faces).
P_25_GIVEN_26 = 0.9

SKIN_TONES = [(255, 224, 196), (241, 194, 158), (224, 172, 125), (198, 134, 92), (161, 102, 64),
              (125, 80, 52), (94, 60, 40), (236, 188, 180)]
HAIR_COLOURS = [(25, 20, 18), (60, 40, 28), (105, 70, 40), (170, 130, 80), (215, 180, 110),
                (150, 60, 30), (150, 150, 150), (220, 220, 215)]
CLOTHES = [(40, 60, 120), (150, 30, 40), (30, 110, 60), (200, 200, 200), (30, 30, 30), (220, 160, 40)]


@dataclass(frozen=True)
class FaceLabels:
    """The labels of a set of faces: binary AUs, their rendered intensities, valence/arousal, expression."""

    active: np.ndarray  # bool [n, 11] in FACE_AU_IDS order
    intensity: np.ndarray  # float [n, 11]: 0.55..1 when active, 0..0.12 (a trace) when not
    valence: np.ndarray  # float32 [n], -1..1
    arousal: np.ndarray  # float32 [n], -1..1
    expression: list[str]


def sample_labels(n: int, seed: int) -> FaceLabels:
    """AU labels for n faces: expressions make AUs co-occur as in real faces; valence/arousal follow from the AUs plus noise."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1AB]))
    names = list(EXPRESSIONS)
    shares = np.array([EXPRESSIONS[e][0] for e in names])
    expr_idx = rng.choice(len(names), size=n, p=shares / shares.sum())
    k = len(FACE_AU_IDS)
    p = np.full((n, k), BASE_RATE)
    for e_i, e in enumerate(names):
        rows = expr_idx == e_i
        for au, prob in EXPRESSIONS[e][1].items():
            p[rows, _AU_INDEX[au]] = max(prob, BASE_RATE)
    active = rng.random((n, k)) < p
    jaw, lips = _AU_INDEX[26], _AU_INDEX[25]
    force_lips = active[:, jaw] & ~active[:, lips] & (rng.random(n) < P_25_GIVEN_26)
    active[force_lips, lips] = True
    intensity = np.where(active, rng.uniform(0.55, 1.0, (n, k)), rng.uniform(0.0, 0.12, (n, k)))

    def i(au: int) -> np.ndarray:
        return intensity[:, _AU_INDEX[au]]

    valence = (0.75 * i(12) + 0.3 * i(6) - 0.45 * i(4) - 0.45 * i(9) - 0.3 * i(17) - 0.25 * i(20)
               + rng.normal(0, 0.12, n))
    arousal = (-0.35 + 0.45 * i(5) + 0.35 * i(26) + 0.25 * i(1) + 0.25 * i(2) + 0.2 * i(25) + 0.3 * i(20)
               + 0.15 * i(4) + rng.normal(0, 0.12, n))
    return FaceLabels(
        active=active,
        intensity=intensity,
        valence=np.clip(valence, -1, 1).astype(np.float32),
        arousal=np.clip(arousal, -1, 1).astype(np.float32),
        expression=[names[j] for j in expr_idx],
    )


# ------------------------------------------------------------------------------------------ drawing


def _parabola(x0: float, x1: float, y_end: float, y_mid: float, n: int = 11) -> list[tuple[float, float]]:
    """Points from (x0, y_end) to (x1, y_end) through (mid, y_mid): the shape of lips and lids."""
    t = _UNIT.get(n)
    if t is None:
        t = _UNIT[n] = (np.linspace(-1.0, 1.0, n), 1 - np.linspace(-1.0, 1.0, n) ** 2)
    xs = (x0 + x1) / 2 + t[0] * ((x1 - x0) / 2)
    ys = y_end + (y_mid - y_end) * t[1]
    return list(zip(xs.tolist(), ys.tolist()))


_UNIT: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _shade(colour, f: float, add=(0, 0, 0)) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * f + a))) for c, a in zip(colour, add))


class _Canvas:
    """Draws in face units (0..1 across the canvas) so every size draws the same face.

    On an RGBA image PIL writes a translucent colour, alpha included, instead of laying it over
    what is there. With blend=True translucent strokes are laid over (drawn on a small overlay,
    then alpha-composited); without it they leave see-through marks, as render_face always has.
    """

    def __init__(self, img: Image.Image, blend: bool = False):
        self.s = img.size[0]
        self.img = img
        self.d = ImageDraw.Draw(img, "RGBA")
        self.blend = blend and img.mode == "RGBA"

    def pts(self, points):
        return [(x * self.s, y * self.s) for x, y in points]

    def _over(self, colour) -> bool:
        return self.blend and colour is not None and len(colour) == 4 and colour[3] < 255

    def _composite(self, xy, pad: float, draw) -> None:
        """Runs draw(ImageDraw, shift) on an overlay covering the points xy (+pad px), then lays it over."""
        xs, ys = [p[0] for p in xy], [p[1] for p in xy]
        w, h = self.img.size
        x0, y0 = max(0, int(math.floor(min(xs) - pad))), max(0, int(math.floor(min(ys) - pad)))
        x1, y1 = min(w, int(math.ceil(max(xs) + pad)) + 1), min(h, int(math.ceil(max(ys) + pad)) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        overlay = Image.new("RGBA", (x1 - x0, y1 - y0), (0, 0, 0, 0))
        draw(ImageDraw.Draw(overlay), (x0, y0))
        self.img.alpha_composite(overlay, dest=(x0, y0))

    def ellipse(self, cx, cy, rx, ry, fill, outline=None, width=0.0):
        s = self.s
        box = [(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s]
        w = max(1, int(width * s)) if outline else 0
        if self._over(fill) or self._over(outline):
            self._composite([box[:2], box[2:]], 1, lambda d, o: d.ellipse(
                [box[0] - o[0], box[1] - o[1], box[2] - o[0], box[3] - o[1]], fill=fill, outline=outline, width=w))
        else:
            self.d.ellipse(box, fill=fill, outline=outline, width=w)

    def polygon(self, points, fill):
        xy = self.pts(points)
        if self._over(fill):
            self._composite(xy, 1, lambda d, o: d.polygon([(x - o[0], y - o[1]) for x, y in xy], fill=fill))
        else:
            self.d.polygon(xy, fill=fill)

    def line(self, points, fill, width):
        xy = self.pts(points)
        w = max(1, int(round(width * self.s)))
        if self._over(fill):
            self._composite(xy, w, lambda d, o: d.line([(x - o[0], y - o[1]) for x, y in xy], fill=fill, width=w,
                                                       joint="curve"))
        else:
            self.d.line(xy, fill=fill, width=w, joint="curve")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(30, 230, 3)
    kind = rng.integers(0, 4)
    if kind == 0:  # vertical gradient
        top, bottom = base, rng.integers(30, 230, 3)
        t = np.linspace(0, 1, size)[:, None, None]
        arr = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3))
        img = Image.fromarray(arr.astype(np.uint8))
    else:
        img = Image.new("RGB", (size, size), tuple(int(c) for c in base))
    cv = _Canvas(img)
    if kind in (1, 3):  # clutter: shapes of a room or a street
        for _ in range(rng.integers(2, 7)):
            col = tuple(int(c) for c in rng.integers(0, 255, 3)) + (int(rng.integers(80, 255)),)
            x, y = rng.uniform(0, 1, 2)
            w, h = rng.uniform(0.05, 0.5, 2)
            if rng.random() < 0.5:
                cv.d.rectangle([x * size, y * size, (x + w) * size, (y + h) * size], fill=col)
            else:
                cv.ellipse(x, y, w / 2, h / 2, fill=col)
    if kind == 2:  # stripes: curtains, tiles
        col = tuple(int(c) for c in rng.integers(0, 255, 3)) + (90,)
        step = rng.uniform(0.06, 0.2)
        x = rng.uniform(0, step)
        while x < 1:
            cv.d.rectangle([x * size, 0, (x + step / 2) * size, size], fill=col)
            x += step
    return img


@dataclass(frozen=True)
class FaceGeometry:
    """Where the parts of a drawn face are, in face units (fractions of the layer's width, y down)."""

    cx: float
    cy: float
    fw: float  # half-width of the skin oval
    fh_top: float  # centre to the top of the oval (under the hair)
    fh_bot: float  # centre to the chin
    taper: float  # how much the jaw narrows
    eye_y: float
    eye_dx: float
    eye_w: float
    brow_y: float
    nose_y: float
    mouth_y: float
    mouth_half: float
    skin: tuple
    hair: tuple
    clothes: tuple
    hair_style: int

    def detector_box(self) -> np.ndarray:
        """The outline a face detector boxes (brow to chin, cheek to cheek) as points [k, 2] in face units."""
        a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        s, c = np.sin(a), np.cos(a)
        top = self.cy - DETECTOR_TOP * (self.cy - self.brow_y)
        xs = self.cx + DETECTOR_WIDTH * self.fw * c * (1 - self.taper * np.clip(s, 0, 1) ** 2)
        ys = np.where(s > 0, self.cy + DETECTOR_CHIN * self.fh_bot * s, self.cy + (self.cy - top) * s)
        return np.stack([xs, ys], axis=1)


# The detector's box relative to the drawn face (tuned against MediaPipe's BlazeFace): its top is
# DETECTOR_TOP times the centre-to-brow distance above the centre, its sides DETECTOR_WIDTH of the
# oval's half-width, its bottom DETECTOR_CHIN of the centre-to-chin distance.
DETECTOR_TOP = 2.1
DETECTOR_WIDTH = 0.96
DETECTOR_CHIN = 0.92


def _draw_face(img: Image.Image, rng: np.random.Generator, inten: np.ndarray, decorate=None,
               shaded: bool = False) -> FaceGeometry:
    """Draws one face, centred, on a transparent layer; `inten` holds each AU's intensity (0..1).

    `decorate(canvas, geometry)`, when given, draws over the finished face (occluders, in face
    units). `shaded` adds the shadows of a lit face (darker rim, lid creases, nose and lip
    shadows, darker brows and lips) that let a face detector find it when it is small; the
    random stream is used exactly as without it. Returns where the face's parts are.
    """
    def au(n: int) -> float:
        return float(inten[_AU_INDEX[n]])

    cv = _Canvas(img, blend=shaded)
    skin = _shade(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng.uniform(0.9, 1.08))
    hair = _shade(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], rng.uniform(0.85, 1.15))
    dark = _shade(skin, 0.55)
    line_col = _shade(skin, 0.45) + (200,)
    brow_col = _shade(hair, 0.8) if sum(hair) < 500 else _shade(skin, 0.4)

    cx, cy = 0.5, 0.5
    fw = rng.uniform(0.25, 0.31)  # half-width of the face
    fh_top = rng.uniform(0.30, 0.35)
    fh_bot = rng.uniform(0.31, 0.36) + 0.06 * au(26)  # jaw drop lengthens the lower face
    taper = rng.uniform(0.05, 0.3)  # narrow or square jaw
    hair_style = rng.integers(0, 4)  # 0 bald/shaved, 1 short, 2 long, 3 fringe

    # shoulders and neck
    clothes = CLOTHES[rng.integers(len(CLOTHES))]
    cv.ellipse(cx, 1.05, 0.42, 0.2, fill=clothes)
    cv.polygon([(cx - 0.11, cy + 0.2), (cx + 0.11, cy + 0.2), (cx + 0.13, 0.92), (cx - 0.13, 0.92)], fill=_shade(skin, 0.85))
    if hair_style == 2:  # long hair falls behind the face
        cv.ellipse(cx, cy + 0.05, fw + 0.07, fh_top + 0.14, fill=hair)
    # ears
    for side in (-1, 1):
        cv.ellipse(cx + side * fw, cy - 0.01, 0.03, 0.055, fill=_shade(skin, 0.92))
    # the face outline, jaw tapered
    a = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    s, c = np.sin(a), np.cos(a)
    xs = cx + fw * c * (1 - taper * np.clip(s, 0, 1) ** 2)
    ys = cy + np.where(s > 0, fh_bot, fh_top) * s
    cv.polygon(list(zip(xs.tolist(), ys.tolist())), fill=_shade(skin, 0.72) if shaded else skin)
    if shaded:  # the rim turns away from the light: darker towards the edge
        for k, f in ((0.94, 0.86), (0.86, 1.0)):
            cv.polygon(list(zip((cx + (xs - cx) * k).tolist(), (cy + (ys - cy) * k).tolist())), fill=_shade(skin, f))
    if hair_style in (1, 2, 3):
        depth = rng.uniform(0.05, 0.1) if hair_style != 3 else rng.uniform(0.11, 0.14)
        top = cy - fh_top
        cap = [(cx - fw - 0.02, cy - 0.05)] + _parabola(cx - fw - 0.01, cx + fw + 0.01, top + depth + 0.06, top - 0.03)
        cap += [(cx + fw + 0.02, cy - 0.05)] + _parabola(cx + fw, cx - fw, top + depth + 0.03, top + depth)
        cv.polygon(cap, fill=hair)

    eye_y = cy - rng.uniform(0.04, 0.07)
    eye_dx = rng.uniform(0.10, 0.125)
    eye_w = rng.uniform(0.048, 0.058)
    brow_gap = rng.uniform(0.045, 0.06)
    brow_w = rng.uniform(0.011, 0.018)
    nose_y = cy + rng.uniform(0.09, 0.11)
    mouth_y = nose_y + rng.uniform(0.08, 0.095) + 0.015 * au(26)
    mouth_w = rng.uniform(0.08, 0.1)
    iris_col = _shade(HAIR_COLOURS[rng.integers(3)], 1.0, (10, 20, 30)) if rng.random() < 0.3 else (60, 40, 25)

    # forehead: horizontal lines when the brows rise (AU1 in the middle, AU2 at the sides)
    fy = eye_y - brow_gap - 0.06
    for k in range(3):
        y = fy - k * 0.02
        if au(1) > 0.3:
            cv.line(_parabola(cx - 0.06, cx + 0.06, y + 0.004, y - 0.006), line_col[:3] + (int(170 * au(1)),), 0.004)
        if au(2) > 0.3:
            for side in (-1, 1):
                x0, x1 = sorted((cx + side * 0.07, cx + side * 0.16))
                cv.line(_parabola(x0, x1, y + 0.006, y), line_col[:3] + (int(170 * au(2)),), 0.004)
    # glabella: vertical furrows when the brows come down and together (AU4)
    if au(4) > 0.2:
        for side in (-1, 1):
            for x in (cx + side * 0.01, cx + side * 0.024):
                cv.line([(x, eye_y - brow_gap - 0.02), (x + side * 0.006, eye_y - brow_gap + 0.04)],
                        line_col[:3] + (int(250 * au(4)),), 0.008)

    for side in (-1, 1):
        ex = cx + side * eye_dx
        # eyes: the lids' openings; AU5 raises the upper lid (sclera shows above the iris),
        # AU6 pushes the lower lid up
        up = 0.014 + 0.026 * au(5) - 0.006 * au(4)
        low = 0.014 - 0.008 * au(6)
        x0, x1 = ex - eye_w, ex + eye_w
        upper = _parabola(x0, x1, eye_y, eye_y - up)
        lower = _parabola(x1, x0, eye_y, eye_y + low)
        if shaded:  # the socket's shadow around the eye
            cv.ellipse(ex, eye_y - 0.006, eye_w + 0.028, 0.042, fill=dark + (70,))
        cv.polygon(upper + lower, fill=(245, 245, 240))
        gaze = rng.uniform(-0.008, 0.008)
        cv.ellipse(ex + gaze, eye_y + 0.002, 0.017, 0.017, fill=iris_col)
        cv.ellipse(ex + gaze, eye_y + 0.002, 0.007, 0.007, fill=(15, 10, 10))
        # lids cover what is outside the opening
        lid = _shade(skin, 0.84) if shaded else skin
        cv.polygon(upper + _parabola(x1 + 0.01, x0 - 0.01, eye_y - 0.005, eye_y - up - 0.03), fill=lid)
        cv.polygon(lower + _parabola(x0 - 0.01, x1 + 0.01, eye_y + 0.005, eye_y + low + 0.03), fill=lid)
        cv.line(upper, (30, 20, 20), 0.011 if shaded else 0.007)
        if shaded:  # the crease above the lid, the socket's shadow
            crease = _parabola(x0 - 0.004, x1 + 0.004, eye_y - 0.008, eye_y - up - 0.014)
            cv.line(crease, dark + (110,), 0.012)
        cv.line(lower, dark + (150,), 0.003)
        # cheeks: AU6 lifts and rounds them, with crow's feet at the outer corner
        if au(6) > 0.2:
            cv.ellipse(cx + side * 0.13, eye_y + 0.085, 0.05, 0.035, fill=(200, 60, 60, int(70 * au(6))))
            cv.line(_parabola(x0 + 0.005, x1 - 0.005, eye_y + low + 0.012, eye_y + low + 0.022),
                    line_col[:3] + (int(200 * au(6)),), 0.004)
            ox = ex + side * (eye_w + 0.008)
            for dy in (-0.012, 0.0, 0.012):
                cv.line([(ox, eye_y + dy * 0.5), (ox + side * 0.025, eye_y + dy * 1.6)], line_col[:3] + (int(200 * au(6)),), 0.004)
        # brows: AU1 lifts the inner end, AU2 the outer end, AU4 lowers and draws them together
        inner_x = cx + side * (0.035 - 0.015 * au(4))
        outer_x = cx + side * (eye_dx + eye_w + 0.015)
        base = eye_y - brow_gap
        inner_y = base - 0.04 * au(1) + 0.05 * au(4)
        outer_y = base + 0.008 - 0.045 * au(2) + 0.012 * au(4)
        mid_y = base - 0.012 - 0.018 * au(1) - 0.025 * au(2) + 0.03 * au(4)
        mid_x = (inner_x + outer_x) / 2
        cv.line([(inner_x, inner_y), (mid_x, mid_y), (outer_x, outer_y)], _shade(brow_col, 0.7) if shaded else brow_col,
                brow_w + 0.007 * au(4) + (0.006 if shaded else 0.0))

    # nose: AU9 wrinkles the bridge, lifts and flares the nostrils
    nl = line_col[:3] + (150,)
    if shaded:  # the nose's shadow on the side away from the light, and under its tip
        cv.polygon([(cx - 0.012, eye_y + 0.02), (cx - 0.03, eye_y + 0.02), (cx - 0.045, nose_y - 0.01), (cx - 0.02, nose_y - 0.01)],
                   fill=dark + (70,))
        cv.ellipse(cx, nose_y + 0.012, 0.04, 0.012, fill=dark + (90,))
        cv.line([(cx + 0.006, eye_y + 0.0), (cx + 0.01, nose_y - 0.025)], _shade(skin, 1.15, (12, 12, 12)) + (150,), 0.012)
    cv.line([(cx - 0.018, eye_y + 0.02), (cx - 0.024, nose_y - 0.02)], nl, 0.004)
    lift = 0.014 * au(9)
    flare = 0.008 * au(9)
    for side in (-1, 1):
        cv.ellipse(cx + side * (0.022 + flare), nose_y - lift, 0.012 + flare * 0.5, 0.007, fill=dark + (220,))
    cv.line(_parabola(cx - 0.04 - flare, cx + 0.04 + flare, nose_y - lift - 0.012, nose_y - lift + 0.004), nl, 0.004)
    if au(9) > 0.2:
        for k in range(3):
            y = eye_y + 0.005 + k * 0.014
            cv.line(_parabola(cx - 0.045, cx + 0.045, y + 0.006, y - 0.004), line_col[:3] + (int(250 * au(9)),), 0.007)

    # mouth: AU12 pulls the corners up and out, AU20 stretches them sideways, AU25 parts the
    # lips, AU26 drops the jaw, AU17 pushes the lower lip up into a pout
    half = mouth_w + 0.025 * au(12) + 0.06 * au(20)
    corner_y = mouth_y - 0.04 * au(12) + 0.018 * au(20) - 0.012 * au(9)
    centre_y = mouth_y - 0.012 * au(17) - 0.004 * au(9)
    gap = 0.02 * au(25) + (0.045 * au(26) if au(25) > 0.3 else 0.0)
    lip_u = rng.uniform(0.013, 0.019) * (1 - 0.5 * au(20))
    lip_l = rng.uniform(0.017, 0.025) * (1 - 0.5 * au(20)) + 0.006 * au(17)
    lip_col = _shade(skin, 0.62 if shaded else 0.78, (40, 0, 0))
    x0, x1 = cx - half, cx + half
    inner_up = _parabola(x0, x1, corner_y, centre_y - gap / 2)
    inner_low = _parabola(x1, x0, corner_y, centre_y + gap / 2)
    # nasolabial folds: deeper with a smile
    fold_alpha = int(60 + 150 * max(au(12), au(6) * 0.6))
    for side in (-1, 1):
        cv.line([(cx + side * 0.05, nose_y - 0.005), (cx + side * (half + 0.012), corner_y + 0.005)],
                line_col[:3] + (fold_alpha,), 0.004)
    if au(20) > 0.2:  # the stretched skin creases just beyond the corners
        for side in (-1, 1):
            x = cx + side * (half + 0.012)
            cv.line([(x, corner_y - 0.02), (x + side * 0.01, corner_y + 0.025)], line_col[:3] + (int(240 * au(20)),), 0.007)
    if gap > 0.004:
        cv.polygon(inner_up + inner_low, fill=(70, 20, 25))
        teeth = min(gap * 0.8, 0.016)
        cv.polygon(inner_up + _parabola(x1 - 0.01, x0 + 0.01, corner_y + teeth * 0.3, centre_y - gap / 2 + teeth),
                   fill=(235, 230, 215))
    upper_outer = _parabola(x0, cx, corner_y, centre_y - gap / 2 - lip_u, 6) + _parabola(cx, x1, corner_y, centre_y - gap / 2 - lip_u, 6)[1:]
    cv.polygon(upper_outer + inner_up[::-1], fill=lip_col)
    lower_outer = _parabola(x0, x1, corner_y, centre_y + gap / 2 + lip_l)
    cv.polygon(inner_low + lower_outer, fill=_shade(lip_col, 1.05))
    cv.line(inner_up, _shade(lip_col, 0.6), 0.004)
    # chin: AU17 bunches it (a crease under the lip, the dimpled boss)
    chin_y = cy + fh_bot - 0.06
    dots = rng.uniform(-1, 1, (8, 2)) * (0.03, 0.015)
    if au(17) > 0.2:
        cv.line(_parabola(cx - 0.04, cx + 0.04, centre_y + gap / 2 + lip_l + 0.012, centre_y + gap / 2 + lip_l + 0.022),
                line_col[:3] + (int(230 * au(17)),), 0.005)
        cv.ellipse(cx, chin_y, 0.045, 0.028, fill=_shade(skin, 0.8) + (int(150 * au(17)),))
        for px, py in dots:
            cv.ellipse(cx + px, chin_y + py, 0.004, 0.004, fill=dark + (int(200 * au(17)),))
    # distractors of identity: beards and glasses occlude some of the signal, as in real photos
    if rng.random() < 0.06:
        stub = hair + (int(rng.uniform(90, 170)),)
        for _ in range(60):
            t = rng.uniform(0.15 * np.pi, 0.85 * np.pi)
            r = rng.uniform(0.85, 1.0)
            px = cx + fw * np.cos(t) * r * (1 - taper * np.sin(t) ** 2)
            py = cy + fh_bot * np.sin(t) * r
            cv.ellipse(px, py, 0.006, 0.006, fill=stub)
    if rng.random() < 0.1:
        frame = tuple(int(v) for v in rng.integers(0, 120, 3))
        for side in (-1, 1):
            cv.ellipse(cx + side * eye_dx, eye_y + 0.004, eye_w + 0.015, 0.038, fill=None, outline=frame, width=0.006)
        cv.line([(cx - eye_dx + eye_w + 0.015, eye_y), (cx + eye_dx - eye_w - 0.015, eye_y)], frame, 0.006)
    geometry = FaceGeometry(cx=cx, cy=cy, fw=fw, fh_top=fh_top, fh_bot=fh_bot, taper=taper, eye_y=eye_y,
                            eye_dx=eye_dx, eye_w=eye_w, brow_y=eye_y - brow_gap, nose_y=nose_y, mouth_y=mouth_y,
                            mouth_half=half, skin=skin, hair=hair, clothes=clothes, hair_style=int(hair_style))
    if decorate is not None:
        decorate(cv, geometry)
    return geometry


def face_layer(inten: np.ndarray, rng: np.random.Generator, size: int, decorate=None,
               shaded: bool = False) -> tuple[Image.Image, FaceGeometry]:
    """One face with neck and shoulders on a transparent `size`x`size` RGBA layer, and where its parts are.

    Drawn at twice the size, then reduced: cheap antialiasing. `decorate` and `shaded` as in _draw_face.
    """
    layer = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
    geometry = _draw_face(layer, rng, inten, decorate, shaded)
    return layer.reduce(2), geometry


def render_face(inten: np.ndarray, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """An RGB face of `size`x`size` px showing the AU intensities `inten` (FACE_AU_IDS order)."""
    return render_portrait(inten, rng, size)[0]


def render_portrait(inten: np.ndarray, rng: np.random.Generator, size: int = 128
                    ) -> tuple[Image.Image, tuple[float, float, float, float], float]:
    """render_face's image, plus the face's detector box (x0, y0, x1, y1 px, clipped to the image) and its tilt.

    The tilt is in degrees, counter-clockwise as the image is seen (PIL's rotate convention).
    """
    bg = _background(rng, size).convert("RGBA")
    layer, geometry = face_layer(inten, rng, size)
    # pose: rotation, scale, offset (an inverse affine map: output pixel -> layer pixel)
    angle = math.radians(rng.uniform(-12, 12))
    scale = rng.uniform(1.0, 1.3)
    tx, ty = rng.uniform(-0.06, 0.06, 2) * size
    ca, sa = math.cos(angle) / scale, math.sin(angle) / scale
    c0 = size / 2
    xoff = c0 - ca * (c0 + tx) - sa * (c0 + ty)
    yoff = c0 + sa * (c0 + tx) - ca * (c0 + ty)
    layer = layer.transform((size, size), Image.AFFINE, (ca, sa, xoff, -sa, ca, yoff), resample=Image.BILINEAR)
    bg.alpha_composite(layer)
    # lighting: overall exposure, a colour cast and a light from one side; then sensor noise
    arr = np.asarray(bg.convert("RGB"), dtype=np.float32)
    yy, xx = _grid(size)
    direction = rng.uniform(0, 2 * np.pi)
    light = 1 + np.float32(rng.uniform(0, 0.5)) * (np.float32(np.cos(direction)) * xx + np.float32(np.sin(direction)) * yy)
    gain = (rng.uniform(0.75, 1.15) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    arr *= light[..., None]
    arr *= gain
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(rng.uniform(1, 7))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    # the box: the detector outline mapped through the pose (layer pixel -> output pixel)
    inv = np.linalg.inv(np.array([[ca, sa], [-sa, ca]]))
    pts = geometry.detector_box() * size - np.array([xoff, yoff])
    out = pts @ inv.T
    x0, y0 = np.clip(out.min(axis=0), 0, size)
    x1, y1 = np.clip(out.max(axis=0), 0, size)
    # the inverse map turns the layer by `angle`, so the face is seen turned the other way
    return img, (float(x0), float(y0), float(x1), float(y1)), -math.degrees(angle)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRIDS:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - np.float32(0.5)
        _GRIDS[size] = (yy, xx)
    return _GRIDS[size]


# ------------------------------------------------------------------------------------------ formats

# How the web serves faces: mostly JPEG, then PNG (RGB, RGBA, palette), WebP, GIF, CMYK JPEG.
FORMAT_SHARES = {"jpeg": 0.68, "png": 0.1, "png_rgba": 0.05, "png_palette": 0.05, "webp": 0.05, "gif": 0.03,
                 "jpeg_cmyk": 0.04}
FORMAT_EXT = {"jpeg": "jpg", "jpeg_cmyk": "jpg", "png": "png", "png_rgba": "png", "png_palette": "png",
              "gif": "gif", "webp": "webp"}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}


def encode(img: Image.Image, fmt: str, rng: np.random.Generator, png_level: int = 6) -> bytes:
    """The bytes of `img` as the web would serve it in `fmt` (a FORMAT_SHARES key).

    png_level is zlib's level for PNGs (6, PIL's default; noisy photo-sized PNGs take ~5x as long as at 1).
    """
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=int(rng.integers(70, 96)))
    elif fmt == "jpeg_cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=90)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=png_level)
    elif fmt == "png_rgba":
        rgba = img.convert("RGBA")
        alpha = Image.new("L", img.size, 255)
        # a transparent rounded border, as avatars often have
        ImageDraw.Draw(alpha).rectangle([0, 0, img.size[0] - 1, img.size[1] - 1], outline=0, width=3)
        rgba.putalpha(alpha)
        rgba.save(buf, "PNG", compress_level=png_level)
    elif fmt == "png_palette":
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buf, "PNG", compress_level=png_level)
    elif fmt == "gif":
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buf, "GIF")
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=85, method=0)
    else:
        raise ValueError(f"unknown demo image format {fmt!r}; expected one of {sorted(FORMAT_SHARES)}")
    return buf.getvalue()


def assign_formats(n: int, seed: int) -> list[str]:
    """Exactly FORMAT_SHARES of n (largest remainder, each format at least once when n allows), shuffled by seed."""
    names = list(FORMAT_SHARES)
    counts = allocate(n, [FORMAT_SHARES[f] for f in names], minimum=1 if n >= len(names) else 0)
    out = [f for f, c in zip(names, counts) for _ in range(c)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF0]))
    rng.shuffle(out)
    return out


def allocate(n: int, shares: list[float], minimum: int = 0) -> list[int]:
    """Splits n items into len(shares) counts proportional to shares (largest remainder), each >= minimum."""
    total = sum(shares)
    raw = [n * s / total for s in shares]
    counts = [max(minimum, int(math.floor(r))) for r in raw]
    order = sorted(range(len(shares)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
    i = 0
    while sum(counts) < n:
        counts[order[i % len(order)]] += 1
        i += 1
    # minimums may overshoot: take back from the largest counts
    while sum(counts) > n:
        j = max(range(len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts
