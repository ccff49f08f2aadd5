"""Pictures and videos with faces at known places (from matplotlib's grace_hopper.jpg), and bad inputs, for tests.

The photograph ships in the matplotlib wheel: nothing is downloaded. The predict and inference tests import
this module by name (tests/conftest.py puts this folder on the path).
"""
from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import numpy as np

BLUE = (0, 0, 255)  # the background: scored whole it would read as AU12 with tiny_model.GOOD


def photo_bytes() -> bytes:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return f.read()


def photo():
    """The portrait as a 512x600 RGB Pillow image; her face is near x 166-366, y 128-328."""
    from PIL import Image

    return Image.open(io.BytesIO(photo_bytes())).convert("RGB")


def jpeg(image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def group(copies: int = 3, scales=(0.62, 0.55, 0.48)) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """(a 1200x600 JPEG holding `copies` portraits of different sizes, left to right, the pasted rectangles
    x0, y0, x1, y1): faces of three sizes, so their order by size is known (the first is the largest)."""
    from PIL import Image

    scene = Image.new("RGB", (1200, 600), BLUE)
    im, places = photo(), []
    for i in range(copies):
        w, h = int(512 * scales[i]), int(600 * scales[i])
        x, y = 40 + i * 390, 60
        scene.paste(im.resize((w, h)), (x, y))
        places.append((x, y, x + w, y + h))
    return jpeg(scene), places


def face_video(path: str, frames: int = 12, fps: float = 10.0, size=(480, 320), faces: int = 2,
               blank: bool = False) -> list[list[tuple[int, int, int, int]]]:
    """Writes an mp4 (cv2.VideoWriter, mp4v) of `faces` portraits moving across the frame, the first to the
    right, the second to the left; returns each frame's pasted rectangles (none when blank)."""
    import cv2

    w, h = size
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with mp4v")
    face = np.asarray(photo().resize((150, 176)))
    fh, fw = face.shape[:2]
    out = []
    for t in range(frames):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:] = BLUE
        places = []
        if not blank:
            for k in range(faces):
                x = 10 + 6 * t if k == 0 else w - fw - 10 - 6 * t
                y = 20 if k == 0 else h - fh - 20
                frame[y:y + fh, x:x + fw] = face
                places.append((x, y, x + fw, y + fh))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        out.append(places)
    writer.release()
    return out


def bad_inputs(folder: str) -> dict[str, str]:
    """Writes the bad inputs predict must name, into folder; returns {file name: the reason expected}."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")
    Image.new("RGB", (1, 1), (200, 100, 50)).save(os.path.join(folder, "dot.png"))
    # 100 megapixels: a 1-bit PNG of 10000x10000 is a few kB, and Pillow reads its size from the header.
    Image.new("1", (10000, 10000)).save(os.path.join(folder, "huge.png"))
    whole = jpeg(photo())
    with open(os.path.join(folder, "cut.jpg"), "wb") as f:
        f.write(whole[: len(whole) // 3])
    # A path that cannot be read even by root (who reads any file mode): a link to nothing.
    os.symlink(os.path.join(folder, "gone.jpg"), os.path.join(folder, "link.jpg"))
    return {"notes.txt": "not_image", "dot.png": "too_small", "huge.png": "too_large", "cut.jpg": "corrupt",
            "link.jpg": "unreadable"}


def truncated_video(src: str, dst: str) -> str:
    """The first third of an mp4: mp4v writes its index (moov) last, so nothing can be played."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 3])
    return dst


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: its header is all a size check may read (a decompression bomb of a
    few dozen bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def b64(data: bytes) -> str:
    """data as the base64 text of a JSON request."""
    return base64.b64encode(data).decode()
