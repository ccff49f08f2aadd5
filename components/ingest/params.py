"""The ingest step's one declaration: what it reads and writes, and its parameters."""
from components.common.params import Artifact, Param, StepSpec

SPEC = StepSpec(
    name="ingest",
    description="Reads an EmotioNet-format sheet, checks every row and writes the manifest.",
    outputs=(Artifact("manifest", "Folder with manifest.parquet, rejects.csv and ingest_summary.json.", flag="--output"),),
    params=(
        # No default sheet: `pipeline.py run` without --source makes and serves the demo set; a compiled pipeline is
        # given the sheet's gs:// URI when the run is created.
        Param("source", str, "", "The sheet (.xlsx or .csv, EmotioNet layout: URL then AU1..AU60), a local path or "
              "gs:// URI.", required=True),
    ),
)
