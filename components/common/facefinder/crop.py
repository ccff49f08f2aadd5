"""One image's bytes -> the model's input under the face settings: the aligned face crop, the whole image, or nothing."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from components.common import faces as contract
from components.common import imaging
from components.common.facefinder import align, detect


@dataclass(frozen=True)
class FaceImage:
    """What one image becomes. jpeg is None when it is skipped (no face found, --no-face skip)."""

    jpeg: bytes | None
    width: int
    height: int
    status: str | None  # contract.CROPPED, NO_FACE_WHOLE or WHOLE; None when skipped
    reason: str | None  # why no face was cropped (contract.REASONS); None when one was
    outcome: str  # convert's counter: imaging.PASSED_THROUGH/REENCODED/RESIZED, or "cropped"
    source_width: int
    source_height: int
    face: detect.Face | None = None  # the largest face, in the source image's pixels
    count: int = 0  # faces found
    angle: float = 0.0
    scales: tuple[str, ...] = ()  # the scale that found each face (contract.SCALES), largest face first
    tiles: int = 0  # tiles searched (0: the whole picture only)

    def features(self) -> dict:
        """The face features of contract 3 for this image (components.common.faces)."""
        out = {contract.FACE_STATUS: (self.status or "").encode(), contract.FACE_COUNT: [int(self.count)],
               contract.SOURCE_SIZE: [int(self.source_width), int(self.source_height)]}
        if self.face is not None:
            out[contract.FACE_BOX] = [float(v) for v in self.face.box]
            out[contract.FACE_LANDMARKS] = [float(v) for v in self.face.landmarks.reshape(-1)]
            out[contract.FACE_SCORE] = [float(self.face.score)]
            out[contract.FACE_ANGLE] = [float(self.angle)]
            out[contract.FACE_SCALE] = self.face.scale.encode()
        return out

    def describe(self) -> str:
        """One line for a person: the box used, or why there is none."""
        if self.face is not None and self.status == contract.CROPPED:
            x0, y0, x1, y1 = self.face.box
            more = f", {self.count} faces (the largest used)" if self.count > 1 else ""
            where = f", found in tiles ({self.tiles} searched)" if self.face.scale == contract.SCALE_TILES else ""
            return (f"face at x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} of {self.source_width}x{self.source_height} "
                    f"(score {self.face.score:.2f}, turned {self.angle:+.1f} deg{more}{where})")
        if self.status == contract.WHOLE:
            return f"whole image, {self.source_width}x{self.source_height} (faces: whole, no face detection)"
        why = {contract.NO_FACE: "no face found", contract.TOO_SMALL: "image too small to find a face in",
               contract.TINY_FACE: "the face found is too small to use"}.get(self.reason or "", "no face used")
        then = "the whole image is used" if self.jpeg is not None else "skipped"
        return f"{why} in {self.source_width}x{self.source_height}: {then}"


def _encode(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def prepare(data: bytes, settings: contract.FaceSettings, max_side: int = 0,
            quality: int = imaging.JPEG_QUALITY, detector: detect.Detector | None = None) -> FaceImage:
    """The model's input for one image's bytes under `settings`; raises imaging.UndecodableImage on bad bytes.

    crop: the largest face found, turned so its eyes are level, cut with settings.margin of its
    box on each side and resized to settings.size (RGB JPEG). An image with no usable face is
    kept whole or skipped (settings.no_face), with the reason. whole: the image as convert
    always made it (max_side applies only to whole images).
    """
    if settings.mode == "whole":
        image = imaging.to_rgb_jpeg(data, max_side, quality)
        return FaceImage(image.jpeg, image.width, image.height, contract.WHOLE, None, image.outcome,
                         *image.source_size)
    rgb_image, _ = imaging.decode_rgb(data)
    source_w, source_h = rgb_image.size
    face, count, reason = None, 0, None
    searched = detect.Search([])
    if min(source_w, source_h) < contract.MIN_IMAGE_SIDE:
        reason = contract.TOO_SMALL
    else:
        rgb = np.asarray(rgb_image)
        searched = (detector or detect.get(settings.min_score)).search(rgb)
        found = searched.faces
        count = len(found)
        if not found:
            reason = contract.NO_FACE
        elif found[0].side < contract.MIN_FACE_SIDE:
            reason, face = contract.TINY_FACE, found[0]
        else:
            face = found[0]
            crop, angle = align.align_crop(rgb, face, int(settings.size), float(settings.margin))
            return FaceImage(_encode(crop, quality), crop.shape[1], crop.shape[0], contract.CROPPED, None, "cropped",
                             source_w, source_h, face, count, angle, tuple(f.scale for f in found), searched.tiles)
    found_by = tuple(f.scale for f in searched.faces)
    if settings.no_face == "skip":
        return FaceImage(None, 0, 0, None, reason, "skipped", source_w, source_h, face, count, 0.0, found_by,
                         searched.tiles)
    image = imaging.to_rgb_jpeg(data, max_side, quality)
    return FaceImage(image.jpeg, image.width, image.height, contract.NO_FACE_WHOLE, reason, image.outcome,
                     source_w, source_h, face, count, 0.0, found_by, searched.tiles)
