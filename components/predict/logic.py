"""Predict with a pushed model: AU probabilities (or valence/arousal) of face images, what a user does after a push."""
from __future__ import annotations

import json
import tempfile

from components.common import labels, storage
from components.common.faces import FaceSettings
from components.evaluate import logic as evaluate
from components.faces import logic as face_logic
from components.faces.logic import FaceImage
from components.push import registry


class PredictError(Exception):
    """A model or image that cannot be used; the message says which and what to do."""


def read_image(uri: str) -> bytes:
    """The bytes of an image file (local or gs://), checked to be an image PIL can decode."""
    from components.convert import imaging

    if not storage.exists(uri):
        raise PredictError(f"image {uri} does not exist")
    data = storage.read_bytes(uri)
    try:
        imaging.decode_rgb(data)
    except imaging.UndecodableImage as e:
        raise PredictError(f"{uri} is not an image that can be read ({e})") from e
    return data


def prepare_images(raw: list[bytes], uris: list[str], settings: FaceSettings) -> list[FaceImage]:
    """Each image as the model saw its training images: the aligned face crop (or the whole image) as RGB JPEG."""
    from components.convert import imaging

    out = []
    for data, uri in zip(raw, uris):
        try:
            out.append(face_logic.prepare(data, settings))
        except imaging.UndecodableImage as e:
            raise PredictError(f"{uri} is not an image that can be read ({e})") from e
    return out


def _thresholds(model_dir: str, au_ids: list[int], override: float | None) -> tuple[list[float], str]:
    if override is not None:
        return [float(override)] * len(au_ids), f"{override} (given)"
    path = storage.join(model_dir, registry.METRICS)
    if storage.exists(path):
        try:
            tuned = json.loads(storage.read_text(path)).get("thresholds", {}).get("tuned") or {}
        except ValueError:
            tuned = {}
        if all(str(a) in tuned for a in au_ids):
            return [float(tuned[str(a)]) for a in au_ids], "per AU, tuned on the validation split (metrics.json)"
    return [evaluate.DEFAULT_THRESHOLD] * len(au_ids), f"{evaluate.DEFAULT_THRESHOLD} (no tuned thresholds with the model)"


def predict(model_uri: str, images: list[str], threshold: float | None = None, batch_size: int = 32) -> dict:
    """Runs the model (a registry root, a version or a model folder) on the images; returns a JSON-able result."""
    if not images:
        raise PredictError("no images given")
    raw = [read_image(uri) for uri in images]
    try:
        model_folder, version = registry.resolve_model(model_uri)
    except registry.RegistryError as e:
        raise PredictError(str(e)) from e
    with tempfile.TemporaryDirectory(prefix="predict-") as workdir:
        local = registry.fetch_local(model_folder, workdir)
        try:
            config = evaluate.read_model_config(local)
            settings = FaceSettings.from_dict(config.get("faces"))
            prepared = prepare_images(raw, images, settings)
            encoded = [p.jpeg for p in prepared if p.jpeg is not None]
            signature = evaluate.load_signature(local) if encoded else None
            scores = []
            for i in range(0, len(encoded), batch_size):
                scores.extend(evaluate.run_signature(signature, encoded[i:i + batch_size], config["task"]).tolist())
            # None for an image with no face under --no-face skip: the model never saw such inputs.
            scores_iter = iter(scores)
            outputs = [next(scores_iter) if p.jpeg is not None else None for p in prepared]
        except evaluate.EvaluateError as e:
            raise PredictError(str(e)) from e
        except Exception as e:  # noqa: BLE001 - TF's errors for an image the signature cannot decode
            import tensorflow as tf

            if isinstance(e, tf.errors.OpError):
                raise PredictError(f"the model could not score the images ({e.message})") from e
            raise
        au_ids = config["au_ids"]
        thresholds, threshold_source = _thresholds(local, au_ids, threshold) if config["task"] == "au" else ([], "")
    result = {"model": model_folder, "version": version, "task": config["task"], "faces": settings.to_dict(),
              "images": []}
    if config["task"] == "au":
        result["au_ids"] = au_ids
        result["thresholds"] = threshold_source
    for uri, out, prep in zip(images, outputs, prepared):
        face = {"status": prep.status, "reason": prep.reason, "description": prep.describe(),
                "box": [round(float(v), 1) for v in prep.face.box] if prep.face is not None else None,
                "score": round(float(prep.face.score), 4) if prep.face is not None else None,
                "angle": round(float(prep.angle), 2), "count": prep.count}
        if out is None:
            result["images"].append({"image": uri, "face": face, "scored": False})
            continue
        if config["task"] == "va":
            result["images"].append({"image": uri, "face": face, **{n: float(v) for n, v in zip(labels.VA_COLUMNS, out)}})
            continue
        aus = [
            {"au": a, "name": labels.AU_NAMES.get(a, ""), "probability": float(p), "threshold": float(t),
             "active": bool(p >= t)}
            for a, p, t in zip(au_ids, out, thresholds)
        ]
        result["images"].append({"image": uri, "face": face, "active": [d["au"] for d in aus if d["active"]],
                                 "aus": aus})
    return result


def format_result(result: dict) -> str:
    """A per-image table of AU probabilities, '*' marking the active ones."""
    where = result["model"] + (f" (version {result['version']})" if result.get("version") else "")
    lines = [f"model: {where}"]
    if result["task"] == "au":
        lines.append(f"active = probability >= threshold; thresholds: {result['thresholds']}")
    for img in result["images"]:
        lines.append("")
        lines.append(img["image"])
        lines.append(f"  {img['face']['description']}")
        if img.get("scored") is False:
            lines.append("  not scored: the model was trained on face crops only (no_face=skip); "
                         "pass an image with a visible face")
            continue
        if result["task"] == "va":
            lines.append("  " + "  ".join(f"{n} {img[n]:+.3f}" for n in labels.VA_COLUMNS))
            continue
        width = max(len(d["name"]) for d in img["aus"])
        for d in img["aus"]:
            mark = "*" if d["active"] else " "
            lines.append(f"  {mark} AU{d['au']:<3} {d['name']:<{width}}  {d['probability']:.3f}  (thr {d['threshold']:.2f})")
        active = ", ".join(f"AU{a}" for a in img["active"]) or "none"
        lines.append(f"  active: {active}")
    return "\n".join(lines)
