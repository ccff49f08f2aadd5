"""The blessing (pure): the headline numbers a model is judged on, and the judgement against the thresholds and the
live model."""
from __future__ import annotations

import math
from typing import Sequence


def _fmt(x) -> str:
    return "undefined" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def headline(metrics: dict) -> dict:
    """The numbers a blessing compares: macro F1 and AUC at threshold 0.5 (AU), mean CCC (VA)."""
    if metrics["task"] == "va":
        return {"mean_ccc": metrics["mean_ccc"], "mean_mse": metrics["mean_mse"]}
    d = metrics["at_default"]
    return {"macro_f1": d["macro"]["f1"], "macro_auc": d["macro"]["auc"], "micro_f1": d["micro"]["f1"],
            "accuracy": d["accuracy"]}


def judge(
    candidate: dict,
    baseline: dict | None,
    task: str,
    min_macro_f1: float,
    min_macro_auc: float,
    tolerance: float,
    notes: Sequence[str] = (),
) -> dict:
    """Blessed when the absolute thresholds hold and the candidate is not worse than the live model by more than tolerance.

    candidate / baseline: `headline` numbers; baseline None judges on the thresholds alone.
    notes: what was found about the live model; they open the reasons.
    Returns {"blessed", "reasons", "checks"}: one reason per check, passed or not.
    """
    checks = []

    def check(name, passed, value, limit, text):
        checks.append({"check": name, "passed": bool(passed), "value": value, "limit": limit})
        reasons.append(("pass: " if passed else "fail: ") + text)

    reasons: list[str] = list(notes)
    if task == "va":
        reasons.append("valence/arousal model: the F1 and AUC thresholds do not apply; judged on CCC against the live model")
        if baseline is not None:
            c, b = candidate["mean_ccc"], baseline["mean_ccc"]
            ok = not _nan(c) and (_nan(b) or c >= b - tolerance)
            check("live_mean_ccc", ok, c, None if _nan(b) else b - tolerance,
                  f"mean CCC {_fmt(c)} vs the live model's {_fmt(b)} (tolerance {tolerance})")
    else:
        f1, auc = candidate["macro_f1"], candidate["macro_auc"]
        check("min_macro_f1", not _nan(f1) and f1 >= min_macro_f1, f1, min_macro_f1,
              f"macro F1 {_fmt(f1)} {'>=' if not _nan(f1) and f1 >= min_macro_f1 else '<'} minimum {min_macro_f1}")
        if _nan(auc):
            check("min_macro_auc", False, None, min_macro_auc,
                  "macro AUC is undefined: no AU has both classes among the known test labels")
        else:
            check("min_macro_auc", auc >= min_macro_auc, auc, min_macro_auc,
                  f"macro AUC {_fmt(auc)} {'>=' if auc >= min_macro_auc else '<'} minimum {min_macro_auc}")
        if baseline is not None:
            bf1, bauc = baseline["macro_f1"], baseline["macro_auc"]
            ok = _nan(bf1) or (not _nan(f1) and f1 >= bf1 - tolerance)
            check("live_macro_f1", ok, f1, None if _nan(bf1) else bf1 - tolerance,
                  f"macro F1 {_fmt(f1)} vs the live model's {_fmt(bf1)}: "
                  + ("not worse by more than" if ok else "worse by more than") + f" the tolerance {tolerance}")
            if not _nan(bauc):
                ok = not _nan(auc) and auc >= bauc - tolerance
                check("live_macro_auc", ok, auc, bauc - tolerance,
                      f"macro AUC {_fmt(auc)} vs the live model's {_fmt(bauc)}: "
                      + ("not worse by more than" if ok else "worse by more than") + f" the tolerance {tolerance}")
    if baseline is None and not notes:
        reasons.append("no live model to compare with: judged on the thresholds alone")
    blessed = all(c["passed"] for c in checks)
    return {"blessed": blessed, "reasons": reasons, "checks": checks}


def judge_slices(slices: dict | None, live: dict | None, min_slice_macro_f1: float, slice_tolerance: float) -> dict:
    """The slice checks of a blessing: the worst slice against the floor, each slice against the live model's.

    slices: metrics.json's "slices" (components.evaluate.slices.slice_metrics); live: {(feature, value): the live
    model's macro F1 at 0.5 on that slice}, None without a live model. Returns {"reasons", "checks"} as judge does;
    each reason names the slice and its figures.
    """
    checks, reasons = [], []
    measured = [m for m in (slices or {}).get("measured", []) if not _nan(m.get("macro_f1"))]
    if not measured:
        if slices is not None:
            reasons.append(f"no slice of at least {slices.get('min_size')} test examples has a macro F1: the slice "
                           "checks do not apply")
        return {"reasons": reasons, "checks": checks}

    def name(m):
        return f"slice {m['feature']} = {m['value']} ({m['examples']} examples)"

    worst = min(measured, key=lambda m: (m["macro_f1"], m["examples"]))
    below = sorted((m for m in measured if m["macro_f1"] < min_slice_macro_f1), key=lambda m: m["macro_f1"])
    passed = not below
    checks.append({"check": "min_slice_macro_f1", "passed": passed, "value": worst["macro_f1"],
                   "limit": min_slice_macro_f1, "slice": {"feature": worst["feature"], "value": worst["value"]}})
    if passed:
        reasons.append(f"pass: worst {name(worst)}: macro F1 {_fmt(worst['macro_f1'])} >= slice minimum "
                       f"{min_slice_macro_f1}")
    else:
        shown = "; ".join(f"{name(m)}: macro F1 {_fmt(m['macro_f1'])}" for m in below[:5])
        more = f"; and {len(below) - 5} more" if len(below) > 5 else ""
        reasons.append(f"fail: {len(below)} slice(s) below the slice minimum macro F1 {min_slice_macro_f1}: "
                       f"{shown}{more}")
    if live is not None:
        drops = []
        for m in measured:
            b = live.get((m["feature"], m["value"]))
            if not _nan(b):
                drops.append((m["macro_f1"] - b, m, b))
        if drops:
            fell = sorted((d for d in drops if d[0] < -slice_tolerance), key=lambda d: d[0])
            d, m, b = min(drops, key=lambda d: d[0])
            checks.append({"check": "live_slice_macro_f1", "passed": not fell, "value": m["macro_f1"],
                           "limit": b - slice_tolerance, "slice": {"feature": m["feature"], "value": m["value"]}})
            if not fell:
                reasons.append(f"pass: no slice's macro F1 is worse than the live model's by more than the slice "
                               f"tolerance {slice_tolerance} (largest fall: {name(m)}, {_fmt(m['macro_f1'])} vs "
                               f"{_fmt(b)})")
            else:
                shown = "; ".join(f"{name(m)}: macro F1 {_fmt(m['macro_f1'])} vs the live model's {_fmt(b)} "
                                  f"({d:+.4f})" for d, m, b in fell[:5])
                more = f"; and {len(fell) - 5} more" if len(fell) > 5 else ""
                reasons.append(f"fail: {len(fell)} slice(s) worse than the live model's by more than the slice "
                               f"tolerance {slice_tolerance}: {shown}{more}")
    return {"reasons": reasons, "checks": checks}
