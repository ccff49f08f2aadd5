"""The request bodies the server takes and the answers it gives: Vertex AI / KServe V1, KServe V2 and raw image bytes.

Plain functions of bytes and dicts, no HTTP framework: each parser returns the images of a request or raises
RequestError with the status and a message that says what was expected.

- Vertex AI's custom container and KServe V1 (`/v1/models/NAME:predict`) share one body:
  `{"instances": [{"b64": "<base64 image>"}, ...]}` -> `{"predictions": [<image result>, ...]}`.
- KServe's Open Inference Protocol V2: one BYTES input of shape [N], its data base64 strings in JSON, or the raw
  image bytes after the JSON header (the binary tensor extension: `Inference-Header-Content-Length`, each element a
  4-byte little-endian length then the bytes). The output `faces` is BYTES [N], each element an image result as a
  JSON string: the results are nested (any number of faces per image), which no V2 numeric tensor can hold.
- Raw bytes: the body is the image; Content-Type image/*.

An image result is components.common.inference's: {image, width, height, faces: [{face, box, landmarks, score,
angle, probabilities, active}], faces_found, error, reason}. An image that cannot be scored (not an image, too many
pixels, too small, ...) has error and reason set; a request none of whose images could be scored fails with the
status of the first one's reason (REASON_STATUS).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
import warnings

# The Scorer's reasons for an image it could not score, and the HTTP status each earns.
REASON_STATUS = {"not_image": 400, "corrupt": 400, "too_large": 413, "too_small": 422, "model_failed": 422}
IMAGE_FORMATS = "JPEG, PNG, GIF, WebP, BMP or TIFF"
V2_INPUT = "image"
V2_OUTPUT = "faces"
V2_HEADER_LENGTH = "inference-header-content-length"
_BASE64 = re.compile(rb"^[A-Za-z0-9+/\-_]*={0,2}$")


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a message saying what was expected."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def parse_json(body: bytes, expected: str) -> object:
    if not body:
        raise RequestError(400, f"the body is empty; expected JSON: {expected}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e}); expected {expected}") from e


def decode_base64(value: object, where: str) -> bytes:
    """The bytes of a base64 string (standard or URL-safe alphabet, line breaks allowed)."""
    if not isinstance(value, str):
        raise RequestError(400, f"{where} is a {type(value).__name__}; expected a base64 string of an image's bytes")
    data = value.encode("ascii", "replace")
    data = b"".join(data.split())  # MIME-style base64 wraps its lines
    if not _BASE64.match(data) or len(data) % 4 == 1:
        raise RequestError(400, f"{where} is not valid base64 (a character outside the base64 alphabet, or a bad "
                                "length); encode the image's bytes with base64")
    try:
        if b"-" in data or b"_" in data:
            return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"{where} is not valid base64 ({e}); encode the image's bytes with base64") from e


def _failed(name: str, width: int, height: int, reason: str, message: str) -> dict:
    """An image result that says why the image was not scored (the Scorer's shape for such a result)."""
    return {"image": name, "width": width, "height": height, "faces": [], "faces_found": 0, "error": message,
            "reason": reason}


def check_image(data: bytes, name: str, max_pixels: int) -> dict | None:
    """None for bytes that are an image of at most max_pixels pixels, else the image's failed result. Reads the
    header alone: a decompression bomb is refused before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return _failed(name, 0, 0, "not_image", f"{name} is empty; expected the bytes of a {IMAGE_FORMATS} image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as e:
        return _failed(name, 0, 0, "too_large", f"{name} is too large to decode ({e}); send at most "
                                                f"{max_pixels:,} pixels")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return _failed(name, 0, 0, "not_image", f"{name} is not an image that can be read ({type(e).__name__}); "
                                                f"expected the bytes of a {IMAGE_FORMATS} image")
    if width * height > max_pixels:
        return _failed(name, width, height, "too_large",
                       f"{name} is {width}x{height} = {width * height:,} pixels, more than this server's "
                       f"{max_pixels:,}; shrink it (a face needs far fewer pixels) and send it again")
    return None


def check_results(results: list[dict]) -> None:
    """Raises the RequestError of the first failed image when no image of the request could be scored.

    A request with some images scored succeeds: each failed image's result carries its error and reason, as the
    Scorer's results do (one bad picture in a batch does not cost the others their answers).
    """
    if results and all(r.get("error") for r in results):
        first = results[0]
        more = f" (and the request's {len(results) - 1} other images failed too)" if len(results) > 1 else ""
        raise RequestError(REASON_STATUS.get(first.get("reason") or "", 422), first["error"] + more)


# --- Vertex AI and KServe V1 ------------------------------------------------------------------------------------
INSTANCES_EXPECTED = '{"instances": [{"b64": "<base64 of a JPEG or PNG>"}, ...]}'


def parse_instances(body: bytes, max_instances: int) -> tuple[list[bytes], list[str]]:
    """The images of a Vertex AI / KServe V1 body, and their names in the request (instances[i])."""
    doc = parse_json(body, INSTANCES_EXPECTED)
    if not isinstance(doc, dict) or "instances" not in doc:
        raise RequestError(400, f'the body has no "instances"; expected {INSTANCES_EXPECTED}')
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, f'"instances" must be a non-empty list; expected {INSTANCES_EXPECTED}')
    if len(instances) > max_instances:
        raise RequestError(413, f"the request has {len(instances)} instances; this server takes at most "
                                f"{max_instances} per request: split it")
    images, names = [], []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        # {"b64": ...} is Vertex AI's form for binary data; {"image_bytes": {"b64": ...}} TF Serving's.
        if isinstance(inst, dict) and isinstance(inst.get("image_bytes"), dict):
            inst, where = inst["image_bytes"], where + ".image_bytes"
        if not isinstance(inst, dict) or "b64" not in inst:
            raise RequestError(400, f'{where} has no "b64"; expected {INSTANCES_EXPECTED}')
        images.append(decode_base64(inst["b64"], where + ".b64"))
        names.append(f"instances[{i}]")
    return images, names


def predictions(results: list[dict], version: str | None) -> dict:
    return {"predictions": [{**r, "model_version": version} for r in results]}


# --- KServe V2 --------------------------------------------------------------------------------------------------
V2_EXPECTED = ('{"inputs": [{"name": "image", "shape": [N], "datatype": "BYTES", "data": ["<base64 image>", ...]}]} '
               "(or the binary tensor extension)")


def _v2_binary_elements(raw: bytes, count: int) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then that many bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise RequestError(400, f"the binary data of input {V2_INPUT!r} ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise RequestError(400, f"element {len(out)} of the binary data says {n} bytes, but only "
                                    f"{len(raw) - pos} follow")
        out.append(raw[pos:pos + n])
        pos += n
    if len(out) != count:
        raise RequestError(400, f"the binary data holds {len(out)} elements; the shape says {count}")
    return out


def parse_v2(body: bytes, header_length: str | None, max_instances: int) -> tuple[list[bytes], list[str], str | None]:
    """(images, their names, the request's id) of a V2 infer request, JSON or with binary data after the header."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 < n <= len(body):
            raise RequestError(400, f"Inference-Header-Content-Length is {header_length!r}; expected the length of "
                                    f"the JSON header at the start of the {len(body)}-byte body")
        body, binary = body[:n], body[n:]
    doc = parse_json(body, V2_EXPECTED)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or len(doc["inputs"]) != 1:
        raise RequestError(400, f"expected one input; send {V2_EXPECTED}")
    inp = doc["inputs"][0]
    if not isinstance(inp, dict):
        raise RequestError(400, f"inputs[0] is not an object; send {V2_EXPECTED}")
    if inp.get("datatype") != "BYTES":
        raise RequestError(400, f"input {inp.get('name')!r} has datatype {inp.get('datatype')!r}; expected BYTES "
                                "(encoded images)")
    shape = inp.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(400, f"input {inp.get('name')!r} has shape {shape!r}; expected [N] (or [N, 1])")
    count = 1
    for d in shape:
        count *= d
    if count == 0:
        raise RequestError(400, "the input holds no image (its shape has a 0)")
    if count > max_instances:
        raise RequestError(413, f"the request has {count} images; this server takes at most {max_instances} per "
                                "request: split it")
    params = inp.get("parameters") if isinstance(inp.get("parameters"), dict) else {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if header_length is None or not isinstance(size, int) or size != len(binary):
            raise RequestError(400, f"binary_data_size is {size!r} but {len(binary)} bytes follow the JSON header; "
                                    "send Inference-Header-Content-Length and the binary data after the header")
        images = _v2_binary_elements(binary, count)
    else:
        data = inp.get("data")
        while isinstance(data, list) and data and all(isinstance(x, list) for x in data):  # [[b64], [b64]] for [N, 1]
            data = [x for row in data for x in row]
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise RequestError(400, f"input {inp.get('name')!r} has {got} data elements; its shape says {count}")
        images = [decode_base64(x, f"inputs[0].data[{i}]") for i, x in enumerate(data)]
    request_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    return images, [f"inputs[0][{i}]" for i in range(len(images))], request_id


def v2_response(results: list[dict], model_name: str, version: str | None, request_id: str | None) -> dict:
    out = {"model_name": model_name,
           "outputs": [{"name": V2_OUTPUT, "datatype": "BYTES", "shape": [len(results)],
                        "parameters": {"content_type": "application/json"},
                        "data": [json.dumps(r, separators=(",", ":")) for r in results]}]}
    if version:
        out["model_version"] = version
    if request_id is not None:
        out["id"] = request_id
    return out


def v2_metadata(model_name: str, version: str | None, task: str = "au") -> dict:
    """GET /v2/models/NAME: what the model takes and gives."""
    return {"name": model_name, "versions": [version] if version else [], "platform": "tensorflow_savedmodel",
            "inputs": [{"name": V2_INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": V2_OUTPUT, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"task": task, "output": "each element is one image's result as JSON: its faces, each "
                                                   "with box, score, AU probabilities and active AUs"}}


# --- raw bytes ----------------------------------------------------------------------------------------------------
def check_image_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if not media.startswith("image/"):
        raise RequestError(415, f"Content-Type is {content_type or 'missing'!s}; send the image's bytes as the body "
                                "with Content-Type image/jpeg, image/png or another image/* type")
