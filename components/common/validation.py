"""The validation folder: the file names of what validate writes (TFDV statistics, schema, anomalies, summary, page)."""

STATISTICS_FILE = "statistics.pb"  # DatasetFeatureStatisticsList, binary
SCHEMA_FILE = "schema.pbtxt"  # also the name of a kept schema inside a --schema-uri folder
ANOMALIES_FILE = "anomalies.pbtxt"
ANOMALIES_JSON_FILE = "anomalies.json"
VALIDATION_SUMMARY_FILE = "validation_summary.json"
STATISTICS_HTML_FILE = "statistics.html"
