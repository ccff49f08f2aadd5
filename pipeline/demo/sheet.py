"""Writes an EmotioNet-format sheet for a demo set whose URLs point at a running DemoServer, faults in the study's proportions."""
from __future__ import annotations

import csv
import os

import numpy as np

from components.common import labels
from pipeline.demo import faces
from pipeline.demo.generate import load_labels
from pipeline.demo.server import ROUTES, status_class

# The study's failures among 25,000 URLs, by the download step's error_class (contract 2).
STUDY_URLS = 25_000
STUDY_FAILURES = {
    "http_404": 1726,
    "http_4xx": 205,
    "http_5xx": 102,
    "redirect": 20,
    "dns": 500,
    "timeout": 109,
    "connection_reset": 17,
    "connection_refused": 16,
    "tls": 14,
}
# How each class is played: (route, argument) -> weight within the class.
PLAYS = {
    "http_404": {("status", 404): 1.0},
    "http_4xx": {("status", 403): 0.6, ("status", 400): 0.2, ("status", 401): 0.1, ("status", 410): 0.1},
    "http_5xx": {("status", 500): 0.5, ("status", 502): 0.2, ("status", 503): 0.2, ("status", 504): 0.1},
    "redirect": {("loop", None): 0.4, ("chain", 0): 0.4, ("nolocation", None): 0.2},
    "dns": {("dns", None): 1.0},
    "timeout": {("stall", None): 0.7, ("drip", None): 0.3},
    "connection_reset": {("reset", None): 1.0},
    "connection_refused": {("refused", None): 1.0},
    "tls": {("tls", None): 1.0},
}
# What the study's table does not count but the web serves, per sheet row: a few of each.
EXTRAS = {
    ("flaky503", None): 0.01,  # transient: 503 then the image
    ("flaky429", None): 0.005,  # transient: 429 with Retry-After then the image
    ("moved", None): 0.005,  # a benign 301
    ("html", None): 0.0015,  # not_image
    ("truncated", None): 0.0015,  # not_image: a 200 with half an image, only decoding tells
    ("huge", None): 0.0005,  # too_large, announced by Content-Length
    ("hugestream", None): 0.0005,  # too_large, only counting tells
}
# A few URLs carry commas, as CDN URLs do (the sheet must keep them intact).
COMMA_SHARE = 0.01
# The 11 AUs are sometimes not annotated (999): each AU's share is drawn from this range.
UNKNOWN_SHARE = (0.03, 0.08)
# Now and then an annotator marked one of the other 49 AUs absent (0) instead of leaving 999.
OTHER_AU_ANNOTATED = 0.01
DUPLICATE_SHARE = 0.005
# Below this many faces the fault mix keeps only what the proportions give (no minimum of one each).
MIN_ROWS_FOR_EVERY_FAULT = 100


def _counts(n: int, shares: dict, per: float, every: bool) -> dict:
    return {k: max(1 if every else 0, int(round(n * v / per))) for k, v in shares.items()}


def plan_faults(n: int, seed: int, faults: bool = True) -> list[tuple[str, str, object]]:
    """Per image, (expected error_class, route, argument): the study's mix of failures, a few transient
    and odd answers, a few comma URLs, the rest plain. Deterministic from seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EE7]))
    every = n >= MIN_ROWS_FOR_EVERY_FAULT
    plan: list[tuple[str, str, object]] = []
    if faults:
        for cls, count in _counts(n, STUDY_FAILURES, STUDY_URLS, every).items():
            plays = list(PLAYS[cls])
            weights = [PLAYS[cls][p] for p in plays]
            for k, c in enumerate(faces.allocate(count, weights)):
                route, arg = plays[k]
                plan += [(cls if route != "status" else status_class(arg), route, arg)] * c
        for (route, arg), c in _counts(n, EXTRAS, 1.0, every).items():
            expected = ROUTES[route][1]
            plan += [(expected, route, arg)] * c
    plan += [("ok", "cdn", None)] * max(2 if n >= 20 else 0, int(round(n * COMMA_SHARE)))
    if len(plan) > n:
        raise ValueError(f"a demo set of {n} faces is too small for its fault mix ({len(plan)} fault rows); "
                         f"generate at least {len(plan) * 2} faces")
    plan += [("ok", "img", None)] * (n - len(plan))
    order = rng.permutation(n)
    return [plan[i] for i in order]


def write_sheet(demo_dir: str, server, out_path: str, seed: int = 0, valence_arousal: bool = True) -> str:
    """Writes the EmotioNet-format .xlsx of a demo set: no header; URL, AU1..AU60, then valence and arousal.

    URLs point at the running `server` (a DemoServer): with server.faults, ~11% fail in the study's
    proportions, a few fail once then succeed, a few are odd (HTML, truncated, huge); a few URLs
    carry commas; a few rows are duplicated (one with conflicting labels). Beside the sheet,
    <name>.faults.csv lists each row's URL, image, route and the error_class the download step
    should record. Returns out_path.
    """
    import openpyxl

    df = load_labels(demo_dir)
    n = len(df)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EE8]))
    plan = plan_faults(n, seed, faults=server.faults)

    au = df[list(labels.AU_COLUMNS)].to_numpy(dtype=np.int64).copy()
    for au_id in faces.FACE_AU_IDS:
        share = rng.uniform(*UNKNOWN_SHARE)
        au[rng.random(n) < share, au_id - 1] = labels.UNKNOWN
    others = [a for a in labels.ALL_AU_IDS if a not in faces.FACE_AU_IDS]
    for row in np.flatnonzero(rng.random(n) < OTHER_AU_ANNOTATED):
        au[row, others[rng.integers(len(others))] - 1] = labels.NEGATIVE

    rows = []
    for i, (expected, route, arg) in enumerate(plan):
        name = df["name"].iat[i]
        if route == "cdn":
            arg = f"w_{int(df['width'].iat[i])},h_{int(df['height'].iat[i])},c_fill,q_{int(rng.integers(60, 95))}"
        url = server.url(route, name, arg)
        cells = [url] + au[i].tolist()
        if valence_arousal:
            cells += [round(float(df["valence"].iat[i]), 4), round(float(df["arousal"].iat[i]), 4)]
        rows.append({"cells": cells, "name": name, "route": route, "expected": expected, "defect": ""})

    # Real sheets repeat rows: mostly verbatim, once with labels that disagree.
    n_dup = max(2 if n >= 20 else 0, int(round(n * DUPLICATE_SHARE)))
    for k, src in enumerate(rng.choice(n, size=min(n_dup, n), replace=False)):
        copy = dict(rows[src], cells=list(rows[src]["cells"]), defect="duplicate")
        if k == 0 and n >= MIN_ROWS_FOR_EVERY_FAULT:
            col = faces.FACE_AU_IDS[int(rng.integers(len(faces.FACE_AU_IDS)))]  # cells[AU] is that AU's column
            copy["cells"][col] = 1 - copy["cells"][col] if copy["cells"][col] in (0, 1) else 1
            copy["defect"] = "conflicting_duplicate"
        rows.insert(int(rng.integers(src + 1, len(rows) + 1)), copy)

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("EmotioNet")
    for r in rows:
        ws.append(r["cells"])
    tmp = out_path + ".tmp"
    wb.save(tmp)
    os.replace(tmp, out_path)

    truth = fault_table_path(out_path)
    with open(truth + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "url", "name", "route", "expected_class", "defect"])
        for k, r in enumerate(rows, start=1):
            w.writerow([k, r["cells"][0], r["name"], r["route"], r["expected"], r["defect"]])
    os.replace(truth + ".tmp", truth)
    return out_path


def fault_table_path(sheet_path: str) -> str:
    """Where write_sheet puts the per-row truth of a sheet: sheet.xlsx -> sheet.faults.csv."""
    return os.path.splitext(sheet_path)[0] + ".faults.csv"
