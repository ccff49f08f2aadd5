"""Decodes any image's bytes to RGB, upright as a viewer shows it (its EXIF orientation applied), and makes the RGB
JPEG of contract 3 (Pillow only, no TensorFlow); convert, the face finder, predict and the server use it, so the model
is trained on pictures turned as the ones it scores."""
from __future__ import annotations

import io
from dataclasses import dataclass

# The quality of every JPEG convert encodes (a re-encoded image, a face crop); predict and the server encode with it
# too, so the model sees inputs as compressed as its training crops. RGB JPEGs that need no resize pass untouched.
JPEG_QUALITY = 95

# What happened to an image; each is a counter of the convert step.
PASSED_THROUGH = "passed_through"  # RGB JPEG kept byte for byte
REENCODED = "reencoded"  # another format or colour mode, made RGB JPEG
RESIZED = "resized"  # shrunk to max_side (and so re-encoded)

# Formats whose bytes are a baseline/progressive JPEG stream that TensorFlow decodes as is
# (MPO is a camera JPEG with extra pictures appended after the first).
_JPEG_FORMATS = ("JPEG", "MPO")
WHITE = (255, 255, 255)
# EXIF orientation (tag 0x0112) -> the Pillow transpose that shows the picture upright, as a viewer does; 5 to 8
# also swap width and height. A phone's portrait photo is stored sideways with 6 or 8.
_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                7: "TRANSVERSE", 8: "ROTATE_90"}
_SWAPS_SIDES = frozenset(_ORIENTATION[k] for k in (5, 6, 7, 8))
_EXIF_ORIENTATION = 0x0112


class UndecodableImage(ValueError):
    """The bytes are not an image Pillow can decode completely (truncated, corrupt, unknown format)."""


@dataclass(frozen=True)
class ConvertedImage:
    jpeg: bytes
    width: int
    height: int
    outcome: str  # PASSED_THROUGH, REENCODED or RESIZED
    source_format: str  # Pillow's name of the format read: JPEG PNG GIF WEBP BMP ...
    source_size: tuple[int, int]  # width, height of the image read, upright (before any resize)
    turned: bool = False  # its EXIF orientation turned or flipped it upright (then it was re-encoded)


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longest side shrunk to max_side, aspect kept; unchanged if it fits or max_side is 0."""
    longest = max(width, height)
    if max_side <= 0 or longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(im):
    """Any Pillow mode as RGB; transparency is composited on white (faces on a transparent background)."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: a plain convert would clip everything above 255 to white.
        import numpy as np

        a = np.asarray(im).astype(np.float64)
        peak = 65535.0 if a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def upright_transpose(im) -> str | None:
    """The Pillow transpose that shows a just-opened image upright (its EXIF orientation), or None."""
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: shown as stored, as a viewer does
        return None
    return _ORIENTATION.get(value)


def upright_size(width: int, height: int, transpose: str | None) -> tuple[int, int]:
    """A stored picture's (width, height) once upright_transpose() has turned it."""
    return (height, width) if transpose in _SWAPS_SIDES else (width, height)


def _load(data: bytes, max_side: int):
    """(the fully decoded Pillow image, its format, its size, the target size, its upright transpose or None);
    raises UndecodableImage. Sizes are as stored (the transpose turns them upright).

    Every image is fully decoded here, so a truncated or corrupt file fails now rather than in a
    training run later. Big JPEGs are decoded at 1/2, 1/4 or 1/8 of their size when the target allows.
    """
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        source_format = im.format or "unknown"
        transpose = upright_transpose(im)
        size = target_size(im.size[0], im.size[1], max_side)
        original = im.size
        if source_format in _JPEG_FORMATS and size != original:
            im.draft(im.mode if im.mode in ("RGB", "L") else None, size)
        im.seek(0)  # GIF, WebP, MPO: the first frame
        im.load()  # the full decode; raises on truncated or corrupt data
        return im, source_format, original, size, transpose
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on bad data; each one means "cannot decode"
        raise UndecodableImage(f"{type(e).__name__}: {e}") from e


def _rgb(im, size: tuple[int, int], transpose: str | None = None):
    """The decoded image as RGB at `size` (as stored), then turned upright."""
    from PIL import Image

    try:
        rgb = _to_rgb(im)
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if transpose:
            rgb = rgb.transpose(getattr(Image.Transpose, transpose))
        return rgb
    except Exception as e:  # noqa: BLE001 - a decoded image whose mode Pillow cannot convert
        raise UndecodableImage(f"{type(e).__name__}: {e}") from e


def decode_rgb(data: bytes, max_side: int = 0):
    """(RGB Pillow image, source format) of any image's bytes, upright; max_side > 0 shrinks the longest side to it.

    Grey, CMYK, palette, 16-bit and transparent images come out RGB (alpha on white); GIF and
    WebP give their first frame. Raises UndecodableImage on truncated or corrupt data.
    """
    im, source_format, _, size, transpose = _load(data, max_side)
    return _rgb(im, size, transpose), source_format


def to_rgb_jpeg(data: bytes, max_side: int = 0, quality: int = JPEG_QUALITY) -> ConvertedImage:
    """The image as an upright RGB JPEG: an RGB JPEG that needs no resize and no turning is passed through byte for
    byte; anything else (PNG, GIF's first frame, WebP, BMP, CMYK, palette, grayscale, alpha, an EXIF orientation) is
    decoded, made RGB, turned upright and encoded.

    Every image is fully decoded, so a truncated or corrupt file raises UndecodableImage here rather
    than failing a training run later. max_side > 0 shrinks the longest side to it (never enlarges).
    """
    im, source_format, original, size, transpose = _load(data, max_side)
    upright = upright_size(*original, transpose)
    if source_format in _JPEG_FORMATS and im.mode == "RGB" and size == original and not transpose:
        return ConvertedImage(bytes(data), original[0], original[1], PASSED_THROUGH, source_format, original)
    out = io.BytesIO()
    _rgb(im, size, transpose).save(out, format="JPEG", quality=quality)
    outcome = RESIZED if size != original else REENCODED
    width, height = upright_size(*size, transpose)
    return ConvertedImage(out.getvalue(), width, height, outcome, source_format, upright, bool(transpose))
