"""The validate step's one declaration: what it reads and writes, and its parameters."""
from components.common.params import Artifact, Param, StepSpec

SPEC = StepSpec(
    name="validate",
    description="Computes statistics of the labels and image metadata with TensorFlow Data Validation, infers or "
                "reads the schema, and stops the run on anomalies.",
    inputs=(
        Artifact("manifest", "Folder written by ingest (manifest.parquet), or that file itself."),
        Artifact("downloads", "Folder written by download (ledger.parquet)."),
    ),
    outputs=(
        Artifact("validation", "Folder with statistics, schema, anomalies and validation_summary.json.",
                 flag="--output"),
        Artifact("statistics_view", "TFDV's HTML view of the statistics and anomalies.", flag="-"),
    ),
    params=(
        Param("schema_uri", str, "", 'Where the TFDV schema is kept between runs (local or gs://; "" to infer each '
              "run).", flag="--schema"),
        Param("max_anomalies", int, 0, "Most data anomalies tolerated before validate stops the run."),
    ),
)
# A freshly inferred schema gets this drift threshold; later runs read it from the kept schema (drift_comparator of
# each AU feature), where it can be edited.
DRIFT_THRESHOLD = 0.1  # L-infinity distance of an AU's 0/1/999 shares vs the previous run
MAX_FAILURE_RATE_RISE = 0.1  # download failure rate may rise this much (0.1 = 10 points)
