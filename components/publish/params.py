"""The publish step's one declaration (a cluster sweep's shared examples): what it reads and writes."""
from components.common.params import Artifact, Param, StepSpec

SPEC = StepSpec(
    name="publish",
    description="Copies a step's output folder to a fixed URI, for later runs that import it from there.",
    inputs=(Artifact("source", "The folder to copy (a cluster sweep's filtered examples)."),),
    params=(
        Param("destination", str, "", "Where it goes, a local folder or gs:// prefix; published.json is written "
              "there last.", required=True),
    ),
)
