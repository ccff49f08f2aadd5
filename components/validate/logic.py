"""TFDV statistics, schema and anomalies of the manifest's labels joined with the download ledger (the validate step)."""
from __future__ import annotations

import html
import io
import json
import os
import re

import numpy as np
import pandas as pd

from components.common import labels, storage
from components.common.errors import StepRefusal
from components.common.ledger import ERROR_CLASSES, LEDGER_FILE, STATUSES
from components.common.manifest import MANIFEST_FILE, is_sheet_column
from components.common.validation import (ANOMALIES_FILE, ANOMALIES_JSON_FILE, SCHEMA_FILE, STATISTICS_FILE,
                                          STATISTICS_HTML_FILE, VALIDATION_SUMMARY_FILE)
from components.validate.params import DRIFT_THRESHOLD, MAX_FAILURE_RATE_RISE, SPEC

# Beside a kept schema X.pbtxt: X.statistics.pb, the statistics of the last run that passed.
KEPT_STATISTICS_SUFFIX = ".statistics.pb"

# Ledger columns that describe the downloaded image; they only mean something where status is ok.
IMAGE_FEATURES = ("format", "width", "height", "bytes")
INT_IMAGE_FEATURES = ("width", "height", "bytes")
LEDGER_FEATURES = ("status", "error_class") + IMAGE_FEATURES
# 1 where the image is not available to convert (download failed, or the ledger has no row for it).
FAILED = "failed"
_AU_COLUMN = re.compile(r"^AU\d+$")
_AU_VALUE_LABELS = tuple(str(v) for v in labels.VALID_LABELS)
AU_DOMAIN_CHECK = "AU values other than 0, 1, 999"
FAILURE_RATE_CHECK = "Download failure rate rose"


def _feature_order(name: str) -> tuple:
    """AU1, AU2, ..., AU60, then the other features by name."""
    return (0, int(name[2:]), "") if _AU_COLUMN.match(name) else (1, 0, name)


class ValidateError(StepRefusal, ValueError):
    """The inputs cannot be validated (a missing or unreadable file); the message says which and what to do."""


class AnomaliesFound(ValidateError):
    """The data has more anomalies than allowed; every output is written before this is raised."""


# ------------------------------------------------------------------------------------------ inputs


def _input_file(path: str, filename: str, what: str, hint: str) -> str:
    """The parquet file of a step's output: `path` itself when it names a .parquet file, else path/filename."""
    uri = path if str(path).endswith(".parquet") else storage.join(path, filename)
    if not path or not storage.exists(uri):
        raise ValidateError(f"{what}: {uri} does not exist; expected {hint}")
    return uri


def _read_parquet(uri: str, what: str, skip=None) -> pd.DataFrame:
    """The table at uri, less the columns `skip(name)` is true of."""
    try:
        data = io.BytesIO(storage.read_bytes(uri))
        if skip is None:
            return pd.read_parquet(data)
        import pyarrow.parquet as pq

        columns = [c for c in pq.read_schema(data).names if not skip(c)]
        data.seek(0)
        return pd.read_parquet(data, columns=columns)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise ValidateError(f"{what}: {uri} is not a readable parquet file ({e})") from None


def _as_int(series: pd.Series) -> pd.Series:
    """Whole numbers as nullable Int64, so one null (a failed download) does not turn a column into FLOAT."""
    if pd.api.types.is_integer_dtype(series.dtype) or not pd.api.types.is_numeric_dtype(series.dtype):
        return series
    values = series.dropna()
    if len(values) and not np.all(np.mod(values.to_numpy(dtype=float), 1) == 0):
        return series  # not whole numbers: the schema's INT type reports it
    return series.astype("Int64")


def _as_str(series: pd.Series) -> pd.Series:
    """Text with None for missing, which pyarrow turns into absent values."""
    return series.astype(object).where(series.notna(), None).map(lambda v: v if v is None else str(v))


def build_frame(manifest: pd.DataFrame, ledger: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per manifest image: its AU labels, valence/arousal, and its ledger row; plus the join's counts.

    Image metadata (format, width, height, bytes) is kept only where the download is ok, and
    `failed` is 1 where the image cannot be converted, so its mean is the failure rate.
    """
    ledger_dupes = int(ledger["key"].duplicated().sum())
    # A ledger has one row per key (contract 2); where it has more, its last row is the latest attempt.
    ledger = ledger.drop_duplicates("key", keep="last")
    au_cols = [c for c in manifest.columns if _AU_COLUMN.match(str(c))]
    au_cols.sort(key=lambda c: int(c[2:]))
    va_cols = [c for c in labels.VA_COLUMNS if c in manifest.columns]
    led_cols = [c for c in LEDGER_FEATURES if c in ledger.columns]
    frame = manifest[["key"] + au_cols + va_cols].merge(
        ledger[["key"] + led_cols], on="key", how="left", indicator=True, validate="many_to_one"
    )
    in_ledger = (frame.pop("_merge") == "both").to_numpy()
    counts = {
        "not_in_ledger": int((~in_ledger).sum()),
        "ledger_only": int((~ledger["key"].isin(manifest["key"])).sum()),
        "duplicate_ledger_keys": ledger_dupes,
        "duplicate_manifest_keys": int(manifest["key"].duplicated().sum()),
    }
    for c in ("status", "error_class", "format"):
        if c in frame:
            frame[c] = _as_str(frame[c])
    if "status" in frame:
        ok = (frame["status"] == "ok").to_numpy()
        frame[FAILED] = (~ok).astype(np.int64)
        for c in IMAGE_FEATURES:
            if c in frame:
                frame[c] = frame[c].where(ok, None)
    for c in au_cols + [c for c in INT_IMAGE_FEATURES if c in frame]:
        frame[c] = _as_int(frame[c])
    return frame.drop(columns=["key"]), counts


# ------------------------------------------------------------------------------------------ schema


def kept_paths(schema_uri: str) -> tuple[str, str]:
    """(schema file, statistics file) of a kept schema: a .pbtxt file, or a folder holding schema.pbtxt."""
    if schema_uri.endswith(".pbtxt") or (not storage.is_gcs(schema_uri) and os.path.isfile(schema_uri)):
        schema_file = schema_uri
    else:
        schema_file = storage.join(schema_uri, SCHEMA_FILE)
    stem = schema_file[: -len(".pbtxt")] if schema_file.endswith(".pbtxt") else schema_file
    return schema_file, stem + KEPT_STATISTICS_SUFFIX


def _feature(schema, name: str, ftype):
    for f in schema.feature:
        if f.name == name:
            return f
    return schema.feature.add(name=name, type=ftype)


def _require(feature, everywhere: bool) -> None:
    """Present in every image (everywhere) or in at least one (columns only filled where a download is ok)."""
    feature.presence.min_count = 1
    if everywhere:
        feature.presence.min_fraction = 1.0
    else:
        feature.presence.ClearField("min_fraction")
        feature.ClearField("shape")  # a fixed shape would make every failed download a missing value
        feature.value_count.min = 1
        feature.value_count.max = 1


def _set_string_domain(schema, feature, values) -> None:
    feature.ClearField("domain")
    feature.string_domain.ClearField("value")
    feature.string_domain.value.extend(values)


def _inferred_strings(schema, feature) -> list[str]:
    kind = feature.WhichOneof("domain_info")
    if kind == "string_domain":
        return list(feature.string_domain.value)
    if kind == "domain":
        for d in schema.string_domain:
            if d.name == feature.domain:
                return list(d.value)
    return []


def tighten_schema(schema, frame: pd.DataFrame, drift_threshold: float) -> None:
    """Adds what inference cannot know: the AU and contract-2 domains, required columns and drift comparators."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    for name in labels.AU_COLUMNS + tuple(c for c in frame.columns if _AU_COLUMN.match(c) and c not in labels.AU_COLUMNS):
        f = _feature(schema, name, schema_pb2.INT)
        f.type = schema_pb2.INT
        f.ClearField("domain")
        # Categorical: statistics then count each of 0/1/999, so a prevalence shift is a shift in those counts.
        f.int_domain.CopyFrom(schema_pb2.IntDomain(min=0, max=labels.UNKNOWN, is_categorical=True))
        _require(f, everywhere=True)
        f.drift_comparator.infinity_norm.threshold = drift_threshold
    for name, values in (("status", STATUSES), ("error_class", ERROR_CLASSES)):
        f = _feature(schema, name, schema_pb2.BYTES)
        _set_string_domain(schema, f, values)
        _require(f, everywhere=True)
    f = _feature(schema, FAILED, schema_pb2.INT)
    f.int_domain.CopyFrom(schema_pb2.IntDomain(min=0, max=1))
    _require(f, everywhere=True)
    # The formats seen on the first run; a new one (say tiff) is then an anomaly to look at.
    f = _feature(schema, "format", schema_pb2.BYTES)
    seen = _inferred_strings(schema, f)
    if "format" in frame:
        seen = sorted(set(seen) | set(frame["format"].dropna().unique()))
    _set_string_domain(schema, f, seen)
    _require(f, everywhere=False)
    for name in INT_IMAGE_FEATURES:
        f = _feature(schema, name, schema_pb2.INT)
        f.int_domain.CopyFrom(schema_pb2.IntDomain(min=1))
        _require(f, everywhere=False)
    used = {f.domain for f in schema.feature if f.WhichOneof("domain_info") == "domain"}
    keep = [d for d in schema.string_domain if d.name in used]
    del schema.string_domain[:]
    schema.string_domain.extend(keep)


def _load_kept_schema(schema_file: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    try:
        return text_format.Parse(storage.read_text(schema_file), schema_pb2.Schema())
    except Exception as e:
        raise ValidateError(
            f"kept schema {schema_file} is not a readable Schema in text format ({e}); "
            "fix it, or delete it to infer a new one on the next run"
        ) from None


def _load_kept_statistics(stats_file: str):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    try:
        return statistics_pb2.DatasetFeatureStatisticsList.FromString(storage.read_bytes(stats_file))
    except Exception as e:
        raise ValidateError(
            f"kept statistics {stats_file} are not readable ({e}); delete the file and the next run keeps new ones"
        ) from None


# ------------------------------------------------------------------------------------------ statistics


def _statistics(frame: pd.DataFrame, schema=None):
    import tensorflow_data_validation as tfdv

    return tfdv.generate_statistics_from_dataframe(frame, tfdv.StatsOptions(schema=schema))


def _feature_stats(stats, name: str):
    if not stats or not stats.datasets:
        return None
    for f in stats.datasets[0].features:
        if list(f.path.step) == [name] or f.name == name:
            return f
    return None


def _custom_checks(stats, previous, max_failure_rate_rise: float):
    """TFDV custom validations: the exact AU value set, and the failure rate's rise against the previous run."""
    from tensorflow_data_validation.anomalies.proto import custom_validation_config_pb2 as cv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    config = cv.CustomValidationConfig()
    allowed = ", ".join(f"'{v}'" for v in _AU_VALUE_LABELS)
    for f in stats.datasets[0].features:
        name = f.path.step[0] if f.path.step else f.name
        if not _AU_COLUMN.match(name) or not f.HasField("string_stats"):
            continue
        # `unique` bounds the rank histogram, so the NOT EXISTS sees every distinct value.
        check = config.feature_validations.add()
        check.feature_path.step.append(name)
        check.validations.add(
            sql_expression=(
                f"feature.string_stats.unique <= {len(_AU_VALUE_LABELS)} AND NOT EXISTS (SELECT 1 FROM "
                f"UNNEST(feature.string_stats.rank_histogram.buckets) AS b WHERE b.label NOT IN ({allowed}))"
            ),
            severity=anomalies_pb2.AnomalyInfo.ERROR,
            description=AU_DOMAIN_CHECK,
        )
    current, base = _feature_stats(stats, FAILED), _feature_stats(previous, FAILED)
    if current is not None and base is not None and current.HasField("num_stats") and base.HasField("num_stats"):
        pair = config.feature_pair_validations.add()
        pair.feature_test_path.step.append(FAILED)
        pair.feature_base_path.step.append(FAILED)
        pair.validations.add(
            sql_expression=f"feature_test.num_stats.mean - feature_base.num_stats.mean <= {max_failure_rate_rise!r}",
            severity=anomalies_pb2.AnomalyInfo.ERROR,
            description=FAILURE_RATE_CHECK,
        )
    return config


def _examples(manifest: pd.DataFrame, mask: np.ndarray, limit: int = 3) -> str:
    """The first few images under mask, by sheet row and URL, for a message."""
    rows = manifest[mask].head(limit)
    parts = []
    for _, r in rows.iterrows():
        where = f"row {int(r['row'])}" if "row" in r and pd.notna(r["row"]) else f"key {r['key']}"
        parts.append(f"{where} ({r['url']})" if "url" in r else where)
    more = int(mask.sum()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _explain(anomalies, frame: pd.DataFrame, manifest: pd.DataFrame, stats, previous, max_failure_rate_rise) -> None:
    """Replaces the SQL text of the custom checks' descriptions with what was found and where, in place."""
    for name, info in anomalies.anomaly_info.items():
        for reason in info.reason:
            if reason.short_description == AU_DOMAIN_CHECK and name in frame:
                values = frame[name]
                bad = (~values.isin(labels.VALID_LABELS) & values.notna()).to_numpy()
                seen = sorted({str(v) for v in values[bad].unique()})
                reason.description = (
                    f"{name} holds {', '.join(seen)} in {int(bad.sum())} images, expected 0, 1 or 999 only: "
                    f"{_examples(manifest, bad)}"
                )
            elif reason.short_description == FAILURE_RATE_CHECK:
                now, before = _feature_stats(stats, FAILED).num_stats.mean, _feature_stats(previous, FAILED).num_stats.mean
                reason.description = (
                    f"The download failure rate rose from {before:.1%} on the previous run to {now:.1%}, "
                    f"more than the {max_failure_rate_rise * 100:g} percentage points allowed; download_summary.json has the error classes"
                )
        # TFDV says "Multiple errors" where a feature has several; naming each reads better in a log.
        info.short_description = "; ".join(r.short_description for r in info.reason)
        info.description = "; ".join(r.description.strip() for r in info.reason)


def anomaly_records(anomalies) -> list[dict]:
    """Anomalies as plain dicts: feature, short_description, description, types (TFDV's reason names)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    names = anomalies_pb2.AnomalyInfo.Type.Name
    out = []
    for name in sorted(anomalies.anomaly_info, key=_feature_order):
        info = anomalies.anomaly_info[name]
        out.append({
            "feature": name,
            "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
            "short_description": info.short_description,
            "description": info.description,
            "types": [names(r.type) for r in info.reason],
        })
    if anomalies.HasField("dataset_anomaly_info") and anomalies.dataset_anomaly_info.reason:
        info = anomalies.dataset_anomaly_info
        out.append({
            "feature": "(dataset)",
            "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
            "short_description": info.short_description,
            "description": info.description,
            "types": [names(r.type) for r in info.reason],
        })
    return out


def _drift_records(anomalies) -> list[dict]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    out = []
    for info in anomalies.drift_skew_info:
        for m in info.drift_measurements:
            out.append({
                "feature": "/".join(info.path.step),
                "measure": anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(m.type),
                "value": round(float(m.value), 6),
                "threshold": float(m.threshold),
            })
    return sorted(out, key=lambda d: _feature_order(d["feature"]))


# ------------------------------------------------------------------------------------------ summary


def _counts(frame: pd.DataFrame, ledger: pd.DataFrame, join_counts: dict) -> dict:
    images = len(frame)
    ok = int((frame["status"] == "ok").sum()) if "status" in frame else 0
    summary = {
        "images": images,
        "ledger_rows": len(ledger),
        **join_counts,
        "ok": ok,
        "failed": int((frame["status"] == "failed").sum()) if "status" in frame else 0,
        "failure_rate": round(1 - ok / images, 6) if images else 0.0,
        "error_classes": {},
        "formats": {},
        "au": {},
    }
    if "error_class" in frame:
        summary["error_classes"] = {str(k): int(v) for k, v in frame["error_class"].value_counts().sort_index().items()}
    if "format" in frame:
        summary["formats"] = {str(k): int(v) for k, v in frame["format"].value_counts().sort_index().items()}
    for c in frame.columns:
        if not _AU_COLUMN.match(c):
            continue
        v = frame[c]
        pos, neg, unk = int((v == labels.POSITIVE).sum()), int((v == labels.NEGATIVE).sum()), int((v == labels.UNKNOWN).sum())
        summary["au"][c] = {
            "positive": pos,
            "negative": neg,
            "unknown": unk,
            "other": int(v.notna().sum()) - pos - neg - unk,
            "prevalence": round(pos / (pos + neg), 6) if pos + neg else None,
        }
    return summary


def format_summary(summary: dict) -> str:
    """A few lines for the log: images, downloads, prevalence of the default AUs, each anomaly."""
    lines = [
        f"validate: {summary['images']} images, {summary['ok']} downloaded, failure rate {summary['failure_rate']:.1%}",
        f"schema: {summary['schema']['origin']}",
    ]
    prev = [
        f"AU{i} {summary['au'][f'AU{i}']['prevalence']:.1%}"
        for i in labels.DEFAULT_AU_IDS
        if f"AU{i}" in summary["au"] and summary["au"][f"AU{i}"]["prevalence"] is not None
    ]
    if prev:
        lines.append("prevalence (positive / annotated): " + "  ".join(prev))
    lines.append(f"anomalies: {summary['anomaly_count']} (at most {summary['max_anomalies']} allowed)")
    for a in summary["anomalies"]:
        lines.append(f"  {a['feature']}: {a['short_description']}: {a['description']}")
    return "\n".join(lines)


def _html(summary: dict, stats, previous) -> str:
    from tensorflow_data_validation.utils import display_util

    esc = html.escape
    parts = [
        "<html><head><meta charset='utf-8'><title>Validation</title></head><body>",
        f"<h2>Validation: {summary['anomaly_count']} anomalies "
        f"({'passed' if summary['passed'] else 'stopped'}: at most {summary['max_anomalies']} allowed)</h2>",
        f"<p>{summary['images']} images, {summary['ok']} downloaded, failure rate {summary['failure_rate']:.1%}. "
        f"Schema: {esc(summary['schema']['origin'])}.</p>",
    ]
    if summary["anomalies"]:
        parts.append(pd.DataFrame(summary["anomalies"])[["feature", "short_description", "description"]].to_html(index=False))
    if summary["drift"]:
        parts.append("<h3>Drift against the previous run</h3>")
        parts.append(pd.DataFrame(summary["drift"]).sort_values("value", ascending=False, kind="stable").to_html(index=False))
    parts.append("<h3>Statistics" + (" (current against previous run)" if previous is not None else "") + "</h3>")
    if previous is not None:
        parts.append(display_util.get_statistics_html(stats, previous, lhs_name="current", rhs_name="previous"))
    else:
        parts.append(display_util.get_statistics_html(stats, lhs_name="current"))
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ the step


def run(
    manifest_dir: str,
    downloads_dir: str,
    output_dir: str,
    html_path: str = "",
    schema_uri: str = SPEC.defaults.schema_uri,
    max_anomalies: int = SPEC.defaults.max_anomalies,
    drift_threshold: float = DRIFT_THRESHOLD,
    max_failure_rate_rise: float = MAX_FAILURE_RATE_RISE,
) -> dict:
    """Validates manifest + ledger against the schema kept at schema_uri (inferred and kept there when absent).

    Writes statistics.pb, schema.pbtxt, anomalies.pbtxt, anomalies.json, validation_summary.json
    and statistics.html into output_dir (and the HTML to html_path when given). When there are
    more than max_anomalies anomalies it raises AnomaliesFound after writing them; otherwise it
    keeps this run's statistics beside the schema, for the next run's drift checks.
    """
    if max_anomalies < 0:
        raise ValidateError(f"max_anomalies is {max_anomalies}; expected 0 or more")
    manifest_uri = _input_file(manifest_dir, MANIFEST_FILE, "manifest", "the ingest step's output folder (manifest.parquet) or the file itself")
    ledger_uri = _input_file(downloads_dir, LEDGER_FILE, "downloads", "the download step's output folder (images/, ledger.parquet); run `python -m components.download` first")
    # The sheet's own text columns (contract 1) are no label and no image fact: not loaded, not in the statistics.
    manifest = _read_parquet(manifest_uri, "manifest", skip=is_sheet_column)
    ledger = _read_parquet(ledger_uri, "downloads")
    for table, uri, step in ((manifest, manifest_uri, "ingest"), (ledger, ledger_uri, "download")):
        if "key" not in table.columns:
            raise ValidateError(f"{uri} has no `key` column (its columns: {', '.join(map(str, table.columns))}); expected the {step} step's output")
    if manifest.empty:
        raise ValidateError(f"{manifest_uri} has no rows; there is nothing to validate")
    if "status" in ledger.columns and not (ledger["status"] == "ok").any():
        # TFDV would only say "Column dropped" for every image feature; the cause is the download.
        classes = ledger["error_class"].value_counts().head(3) if "error_class" in ledger.columns else None
        top = ", ".join(f"{c} {n}" for c, n in classes.items()) if classes is not None else "see its ledger"
        raise ValidateError(
            f"{ledger_uri}: none of its {len(ledger)} URLs gave an image ({top}), so there is nothing to validate; "
            "fix what download reports and rerun it"
        )
    frame, join_counts = build_frame(manifest, ledger)

    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format

    schema_file, kept_stats_file = kept_paths(schema_uri) if schema_uri else ("", "")
    previous = None
    if schema_file and storage.exists(schema_file):
        schema = _load_kept_schema(schema_file)
        inferred = False
        if storage.exists(kept_stats_file):
            previous = _load_kept_statistics(kept_stats_file)
        try:
            stats = _statistics(frame, schema)
        except Exception as e:  # an edited schema TFDV cannot use
            raise ValidateError(f"kept schema {schema_file} cannot be used ({e}); fix it, or delete it to infer a new one") from None
    else:
        # Statistics are computed again with the tightened schema: its categorical AUs get value counts.
        schema = tfdv.infer_schema(_statistics(frame))
        tighten_schema(schema, frame, drift_threshold)
        stats = _statistics(frame, schema)
        inferred = True

    anomalies = tfdv.validate_statistics(
        stats, schema, previous_statistics=previous,
        custom_validation_config=_custom_checks(stats, previous, max_failure_rate_rise),
    )
    _explain(anomalies, frame, manifest, stats, previous, max_failure_rate_rise)
    records = anomaly_records(anomalies)
    passed = len(records) <= max_anomalies
    if not inferred:
        origin = f"kept at {schema_file}"
    elif not schema_file:
        origin = "inferred from this run (not kept: no schema_uri)"
    elif passed:
        origin = f"inferred from this run and kept at {schema_file}"
    else:
        origin = f"inferred from this run, not kept at {schema_file} (too many anomalies)"

    summary = {
        "manifest": manifest_uri,
        "ledger": ledger_uri,
        **_counts(frame, ledger, join_counts),
        "schema": {"uri": schema_file, "inferred": inferred, "kept": bool(schema_file) and (passed or not inferred), "origin": origin},
        "previous_statistics": kept_stats_file if previous is not None else "",
        "anomaly_count": len(records),
        "max_anomalies": max_anomalies,
        "passed": passed,
        "anomalies": records,
        "drift": _drift_records(anomalies),
    }
    page = _html(summary, stats, previous)
    storage.write_bytes(storage.join(output_dir, STATISTICS_FILE), stats.SerializeToString())
    storage.write_text(storage.join(output_dir, SCHEMA_FILE), text_format.MessageToString(schema))
    storage.write_text(storage.join(output_dir, ANOMALIES_FILE), text_format.MessageToString(anomalies))
    storage.write_text(storage.join(output_dir, ANOMALIES_JSON_FILE), json.dumps(records, indent=2) + "\n")
    storage.write_text(storage.join(output_dir, STATISTICS_HTML_FILE), page)
    if html_path:
        storage.write_text(html_path, page)
    # Only data that passed becomes the baseline: a rejected run must not move what the next is compared to.
    if schema_file and passed:
        if inferred:
            storage.write_text(schema_file, text_format.MessageToString(schema))
        storage.write_bytes(kept_stats_file, stats.SerializeToString())
    storage.write_text(storage.join(output_dir, VALIDATION_SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary))

    if not passed:
        names = "; ".join(f"{a['feature']}: {a['short_description']}" for a in records)
        if inferred:  # a fresh schema only adds the contracts' rules, so the data breaks a contract
            where = "fix the data (or the step that wrote it)"
        else:
            where = f"edit the kept schema {schema_file} (or delete it and {kept_stats_file} to infer new ones)"
        raise AnomaliesFound(
            f"{len(records)} anomalies, more than the {max_anomalies} allowed (max_anomalies): {names}. "
            f"Details in {storage.join(output_dir, ANOMALIES_JSON_FILE)} and "
            f"{storage.join(output_dir, STATISTICS_HTML_FILE)}. "
            f"If the change is expected, {where}, or raise max_anomalies."
        )
    return summary
