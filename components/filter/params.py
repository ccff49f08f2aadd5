"""The filter step's one declaration: what it reads and writes, and its parameters."""
from components.common.params import BEAM_ARGS, Artifact, Param, StepSpec

# drop: an example with 999 in a kept AU is left out (the study's choice); mask: kept, training ignores the unknown
# labels; zero: 999 becomes 0 (the study's first attempt, to reproduce it).
POLICIES = ("drop", "mask", "zero")

SPEC = StepSpec(
    name="filter",
    task="filter-examples",
    description="Keeps the chosen Action Units in every example and applies the policy for 999.",
    inputs=(Artifact("examples", "Folder written by convert."),),
    outputs=(Artifact("filtered", "Folder with the filtered TFRecord shards and examples_summary.json.",
                      flag="--output"),),
    params=(
        Param("aus", str, "1,2,4,5,6,9,12,17,20,25,26", 'Comma-separated AU numbers to keep, e.g. '
              '"1,2,4,5,6,9,12,17,20,25,26".'),
        # mask keeps every image: with drop an image with 999 in any of the 11 AUs is lost, about 40% of the demo set.
        Param("policy", str, "mask", "What to do with 999 (not annotated) in a kept AU: drop, mask or zero.",
              choices=POLICIES),
        BEAM_ARGS,
    ),
)
