"""The report step's one declaration: what it reads and writes."""
from components.common.params import Artifact, Param, StepSpec

# The report's inputs, in DAG order: each the output of one step (the artifact's name, the DAG's task that wrote it;
# the page names each step by its task, as a local run's report does).
REPORT_INPUTS = (("manifest", "ingest"), ("downloads", "download"), ("validation", "validate"),
                 ("examples", "convert"), ("filtered", "filter-examples"), ("model", "train"),
                 ("evaluation", "evaluate"), ("pushed", "push"))

SPEC = StepSpec(
    name="report",
    description="Writes the run report: one self-contained HTML page of the run's outputs, shown in the KFP UI.",
    inputs=tuple(Artifact(name, f"Folder written by {step}.") for name, step in REPORT_INPUTS),
    outputs=(Artifact("page", "The run report (HTML, images inlined).", flag="--output"),),
    params=(
        Param("run_name", str, "", "The run's name on the page (default: the output's grandparent folder).",
              pipeline=None),
    ),
)
