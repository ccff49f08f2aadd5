"""The model card of a registry version (model_card.json and model_card.md beside the model): what the model detects
and expects, what it must not be used for, what it was trained on, how well it does overall, per AU and per slice,
its blessing and its lineage. push writes it (build, write); predict --model-card and the server read it (read)."""
from __future__ import annotations

import json
import math

from components.common import labels, storage

MODEL_CARD_JSON = "model_card.json"
MODEL_CARD_MD = "model_card.md"
CARD_FILES = (MODEL_CARD_JSON, MODEL_CARD_MD)
CARD_FORMAT = 1  # model_card.json's "format": raised when a field changes meaning

INTENDED_USE = (
    "Detecting facial Action Units (FACS muscle movements) in photographs of faces, as probabilities per AU, for "
    "research on facial expression, for annotating image collections, and as a feature for systems a person reviews.",
    "Measuring the face's movements, not what a person feels: an AU says which muscles moved, not why.",
)
OUT_OF_SCOPE = (
    "Inferring a person's emotions, intentions, honesty, personality or character from their face.",
    "Any decision about a person in hiring, education, credit, insurance, policing, border control, justice or "
    "healthcare, and surveillance or identification of people, with or without their knowledge.",
    "Faces unlike the training data's (web photos): children, medical conditions affecting the face, infrared or "
    "thermal images, drawings; and any use without checking the per-slice figures below on one's own data.",
)


class ModelCardError(ValueError):
    """A model card that cannot be read; the message names the file and what to do."""


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _aus(config: dict, metrics: dict) -> list[dict]:
    tuned = ((metrics.get("thresholds") or {}).get("tuned") or {})
    return [{"au": a, "name": labels.AU_NAMES.get(a, ""), "label": f"AU{a}", "threshold": tuned.get(str(a), 0.5)}
            for a in config.get("au_ids") or []]


def _training_data(config: dict) -> dict:
    """The training data as the model knows it (model_config.json's "data", written by train from the examples)."""
    data = config.get("data") or {}
    parameters = data.get("parameters") or {}
    # Filter carries convert's counters and parameters along; a model trained on convert's folder has them itself.
    convert = parameters.get("convert") or {"counters": data.get("counters"), "parameters": parameters}
    convert_counters = convert.get("counters") or {}
    convert_parameters = convert.get("parameters") or {}
    splits = data.get("splits") or {}
    sheet = convert_parameters.get("sheet") or {}
    coverage = {}
    for split, s in splits.items():
        for au, c in (s.get("au") or {}).items():
            total = coverage.setdefault(au, {"positive": 0, "negative": 0, "unknown": 0})
            for k in total:
                total[k] += int(c.get(k, 0))
    return {
        "sheet": {"uri": sheet.get("uri"), "sha256": sheet.get("sha256")},
        "manifest": convert_parameters.get("manifest"),
        "examples": (config.get("training") or {}).get("examples"),
        "splits": {split: int(s.get("examples", 0)) for split, s in splits.items()},
        "au_coverage": coverage,  # over every split: positive, negative and unknown (999) labels per AU
        "policy": data.get("policy"),
        "download_failures": convert_counters.get("not_downloaded"),
        "images_downloaded": convert_counters.get("downloaded_ok"),
        "faces_skipped": convert_counters.get("faces_skipped"),
        "face_counters": {k: v for k, v in convert_counters.items() if k.startswith("faces_")},
        "undecodable": convert_counters.get("skipped_undecodable"),
    }


def _metrics(metrics: dict) -> dict:
    if metrics.get("task") == "va":
        return {k: metrics.get(k) for k in ("split", "examples", "valence", "arousal", "mean_ccc", "mean_mse")}
    d, t = metrics.get("at_default") or {}, metrics.get("at_tuned") or {}
    per_au = []
    for a, b in zip(d.get("per_label", []), t.get("per_label", [])):
        per_au.append({"au": a.get("au"), "name": a.get("name", ""), "positives": a.get("positives"),
                       "negatives": a.get("negatives"), "f1": a.get("f1"), "auc": _num(a.get("auc")),
                       "precision": a.get("precision"), "recall": a.get("recall"),
                       "threshold": b.get("threshold"), "f1_tuned": b.get("f1")})

    def overall(x):
        return {"macro_f1": (x.get("macro") or {}).get("f1"), "macro_auc": _num((x.get("macro") or {}).get("auc")),
                "micro_f1": (x.get("micro") or {}).get("f1"), "accuracy": x.get("accuracy")}

    slices = metrics.get("slices") or {}
    return {
        "split": metrics.get("split"), "examples": metrics.get("examples"),
        "thresholds": metrics.get("thresholds"),
        "overall": {"at_0.5": overall(d), "at_tuned": overall(t)},
        "per_au": per_au,
        "slices": {k: slices.get(k) for k in ("min_size", "note", "worst", "measured", "too_small", "unavailable")}
        if slices else None,
    }


def build(*, model_name: str, version: str, uri: str, config: dict, metrics: dict, blessing: dict, lineage: dict
          ) -> dict:
    """model_card.json of a version, from the model's model_config.json, the evaluation's metrics.json and
    blessing.json, and what push knows of the run (lineage: source folders, push time, pipeline version, images)."""
    return {
        "format": CARD_FORMAT,
        "model": {"name": model_name, "version": version, "uri": uri, "task": config.get("task"),
                  "backbone": config.get("backbone"), "image_size": config.get("image_size")},
        "detects": {
            "task": config.get("task"),
            "action_units": _aus(config, metrics) if config.get("task") == "au" else [],
            "outputs": config.get("outputs"),
            "note": "A probability per AU; an AU is called active at or above its threshold (tuned for F1 on the "
                    "validation split)." if config.get("task") == "au" else "Valence and arousal in -1..1.",
        },
        "input": {"faces": config.get("faces"), "preprocessing": config.get("preprocessing"),
                  "signature": config.get("signature")},
        "intended_use": list(INTENDED_USE),
        "out_of_scope": list(OUT_OF_SCOPE),
        "training_data": _training_data(config),
        "recipe": config.get("training") or {},
        "metrics": _metrics(metrics),
        "blessing": {k: blessing.get(k) for k in ("blessed", "reasons", "criteria", "baseline")}
        | {"forced": bool(lineage.get("forced"))},
        "lineage": {**lineage, "libraries": config.get("versions"), "trained_at": config.get("created_at")},
    }


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(head: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows])


def render(card: dict) -> str:
    """model_card.md: the card for a person, every section of model_card.json."""
    m, d, data, met = card["model"], card["detects"], card["training_data"], card["metrics"]
    md = [f"# Model card: {m['name']} version {m['version']}", "",
          f"A {m.get('backbone') or 'neural'} network"
          + (f" ({m['image_size']} px input)" if m.get("image_size") else "")
          + f" that detects facial Action Units. Location: `{m['uri']}`.", "", "## What it detects", ""]
    if d["action_units"]:
        md += _table(["AU", "FACS name", "threshold"], [[a["label"], a["name"], a["threshold"]]
                                                          for a in d["action_units"]])
    md += ["", d["note"], "", "## The input it expects", ""]
    faces = card["input"].get("faces") or {}
    if faces:
        md.append("Face settings (predict and the server apply them to every picture): "
                  + ", ".join(f"{k} {v}" for k, v in faces.items()) + ".")
    for k, v in (card["input"].get("preprocessing") or {}).items():
        md.append(f"- {k}: {v}")
    md += ["", "## Intended use", ""] + [f"- {u}" for u in card["intended_use"]]
    md += ["", "## Uses it must not serve", ""] + [f"- {u}" for u in card["out_of_scope"]]
    sheet = data.get("sheet") or {}
    md += ["", "## Training data", "",
           f"- sheet: `{sheet.get('uri') or 'not recorded'}` (sha256 `{sheet.get('sha256') or 'not recorded'}`)",
           f"- examples per split: {', '.join(f'{k} {v}' for k, v in data['splits'].items()) or 'not recorded'}",
           f"- images not downloaded: {_fmt(data.get('download_failures'))}; faces skipped (no usable face): "
           f"{_fmt(data.get('faces_skipped'))}; undecodable: {_fmt(data.get('undecodable'))}",
           f"- unknown labels (999): policy {data.get('policy') or '-'}", ""]
    if data["au_coverage"]:
        md += ["AU coverage, labels over every split:", ""]
        md += _table(["AU", "positive", "negative", "unknown"],
                     [[f"AU{a}", c["positive"], c["negative"], c["unknown"]] for a, c in data["au_coverage"].items()])
    recipe = card["recipe"]
    md += ["", "## Recipe", "", ", ".join(f"{k} {_fmt(v)}" for k, v in recipe.items() if k != "examples") or "-"]
    md += ["", f"## Metrics ({met.get('examples')} {met.get('split')} examples)", ""]
    if "overall" in met:
        o0, ot = met["overall"]["at_0.5"], met["overall"]["at_tuned"]
        md += _table(["thresholds", "macro F1", "macro AUC", "micro F1", "accuracy"],
                     [["0.5", o0["macro_f1"], o0["macro_auc"], o0["micro_f1"], o0["accuracy"]],
                      ["tuned", ot["macro_f1"], ot["macro_auc"], ot["micro_f1"], ot["accuracy"]]])
        md += [""] + _table(["AU", "name", "pos", "neg", "F1@0.5", "AUC", "thr", "F1@thr"],
                            [[f"AU{p['au']}", p["name"], p["positives"], p["negatives"], p["f1"], p["auc"],
                              p["threshold"], p["f1_tuned"]] for p in met["per_au"]])
        slices = met.get("slices")
        if slices:
            md += ["", f"### Per slice (slices of at least {slices['min_size']} test examples)", ""]
            w = slices.get("worst")
            if w:
                md += [f"Worst slice: {w['feature']} = {w['value']} ({w['examples']} examples), macro F1 "
                       f"{_fmt(w['macro_f1'])}.", ""]
            md += _table(["slice", "value", "examples", "F1@0.5", "AUC", "F1@thr"],
                         [[s["feature"], s["value"], s["examples"], s["macro_f1"], s["macro_auc"], s["macro_f1_tuned"]]
                          for s in slices.get("measured") or []])
            small = slices.get("too_small") or []
            if small:
                md += ["", "Too small to measure: " + "; ".join(f"{s['feature']} {s['value']} ({s['examples']})"
                                                              for s in small)]
            md += [f"- {u['feature']}: not sliced, {u['reason']}" for u in slices.get("unavailable") or []]
    else:
        md.append(", ".join(f"{k} {_fmt(v)}" for k, v in met.items() if isinstance(v, (int, float))))
    b = card["blessing"]
    md += ["", "## Blessing", "", f"**{'Blessed' if b.get('blessed') else 'Not blessed'}**"
           + (" (pushed with force)" if b.get("forced") else ""), ""] + [f"- {r}" for r in b.get("reasons") or []]
    md += ["", "## Lineage", ""] + [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}"
                                    for k, v in card["lineage"].items()]
    return "\n".join(md) + "\n"


def write(version_uri: str, card: dict) -> list[str]:
    """Writes model_card.json and model_card.md into a version folder (local or gs://); returns their URIs."""
    json_uri, md_uri = storage.join(version_uri, MODEL_CARD_JSON), storage.join(version_uri, MODEL_CARD_MD)
    storage.write_text(json_uri, json.dumps(card, indent=2, default=str))
    storage.write_text(md_uri, render(card))
    return [json_uri, md_uri]


def read(uri: str, markdown: bool = False):
    """The model card of a version or model folder (dict), or its Markdown (str); ModelCardError naming the file."""
    path = storage.join(uri, MODEL_CARD_MD if markdown else MODEL_CARD_JSON)
    if not storage.exists(path):
        raise ModelCardError(f"{path} does not exist: {uri} was pushed without a model card (or is a model folder "
                             "train wrote, which has none); push it to a registry to get one")
    text = storage.read_text(path)
    if markdown:
        return text
    try:
        return json.loads(text)
    except ValueError as e:
        raise ModelCardError(f"{path} is not valid JSON ({e}); push the model again") from e
