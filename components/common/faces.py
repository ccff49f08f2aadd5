"""The face contract: settings convert crops with (recorded with the examples and the model) and the face features of contract 3."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from components.common.params import Param

# How an image reaches the examples (also the values of the `face/status` feature).
CROPPED = "cropped"  # the largest face, rotated so the eyes are level, cropped with a margin, resized
NO_FACE_WHOLE = "no_face_whole"  # no face found (--no-face whole): the whole image
WHOLE = "whole"  # --faces whole: no detection, the whole image
STATUSES = (CROPPED, NO_FACE_WHOLE, WHOLE)

# Why no face was cropped from an image; each is counted (faces_<reason>) whatever --no-face does.
NO_FACE = "no_face"  # decodable, but the detector found no face at --face-min-score
TOO_SMALL = "too_small"  # shorter side below MIN_IMAGE_SIDE px: nothing a detector or a model can use
TINY_FACE = "tiny_face"  # a face was found, but its box is below MIN_FACE_SIDE px
REASONS = (NO_FACE, TOO_SMALL, TINY_FACE)

MIN_IMAGE_SIDE = 24
MIN_FACE_SIDE = 12

# Face features of contract 3, in the source image's pixels (before any crop or resize).
FACE_STATUS = "face/status"  # bytes: one of STATUSES
FACE_BOX = "face/box"  # float[4]: xmin, ymin, xmax, ymax of the detector's box
FACE_LANDMARKS = "face/landmarks"  # float[12]: x, y of right eye, left eye, nose tip, mouth, right ear, left ear
FACE_SCORE = "face/score"  # float[1]: the detector's confidence
FACE_ANGLE = "face/angle"  # float[1]: degrees the crop was rotated so the eyes are level
FACE_COUNT = "face/count"  # int64[1]: faces found in the image (the largest is cropped)
FACE_SCALE = "face/scale"  # bytes: which pass of the face finder found the face cropped: one of SCALES
SOURCE_SIZE = "face/source_size"  # int64[2]: width, height of the source image (the frame of box and landmarks)
# The landmarks' order, as MediaPipe's BlazeFace gives them ("right" is the person's right).
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")

MODES = ("crop", "whole")
NO_FACE_POLICIES = ("skip", "whole")
# MediaPipe's BlazeFace, shipped inside its wheel: the full-range model (faces small in the frame), then the
# short-range one when the first finds nothing; then, where the picture is larger than a tile and no face was
# found that the detector sees clearly, the full-range model on overlapping tiles (facefinder/tiles.py).
DETECTOR = "blazeface-full+short+tiles"
# Larger images are shrunk to this longest side for detection only (the crop uses every pixel).
DETECT_MAX_SIDE = 1280
# The scales a face is found at: the whole picture in the detector's 192 px view, or a tile of it.
SCALE_PICTURE = "picture"
SCALE_TILES = "tiles"
SCALES = (SCALE_PICTURE, SCALE_TILES)

# The face settings as parameters: convert's (and so the DAG's), the faces CLI's; FaceSettings' defaults.
FACE_PARAMS = (
    Param("faces", str, "crop", "crop (find the largest face, level its eyes, crop it) or whole (the whole "
          "picture).", choices=MODES),
    Param("no_face", str, "skip", "What to do with an image in which no face is found: skip or whole.",
          choices=NO_FACE_POLICIES),
    # 224: ResNet-50's input, train's default (the demo preset keeps 160).
    Param("face_size", int, 224, "Side of the square face crop, in pixels (train resizes to its --image-size)."),
    Param("face_margin", float, 0.25, "Added on each side of the face box, as a share of its side."),
    Param("face_min_score", float, 0.5, "Detector confidence needed to call it a face (0..1)."),
)
_FACE_DEFAULTS = {p.name: p.default for p in FACE_PARAMS}


@dataclass(frozen=True)
class FaceSettings:
    """How convert (and predict, and any server) turns an image into the model's input."""

    mode: str = _FACE_DEFAULTS["faces"]  # crop | whole
    no_face: str = _FACE_DEFAULTS["no_face"]  # skip | whole: an image in which no face is found
    size: int = _FACE_DEFAULTS["face_size"]  # side of the square crop, px
    margin: float = _FACE_DEFAULTS["face_margin"]  # added on each side of the face box, as a share of its side
    min_score: float = _FACE_DEFAULTS["face_min_score"]  # detector confidence needed to call it a face
    detector: str = DETECTOR

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"faces is {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.no_face not in NO_FACE_POLICIES:
            raise ValueError(f"no_face is {self.no_face!r}; expected one of {', '.join(NO_FACE_POLICIES)}")
        if not 32 <= int(self.size) <= 1024:
            raise ValueError(f"face_size is {self.size}; expected a side between 32 and 1024 px")
        if not 0 <= float(self.margin) <= 1:
            raise ValueError(f"face_margin is {self.margin}; expected a share of the face box between 0 and 1")
        if not 0 < float(self.min_score) < 1:
            raise ValueError(f"face_min_score is {self.min_score}; expected a confidence between 0 and 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: "dict | None") -> "FaceSettings":
        """The settings recorded in examples_summary.json or model_config.json; None (made before faces) is whole."""
        if not d:
            return cls(mode="whole")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def counter_name(reason: str) -> str:
    """The convert counter of a reason or status: faces_no_face, faces_cropped, ..."""
    return f"faces_{reason}"


def found_counter(scale: str) -> str:
    """The convert counter of the faces a scale found: faces_found_picture, faces_found_tiles."""
    return f"faces_found_{scale}"


# faces_tiled: images whose tiles were searched (the whole picture gave no face the detector sees clearly).
TILED = "faces_tiled"
COUNTERS = tuple(counter_name(r) for r in (CROPPED, NO_FACE_WHOLE, WHOLE) + REASONS) + (
    "faces_multiple", "faces_skipped") + tuple(found_counter(s) for s in SCALES) + (TILED,)


def face_counters(counters: dict) -> dict:
    """The faces_* counters of a convert summary, zeros included."""
    return {name: int(counters.get(name, 0)) for name in COUNTERS}


def format_counters(counters: dict) -> str:
    """One line for a person: how many images were cropped, kept whole or skipped, and why."""
    c = face_counters(counters)
    parts = [f"{c[counter_name(CROPPED)]} face crops"]
    if c[counter_name(WHOLE)]:
        parts.append(f"{c[counter_name(WHOLE)]} whole images (--faces whole)")
    if c[counter_name(NO_FACE_WHOLE)]:
        parts.append(f"{c[counter_name(NO_FACE_WHOLE)]} kept whole without a face")
    if c["faces_skipped"]:
        parts.append(f"{c['faces_skipped']} skipped without a face")
    why = [f"{r.replace('_', ' ')} {c[counter_name(r)]}" for r in REASONS if c[counter_name(r)]]
    if why:
        parts.append("reasons: " + ", ".join(why))
    if c["faces_multiple"]:
        parts.append(f"{c['faces_multiple']} with several faces (the largest used)")
    if any(c[found_counter(s)] for s in SCALES) or c[TILED]:
        parts.append(f"faces found: {c[found_counter(SCALE_PICTURE)]} in the whole picture, "
                     f"{c[found_counter(SCALE_TILES)]} in tiles (searched in {c[TILED]} images)")
    return "; ".join(parts)


def from_arguments(args) -> FaceSettings:
    """FaceSettings from the parsed flags of FACE_PARAMS (a CLI without --faces crops); ValueError names a bad one."""
    return FaceSettings(mode=getattr(args, "faces", _FACE_DEFAULTS["faces"]), no_face=args.no_face, size=args.face_size,
                        margin=args.face_margin, min_score=args.face_min_score)
