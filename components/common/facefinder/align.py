"""Rotates an image so a face's eyes are level and cuts the square around it: the model's view of a face."""
from __future__ import annotations

import math

import numpy as np

from components.common.facefinder.detect import Face


def eye_angle(face: Face) -> float:
    """Degrees the eye line is tilted (positive: the person's left eye, on the image's right, is lower)."""
    right, left = face.landmarks[0], face.landmarks[1]
    return math.degrees(math.atan2(float(left[1] - right[1]), float(left[0] - right[0])))


def crop_matrix(face: Face, size: int, margin: float, angle: float) -> np.ndarray:
    """The 2x3 affine map from image pixels to the size x size crop: the box centre to the crop centre, the box
    side plus `margin` of it on each side to `size`, turned by `angle` so the eyes are level."""
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    scale = size / side
    a = math.radians(angle)
    ca, sa = math.cos(a) * scale, math.sin(a) * scale
    # Rotation by -angle about (cx, cy), scaled, then moved to the crop's centre (cv2.getRotationMatrix2D's form).
    return np.array([[ca, sa, size / 2 - ca * cx - sa * cy],
                     [-sa, ca, size / 2 + sa * cx - ca * cy]], np.float64)


def align_crop(rgb: np.ndarray, face: Face, size: int, margin: float) -> tuple[np.ndarray, float]:
    """(the size x size x 3 uint8 crop, the angle it was turned by) of `face` in the (H, W, 3) uint8 image."""
    import cv2

    angle = eye_angle(face)
    matrix = crop_matrix(face, size, margin, angle)
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    if scale < 0.5:
        # warpAffine samples 4 pixels per output pixel: a face shrunk by more than 2x would alias.
        # Shrink the image first (area averaging) to twice the crop's resolution.
        factor = 2 * scale
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        matrix = crop_matrix(face.scaled(factor), size, margin, angle)
    crop = cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, angle
