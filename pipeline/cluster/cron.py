"""--cron in each back-end's form: KFP's 6 fields (seconds first) or descriptors, Vertex AI's 5 after an optional TZ=."""
from __future__ import annotations

import re

from pipeline.cluster import ClusterError

_CRON_FIELD = re.compile(r"^[0-9*?/,\-A-Za-z#LW]+$")
_CRON_DESCRIPTOR = re.compile(r"^@(yearly|annually|monthly|weekly|daily|midnight|hourly|every ([0-9]+(\.[0-9]+)?(h|m|s|ms))+)$")


def _check_fields(fields: list[str], cron: str) -> None:
    for f in fields:
        if not _CRON_FIELD.match(f):
            raise ClusterError(f"--cron {cron!r}: field {f!r} is not a cron field (digits, * , - / ? and names)")


def kfp_cron(cron: str) -> str:
    """KFP's cron has a seconds field first (6 fields); a usual 5-field cron gets second 0."""
    text = " ".join(cron.split())
    if text.startswith("@"):
        # The scheduler's own descriptors: @hourly, @daily, @every 6h...
        if not _CRON_DESCRIPTOR.match(text):
            raise ClusterError(f"--cron {cron!r}: expected @hourly, @daily, @weekly, @monthly, @yearly or @every 6h")
        return text
    fields = text.split(" ")
    if len(fields) == 5:
        fields = ["0"] + fields
    if len(fields) != 6:
        raise ClusterError(
            f"--cron {cron!r}: expected 5 fields (minute hour day month weekday, e.g. \"0 3 * * 1\" = Mondays 03:00) "
            "or KFP's 6 (second first, e.g. \"0 0 3 * * 1\")"
        )
    _check_fields(fields, cron)
    return " ".join(fields)


def vertex_cron(cron: str) -> str:
    """Vertex AI schedules take the usual 5 fields, optionally after TZ=Area/City; a 6-field KFP cron loses second 0."""
    text = " ".join(cron.split())
    tz = ""
    if text.startswith(("TZ=", "CRON_TZ=")):
        tz, _, text = text.partition(" ")
    fields = text.split(" ") if text else []
    if len(fields) == 6:
        if fields[0] != "0":
            raise ClusterError(f"--cron {cron!r}: Vertex AI schedules have no seconds field; the first of 6 fields must be 0")
        fields = fields[1:]
    if len(fields) != 5:
        raise ClusterError(f"--cron {cron!r}: expected 5 fields (minute hour day month weekday), optionally after TZ=Area/City")
    _check_fields(fields, cron)
    return " ".join(([tz] if tz else []) + fields)
