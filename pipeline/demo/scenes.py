"""In-the-wild scenes: a demo face pasted small into a cluttered picture, tilted, grey, badly compressed or partly hidden, as web photos are."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.demo import faces

MIN_SIDE, MAX_SIDE = 320, 640  # px, each of the scene's width and height
# The labelled face's box, its larger side as a share of the scene's shorter side.
FACE_MIN, FACE_MAX = 0.15, 0.45

# Shares of the conditions (independent of each other, except that a scene without a face has
# no tilt, occluder or bystander, and low quality only strikes JPEGs).
TILTED_SHARE = 0.25
TILT_MIN, TILT_MAX = 10.0, 30.0  # degrees, in-plane, either way; the other faces lean by up to SMALL_TILT
SMALL_TILT = 6.0
GREY_SHARE = 0.10
LOW_QUALITY_SHARE = 0.10
LOW_QUALITY = (8, 25)  # JPEG quality, both ends included
OCCLUDED_SHARE = 0.12
SEVERAL_FACES_SHARE = 0.03
NO_FACE_SHARE = 0.01

# What each occluder hides: those AUs are unknown (999), as EmotioNet marks occluded AUs.
OCCLUDERS: dict[str, tuple[float, tuple[int, ...]]] = {
    "sunglasses": (0.30, (5, 6)),
    "cap": (0.20, (1, 2, 4)),
    "scarf": (0.15, (12, 17, 20, 25, 26)),
    "hand": (0.20, (12, 17, 20, 25, 26)),
    "mug": (0.15, (17, 25, 26)),
}
BYSTANDER_AU_RATE = 0.2
# zlib level of scenes served as PNG: noisy photo-sized PNGs take ~80 ms at PIL's default 6, ~30 ms at 1.
PNG_LEVEL = 1
# Sensor noise by table: the standard normal's quantiles at the 256 byte values.
_NORMAL = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)


@dataclass(frozen=True)
class ScenePlan:
    """What a scene holds, decided before it is drawn (generate_demo plans exact shares)."""

    face: bool = True
    tilted: bool = False
    grey: bool = False
    jpeg_quality: int = 0  # 0: not degraded; else LOW_QUALITY's range
    occluder: str = ""
    bystander: bool = False


@dataclass(frozen=True)
class SceneTruth:
    """What a scene shows: the labelled face's box and the conditions that make it hard to see."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in scene px; NaN when there is no face
    tilt: float  # degrees, counter-clockwise as seen
    grey: bool
    jpeg_quality: int  # 0 when not low-quality
    occluder: str  # "" none, else an OCCLUDERS key
    hidden_aus: tuple[int, ...]  # the AUs the occluder hides
    faces_in_scene: int
    other_boxes: tuple[tuple[float, float, float, float], ...] = ()  # bystanders' boxes


@dataclass(frozen=True)
class SceneSize:
    """How large a scene is drawn and how large its labelled face is in it."""

    min_side: int  # px, each of the scene's width and height, both ends included
    max_side: int
    face_min: float  # the labelled face's box, its larger side as a share of the scene's shorter side
    face_max: float
    bystander_face: tuple[float, float]  # the labelled face's range when a bystander shares the scene (it is larger)


# The default world (`make run`): web photos in which the face is small but BlazeFace sees it in the whole picture.
WILD = SceneSize(MIN_SIDE, MAX_SIDE, FACE_MIN, FACE_MAX, (0.22, 0.36))
# Group photos and half-body shots: larger pictures in which the face is 10-22% of the shorter side, 48-225 px,
# too small for the detector's 192 px view of the whole picture (the face finder's tiles are for these).
SMALL_FACES = SceneSize(480, 1024, 0.10, 0.22, (0.14, 0.20))
# generate.SCENES' names of the drawn worlds (the third, portrait, is drawn by faces.render_portrait).
SIZES = {"wild": WILD, "small-faces": SMALL_FACES}


def sample_plan(rng: np.random.Generator) -> ScenePlan:
    """One scene's conditions drawn at their shares (render_scene's default)."""
    if rng.random() < NO_FACE_SHARE:
        return ScenePlan(face=False, grey=bool(rng.random() < GREY_SHARE))
    occluder = ""
    if rng.random() < OCCLUDED_SHARE:
        names = list(OCCLUDERS)
        p = np.array([OCCLUDERS[k][0] for k in names])
        occluder = names[int(rng.choice(len(names), p=p / p.sum()))]
    low = rng.random() < LOW_QUALITY_SHARE
    return ScenePlan(
        face=True,
        tilted=bool(rng.random() < TILTED_SHARE),
        grey=bool(rng.random() < GREY_SHARE),
        jpeg_quality=int(rng.integers(LOW_QUALITY[0], LOW_QUALITY[1] + 1)) if low else 0,
        occluder=occluder,
        bystander=bool(rng.random() < SEVERAL_FACES_SHARE),
    )


def plan_scenes(n: int, seed: int, formats: list[str]) -> list[ScenePlan]:
    """Exact shares of each condition over n scenes (largest remainder), placed by seed.

    Low quality goes to scenes served as plain JPEG (formats[i] == "jpeg"), so the format mix
    stays that of faces.FORMAT_SHARES.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE7E]))

    def pick(pool: np.ndarray, share: float) -> np.ndarray:
        k = min(len(pool), int(round(n * share)))
        return rng.permutation(pool)[:k]

    every = np.arange(n)
    no_face = set(pick(every, NO_FACE_SHARE).tolist())
    with_face = np.array([i for i in range(n) if i not in no_face], dtype=int)
    tilted = set(pick(with_face, TILTED_SHARE).tolist())
    grey = set(pick(every, GREY_SHARE).tolist())
    jpeg = np.array([i for i in range(n) if formats[i] == "jpeg"], dtype=int)
    low = pick(jpeg, LOW_QUALITY_SHARE)
    quality = dict(zip(low.tolist(), rng.integers(LOW_QUALITY[0], LOW_QUALITY[1] + 1, len(low)).tolist()))
    occluded = pick(with_face, OCCLUDED_SHARE)
    names = list(OCCLUDERS)
    counts = faces.allocate(len(occluded), [OCCLUDERS[k][0] for k in names])
    kinds = [k for k, c in zip(names, counts) for _ in range(c)]
    occluder = dict(zip(occluded.tolist(), kinds))
    several = set(pick(with_face, SEVERAL_FACES_SHARE).tolist())
    return [ScenePlan(face=i not in no_face, tilted=i in tilted, grey=i in grey, jpeg_quality=int(quality.get(i, 0)),
                      occluder=occluder.get(i, ""), bystander=i in several) for i in range(n)]


# ------------------------------------------------------------------------------------------ drawing


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256, alpha: int | None = None) -> tuple:
    c = tuple(int(v) for v in rng.integers(lo, hi, 3))
    return c + (alpha,) if alpha is not None else c


def _near(colour, rng: np.random.Generator, spread: int = 40) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in colour)


def _gradient(w: int, h: int, top, bottom) -> Image.Image:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t  # [h, 3]
    return Image.fromarray(col.astype(np.uint8)[:, None, :]).resize((w, h), Image.NEAREST)


def _clutter(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, n: int, y_min: float = 0.0) -> None:
    """Random rectangles, ellipses, polygons and lines: the things in a room or a street."""
    for _ in range(n):
        col = _colour(rng, alpha=int(rng.integers(90, 256)))
        x, y = rng.uniform(0, 1), rng.uniform(y_min, 1)
        bw, bh = rng.uniform(0.03, 0.35) * w, rng.uniform(0.03, 0.35) * h
        box = [x * w, y * h, x * w + bw, y * h + bh]
        kind = rng.integers(0, 5)
        if kind == 0:
            d.rectangle(box, fill=col)
        elif kind == 1:
            d.ellipse(box, fill=col)
        elif kind == 2:
            pts = [(x * w + rng.uniform(-0.15, 0.15) * w, y * h + rng.uniform(-0.15, 0.15) * h) for _ in range(rng.integers(3, 6))]
            d.polygon(pts, fill=col)
        elif kind == 3:
            d.line([(box[0], box[1]), (box[2], box[3])], fill=col, width=int(rng.integers(1, 6)))
        else:
            d.rectangle(box, outline=col, width=int(rng.integers(2, 8)))


def _room(img: Image.Image, d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    w, h = img.size
    horizon = rng.uniform(0.55, 0.85) * h
    floor = _colour(rng, 40, 200)
    d.rectangle([0, horizon, w, h], fill=floor)
    for k in range(int(rng.integers(3, 12))):  # floor boards
        y = horizon + (h - horizon) * (k + 1) / 12
        d.line([(0, y), (w, y)], fill=_near(floor, rng, 25), width=1)
    if rng.random() < 0.6:  # a window, the sky or the street behind it
        x0, y0 = rng.uniform(0, 0.7) * w, rng.uniform(0.05, 0.3) * h
        x1, y1 = x0 + rng.uniform(0.15, 0.35) * w, y0 + rng.uniform(0.2, 0.4) * h
        d.rectangle([x0, y0, x1, y1], fill=_colour(rng, 170, 256), outline=_colour(rng, 0, 120), width=int(rng.integers(3, 9)))
        d.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1)], fill=_colour(rng, 60, 200), width=3)
        d.line([(x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2)], fill=_colour(rng, 60, 200), width=3)
    for _ in range(int(rng.integers(0, 4))):  # pictures on the wall
        x0, y0 = rng.uniform(0, 0.85) * w, rng.uniform(0.05, 0.45) * h
        pw, ph = rng.uniform(0.06, 0.2) * w, rng.uniform(0.06, 0.2) * h
        d.rectangle([x0, y0, x0 + pw, y0 + ph], fill=_colour(rng), outline=_colour(rng, 0, 90), width=int(rng.integers(2, 6)))
        d.ellipse([x0 + pw * 0.2, y0 + ph * 0.2, x0 + pw * 0.7, y0 + ph * 0.8], fill=_colour(rng))
    if rng.random() < 0.6:  # a shelf of books
        x0, y0 = rng.uniform(0, 0.7) * w, rng.uniform(0.1, 0.5) * h
        sw = rng.uniform(0.15, 0.3) * w
        shelf = _colour(rng, 60, 160)
        for row in range(int(rng.integers(1, 4))):
            y = y0 + row * 0.12 * h
            d.rectangle([x0, y + 0.1 * h, x0 + sw, y + 0.115 * h], fill=shelf)
            x = x0
            while x < x0 + sw - 4:
                bw = rng.uniform(0.008, 0.025) * w
                d.rectangle([x, y + rng.uniform(0.01, 0.04) * h, x + bw, y + 0.1 * h], fill=_colour(rng, 20, 230))
                x += bw + 1
    if rng.random() < 0.5:  # a lamp
        x, y = rng.uniform(0.05, 0.95) * w, rng.uniform(0.1, 0.4) * h
        r = rng.uniform(0.03, 0.07) * w
        d.line([(x, y), (x, horizon)], fill=_colour(rng, 0, 80), width=3)
        d.polygon([(x - r, y + r), (x + r, y + r), (x + r * 0.5, y - r * 0.5), (x - r * 0.5, y - r * 0.5)], fill=_colour(rng, 150, 256))
    if rng.random() < 0.5:  # a plant
        x, y = rng.uniform(0.05, 0.95) * w, horizon
        pot = rng.uniform(0.03, 0.06) * w
        d.rectangle([x - pot, y - pot * 1.5, x + pot, y + pot * 0.5], fill=_colour(rng, 80, 200))
        for _ in range(int(rng.integers(4, 10))):
            lx, ly = x + rng.uniform(-3, 3) * pot, y - pot * rng.uniform(1.5, 6)
            d.ellipse([lx - pot, ly - pot * 0.6, lx + pot, ly + pot * 0.6], fill=(int(rng.integers(20, 80)), int(rng.integers(90, 180)), int(rng.integers(20, 80))))
    if rng.random() < 0.5:  # a sofa or a table
        x0 = rng.uniform(-0.2, 0.6) * w
        y0 = horizon - rng.uniform(0.05, 0.2) * h
        d.rounded_rectangle([x0, y0, x0 + rng.uniform(0.3, 0.6) * w, horizon + rng.uniform(0.05, 0.15) * h],
                            radius=int(0.02 * w), fill=_colour(rng, 30, 220))
    _clutter(d, rng, w, h, int(rng.integers(2, 8)))


def _street(img: Image.Image, d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    w, h = img.size
    horizon = rng.uniform(0.3, 0.6) * h
    x = rng.uniform(-0.1, 0) * w
    while x < w:  # buildings with rows of windows
        bw = rng.uniform(0.12, 0.35) * w
        top = horizon - rng.uniform(0.05, 0.5) * h
        wall = _colour(rng, 40, 230)
        d.rectangle([x, top, x + bw, h], fill=wall)
        win = _colour(rng, 20, 256)
        step_x, step_y = rng.uniform(0.03, 0.06) * w, rng.uniform(0.04, 0.08) * h
        for wy in np.arange(top + step_y * 0.5, horizon + 0.25 * h, step_y)[:12]:
            for wx in np.arange(x + step_x * 0.3, x + bw - step_x * 0.5, step_x)[:10]:
                d.rectangle([wx, wy, wx + step_x * 0.55, wy + step_y * 0.6], fill=win)
        x += bw + rng.uniform(0, 0.05) * w
    road_y = horizon + rng.uniform(0.25, 0.4) * h
    d.rectangle([0, road_y, w, h], fill=_colour(rng, 50, 120))
    d.rectangle([0, road_y - 0.03 * h, w, road_y], fill=_colour(rng, 120, 200))  # the kerb
    for xx in np.arange(rng.uniform(0, 0.1) * w, w, 0.15 * w):
        d.rectangle([xx, road_y + 0.5 * (h - road_y), xx + 0.06 * w, road_y + 0.5 * (h - road_y) + 4], fill=(230, 230, 220))
    for _ in range(int(rng.integers(0, 3))):  # cars
        cx, cw = rng.uniform(0, 1) * w, rng.uniform(0.2, 0.35) * w
        cy, ch = road_y + rng.uniform(-0.05, 0.1) * h, rng.uniform(0.08, 0.14) * h
        body = _colour(rng, 20, 240)
        d.rounded_rectangle([cx, cy - ch, cx + cw, cy], radius=int(ch * 0.3), fill=body)
        d.rectangle([cx + cw * 0.2, cy - ch * 1.6, cx + cw * 0.75, cy - ch * 0.9], fill=_near(body, rng))
        for wx in (cx + cw * 0.2, cx + cw * 0.8):
            d.ellipse([wx - ch * 0.35, cy - ch * 0.35, wx + ch * 0.35, cy + ch * 0.35], fill=(20, 20, 20))
    for _ in range(int(rng.integers(0, 4))):  # poles, signs, trees
        px = rng.uniform(0, 1) * w
        d.line([(px, horizon - rng.uniform(0.1, 0.4) * h), (px, road_y)], fill=_colour(rng, 0, 100), width=int(rng.integers(2, 7)))
        if rng.random() < 0.5:
            r = rng.uniform(0.04, 0.1) * w
            ty = horizon - rng.uniform(0.1, 0.35) * h
            d.ellipse([px - r, ty - r, px + r, ty + r], fill=(int(rng.integers(20, 90)), int(rng.integers(80, 170)), int(rng.integers(20, 80))))
        else:
            d.rectangle([px - 12, horizon - 0.35 * h, px + 12, horizon - 0.3 * h], fill=_colour(rng))
    _clutter(d, rng, w, h, int(rng.integers(1, 5)), y_min=0.4)


def _outdoors(img: Image.Image, d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    w, h = img.size
    horizon = rng.uniform(0.35, 0.7) * h
    for _ in range(int(rng.integers(1, 4))):  # hills
        cx, r = rng.uniform(0, 1) * w, rng.uniform(0.3, 0.8) * w
        d.ellipse([cx - r, horizon - rng.uniform(0.05, 0.25) * h, cx + r, horizon + r], fill=_colour(rng, 40, 170))
    d.rectangle([0, horizon, w, h], fill=(int(rng.integers(40, 140)), int(rng.integers(100, 200)), int(rng.integers(30, 110))))
    if rng.random() < 0.5:  # a path
        d.polygon([(w * rng.uniform(0.3, 0.5), horizon), (w * rng.uniform(0.5, 0.7), horizon), (w, h), (0, h)],
                  fill=_colour(rng, 120, 210))
    for _ in range(int(rng.integers(2, 9))):  # trees and bushes
        x, y = rng.uniform(0, 1) * w, horizon + rng.uniform(-0.05, 0.3) * h
        r = rng.uniform(0.03, 0.12) * w
        d.rectangle([x - r * 0.12, y - r, x + r * 0.12, y + r * 0.6], fill=(int(rng.integers(60, 110)), int(rng.integers(40, 70)), 30))
        for _ in range(3):
            ox, oy = rng.uniform(-0.5, 0.5, 2) * r
            d.ellipse([x + ox - r, y - r * 2 + oy - r * 0.8, x + ox + r, y - r * 2 + oy + r * 0.8],
                      fill=(int(rng.integers(20, 90)), int(rng.integers(80, 180)), int(rng.integers(20, 90))))
    _clutter(d, rng, w, h, int(rng.integers(0, 5)), y_min=0.5)


def _stripes(img: Image.Image, d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    w, h = img.size
    col = _colour(rng, alpha=int(rng.integers(60, 200)))
    step = rng.uniform(0.04, 0.18) * max(w, h)
    kind = rng.integers(0, 4)
    if kind == 0:  # curtains
        for x in np.arange(rng.uniform(0, step), w, step):
            d.rectangle([x, 0, x + step / 2, h], fill=col)
    elif kind == 1:  # blinds
        for y in np.arange(rng.uniform(0, step), h, step / 2):
            d.rectangle([0, y, w, y + step / 5], fill=col)
    elif kind == 2:  # tiles
        col2 = _colour(rng, alpha=int(rng.integers(60, 200)))
        for i, y in enumerate(np.arange(0, h, step)):
            for j, x in enumerate(np.arange(0, w, step)):
                if (i + j) % 2:
                    d.rectangle([x, y, x + step - 2, y + step - 2], fill=col)
                else:
                    d.rectangle([x, y, x + step - 2, y + step - 2], outline=col2, width=2)
    else:  # wallpaper: a repeated motif
        for i, y in enumerate(np.arange(0, h, step)):
            for x in np.arange((i % 2) * step / 2, w, step):
                d.ellipse([x, y, x + step * 0.4, y + step * 0.4], fill=col)
    _clutter(d, rng, w, h, int(rng.integers(2, 8)))


def _shapes(img: Image.Image, d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    w, h = img.size
    _clutter(d, rng, w, h, int(rng.integers(10, 30)))


def _bokeh(img: Image.Image, d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    w, h = img.size
    for _ in range(int(rng.integers(10, 40))):  # lights out of focus
        r = rng.uniform(0.01, 0.06) * max(w, h)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng, 120, 256, alpha=int(rng.integers(40, 140))))
    _clutter(d, rng, w, h, int(rng.integers(0, 6)))


_KINDS = (_room, _room, _street, _outdoors, _stripes, _shapes, _bokeh)


def _scene_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An RGBA picture of w x h px with things in it: a room, a street, a park, stripes, shapes or lights."""
    kind = _KINDS[int(rng.integers(len(_KINDS)))]
    if kind is _street or kind is _outdoors:  # a sky
        img = _gradient(w, h, _colour(rng, 90, 200), _colour(rng, 170, 256))
    else:
        img = _gradient(w, h, _colour(rng, 30, 235), _colour(rng, 30, 235))
    img = img.convert("RGBA")
    d = ImageDraw.Draw(img, "RGBA")
    kind(img, d, rng)
    if rng.random() < 0.35:  # the background out of focus
        f = int(rng.integers(2, 5))
        img = img.reduce(f).resize((w, h), Image.BILINEAR)
    return img


# The torso below a face layer's shoulders, in face units: the layer stops at y=1, the body goes on.
_TORSO = np.array([(-0.395, 0.985), (0.395, 0.985), (0.41, 1.0), (0.48, 2.0), (0.48, 60.0), (-0.48, 60.0), (-0.48, 2.0),
                   (-0.41, 1.0)])


def _occluder(kind: str, rng: np.random.Generator):
    """A `decorate` for faces.face_layer that draws `kind` over the face, in face units."""
    dark = _colour(rng, 0, 60)
    tint = _colour(rng, 20, 230)
    shade = float(rng.uniform(0.85, 1.1))
    side = 1 if rng.random() < 0.5 else -1
    shift = float(rng.uniform(-0.03, 0.03))

    def draw(cv, g: faces.FaceGeometry) -> None:
        cx = g.cx
        if kind == "sunglasses":
            rx, ry = g.eye_w + 0.035, 0.042
            for s in (-1, 1):
                cv.ellipse(cx + s * g.eye_dx, g.eye_y + 0.006, rx, ry, fill=dark + (250,))
                cv.ellipse(cx + s * g.eye_dx - 0.015, g.eye_y - 0.01, rx * 0.3, ry * 0.25, fill=(255, 255, 255, 60))  # glint
            cv.line([(cx - g.eye_dx + rx, g.eye_y - 0.004), (cx + g.eye_dx - rx, g.eye_y - 0.004)], dark, 0.01)
            for s in (-1, 1):
                cv.line([(cx + s * (g.eye_dx + rx), g.eye_y), (cx + s * (g.fw + 0.01), g.eye_y - 0.01)], dark, 0.008)
        elif kind == "cap":
            top = g.cy - g.fh_top - 0.09
            brim = g.brow_y + 0.012
            pts = faces._parabola(cx - g.fw - 0.035, cx + g.fw + 0.035, brim - 0.02, top, 15)
            cv.polygon(pts, fill=tint)
            cv.polygon([(cx - g.fw - 0.045, brim - 0.025), (cx + g.fw + 0.045, brim - 0.025)]
                       + faces._parabola(cx + g.fw + 0.03 + shift, cx - g.fw - 0.03 + shift, brim - 0.02, brim + 0.035),
                       fill=faces._shade(tint, 0.7))
        elif kind == "scarf":  # wrapped over the mouth and chin, up to just under the nose
            top = g.nose_y + 0.04
            pts = faces._parabola(cx - g.fw - 0.01, cx + g.fw + 0.01, top + 0.035, top, 9)
            pts += [(cx + g.fw + 0.03, g.cy + g.fh_bot), (cx + g.fw + 0.06, 1.0), (cx - g.fw - 0.06, 1.0),
                    (cx - g.fw - 0.03, g.cy + g.fh_bot)]
            cv.polygon(pts, fill=tint)
            for k in range(1, 4):  # folds
                y = top + k * 0.05
                cv.line(faces._parabola(cx - g.fw, cx + g.fw, y + 0.01, y + 0.03), faces._shade(tint, 0.7), 0.006)
        elif kind == "hand":
            skin = faces._shade(g.skin, shade)
            hx = cx + side * 0.03
            top = g.mouth_y - 0.05
            # the palm over the mouth and chin, fingers up across the cheek
            cv.ellipse(hx, top + 0.1, 0.15, 0.1, fill=skin)
            for k in range(4):
                fx = hx - side * 0.1 + side * k * 0.055
                cv.polygon([(fx - 0.024, top + 0.06), (fx + 0.024, top + 0.06), (fx + 0.02 + side * 0.02, top - 0.06 + k * 0.012),
                            (fx - 0.02 + side * 0.02, top - 0.06 + k * 0.012)], fill=skin)
                cv.ellipse(fx + side * 0.02, top - 0.06 + k * 0.012, 0.021, 0.016, fill=skin)
                cv.line([(fx + 0.024 * side, top + 0.05), (fx + side * 0.04, top - 0.04 + k * 0.012)], faces._shade(skin, 0.75), 0.004)
            cv.polygon([(hx - 0.1, top + 0.14), (hx + 0.1, top + 0.14), (hx + 0.08, 1.0), (hx - 0.08, 1.0)], fill=skin)  # the wrist
        elif kind == "mug":
            mx = cx + shift
            top = g.mouth_y - 0.025
            cv.polygon([(mx - 0.075, top), (mx + 0.075, top), (mx + 0.07, top + 0.2), (mx - 0.07, top + 0.2)], fill=tint)
            cv.ellipse(mx, top, 0.075, 0.015, fill=faces._shade(tint, 0.8))
            cv.ellipse(mx + side * 0.095, top + 0.09, 0.035, 0.045, fill=None, outline=tint, width=0.016)
            cv.ellipse(mx - side * 0.03, top + 0.1, 0.02, 0.05, fill=(255, 255, 255, 50))
        else:
            raise ValueError(f"unknown occluder {kind!r}; expected one of {sorted(OCCLUDERS)}")

    return draw


def _rotation(deg: float) -> np.ndarray:
    """The matrix that turns a vector (x right, y down) counter-clockwise as seen, by deg degrees."""
    a = math.radians(deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def _paste_face(scene: Image.Image, rng: np.random.Generator, inten: np.ndarray, target: float, tilt: float,
                place, decorate=None):
    """Draws a face (and its body) into scene, its detector box's larger side `target` px.

    place(bw, bh) -> (x0, y0) or None chooses where the box goes. Returns the box or None.
    """
    rot = _rotation(tilt)
    # the box of a face is ~0.65 of its layer; the exact share is known once it is drawn
    side = max(16, int(round(target / 0.7)))
    layer, g = faces.face_layer(inten, rng, side, decorate, shaded=True)
    centre = np.array([g.cx, g.cy])
    outline = (g.detector_box() - centre) @ rot.T  # face units about the face centre, turned
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    scale = target / (float((hi - lo).max()) * side)  # layer px -> scene px
    bw, bh = (hi - lo) * side * scale
    at = place(float(bw), float(bh))
    if at is None:
        return None
    x0, y0 = at
    centre_px = np.array([x0, y0]) - lo * side * scale  # the face centre in the scene
    m = scale * rot  # layer px (about the centre) -> scene px (about the centre)
    # the body first: it lies under the layer's shoulders and runs off the frame
    torso = ((_TORSO + [g.cx, 0]) - centre) * side @ m.T + centre_px
    ImageDraw.Draw(scene).polygon([tuple(p) for p in torso.tolist()], fill=g.clothes)
    # the layer, turned and scaled by an inverse affine map (scene px -> layer px), over the part of the scene it covers
    corners = (np.array([(0, 0), (side, 0), (side, side), (0, side)]) - centre * side) @ m.T + centre_px
    W, H = scene.size
    ox, oy = (max(0, int(math.floor(v))) for v in corners.min(axis=0))
    ex, ey = min(W, int(math.ceil(corners[:, 0].max()))), min(H, int(math.ceil(corners[:, 1].max())))
    if ex > ox and ey > oy:
        inv = np.linalg.inv(m)
        c = centre * side - inv @ (centre_px - [ox, oy])
        data = (inv[0, 0], inv[0, 1], c[0], inv[1, 0], inv[1, 1], c[1])
        part = layer.transform((ex - ox, ey - oy), Image.AFFINE, data, resample=Image.BILINEAR)
        scene.alpha_composite(part, dest=(ox, oy))
    return (float(x0), float(y0), float(x0 + bw), float(y0 + bh))


def _overlaps(a, b, margin: float = 0.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def render_scene(inten: np.ndarray, rng: np.random.Generator, plan: ScenePlan | None = None,
                 size: SceneSize = WILD) -> tuple[Image.Image, SceneTruth]:
    """An RGB web photo in which the face showing `inten` (FACE_AU_IDS order) is small.

    size: the picture's sides and the face's share of the shorter one (WILD: 320..640 px each
    way, the face 15-45%; SMALL_FACES: 480..1024 px, 10-22%). The conditions come from `plan`,
    or are drawn from rng at their shares. The image has its grey and JPEG degradation baked in;
    SceneTruth says where the face is and what hides it.
    """
    if plan is None:
        plan = sample_plan(rng)
    W, H = int(rng.integers(size.min_side, size.max_side + 1)), int(rng.integers(size.min_side, size.max_side + 1))
    short = min(W, H)
    scene = _scene_background(rng, W, H)
    box: tuple = (math.nan,) * 4
    tilt = 0.0
    others: list[tuple] = []
    if plan.face:
        # with a bystander, the labelled face is mid-sized and to one side, leaving the bystander room
        lo, hi = size.bystander_face if plan.bystander else (size.face_min, size.face_max)
        target = rng.uniform(lo, hi) * short
        if plan.tilted:
            tilt = float(rng.uniform(TILT_MIN, TILT_MAX) * (1 if rng.random() < 0.5 else -1))
        else:
            tilt = float(rng.uniform(-SMALL_TILT, SMALL_TILT))
        fx, fy = rng.uniform(0, 1, 2)
        if plan.bystander:
            fx = fx * 0.25 if fx < 0.5 else 1 - (1 - fx) * 0.25

        def place_main(bw, bh):
            return 1 + fx * (W - bw - 2), 1 + fy * (H - bh - 2)

        decorate = _occluder(plan.occluder, rng) if plan.occluder else None
        # with a bystander, the main face goes on a layer of its own, laid over the bystander's
        front = Image.new("RGBA", (W, H), (0, 0, 0, 0)) if plan.bystander else scene
        box = _paste_face(front, rng, inten, target, tilt, place_main, decorate)
        if plan.bystander:
            b_inten = np.where(rng.random(len(inten)) < BYSTANDER_AU_RATE, rng.uniform(0.55, 1.0, len(inten)),
                               rng.uniform(0.0, 0.12, len(inten)))
            b_target = target * rng.uniform(0.45, 0.8)
            b_tilt = float(rng.uniform(-2 * SMALL_TILT, 2 * SMALL_TILT))
            # the main person: its face and hair, and its body below
            mw = box[2] - box[0]
            person = (box[0] - 0.6 * mw, box[1] - 0.5 * mw, box[2] + 0.6 * mw, H + 1)
            tries = rng.uniform(0, 1, (40, 2))

            def place_other(bw, bh):
                for tx, ty in tries:
                    x0, y0 = 1 + tx * (W - bw - 2), 1 + ty * (H - bh - 2)
                    if not _overlaps((x0, y0, x0 + bw, y0 + bh), person, margin=2):
                        return x0, y0
                return None

            other = _paste_face(scene, rng, b_inten, b_target, b_tilt, place_other)
            if other is not None:
                others.append(other)
            scene.alpha_composite(front)
    img = _finish(scene, rng, plan)
    hidden = OCCLUDERS[plan.occluder][1] if plan.occluder else ()
    truth = SceneTruth(box=tuple(float(v) for v in box), tilt=round(tilt, 3), grey=plan.grey,
                       jpeg_quality=plan.jpeg_quality, occluder=plan.occluder, hidden_aus=tuple(hidden),
                       faces_in_scene=int(plan.face) + len(others), other_boxes=tuple(others))
    return img, truth


def _finish(scene: Image.Image, rng: np.random.Generator, plan: ScenePlan) -> Image.Image:
    """Light, colour cast, sensor noise and blur over the whole picture; then grey and low JPEG quality."""
    W, H = scene.size
    arr = np.asarray(scene.convert("RGB"), dtype=np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    strength = np.float32(rng.uniform(0, 0.5))
    xx = np.linspace(-0.5, 0.5, W, dtype=np.float32)[None, :] * np.float32(math.cos(direction))
    yy = np.linspace(-0.5, 0.5, H, dtype=np.float32)[:, None] * np.float32(math.sin(direction))
    light = 1 + strength * (xx + yy)
    gain = (rng.uniform(0.75, 1.15) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    arr *= light[..., None] * gain
    noise = _NORMAL * np.float32(rng.uniform(1, 7))  # a random byte picks a quantile: ~3x faster than standard_normal
    arr += np.take(noise, np.frombuffer(rng.bytes(arr.size), np.uint8)).reshape(arr.shape)
    np.clip(arr, 0, 255, out=arr)
    img = Image.fromarray(arr.astype(np.uint8))
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    if plan.grey:
        img = img.convert("L")
    if plan.jpeg_quality:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(plan.jpeg_quality))
        img = Image.open(io.BytesIO(buf.getvalue()))
        img.load()
    return img.convert("RGB")


def encode_scene(img: Image.Image, truth: SceneTruth, fmt: str, rng: np.random.Generator) -> bytes:
    """The bytes of a scene as the web serves it: low-quality ones as JPEG at their quality, grey JPEG/PNG as one channel."""
    if truth.jpeg_quality:
        buf = io.BytesIO()
        (img.convert("L") if truth.grey else img).save(buf, "JPEG", quality=int(truth.jpeg_quality))
        return buf.getvalue()
    if truth.grey and fmt in ("jpeg", "png"):
        img = img.convert("L")
    return faces.encode(img, fmt, rng, png_level=PNG_LEVEL)
