"""The convert step's one declaration: what it reads and writes, and its parameters (the face settings included)."""
from components.common.faces import FACE_PARAMS
from components.common.params import BEAM_ARGS, Artifact, Param, StepSpec

SPEC = StepSpec(
    name="convert",
    description="Converts the downloaded images and their labels to train/validation/test TFRecord shards, finding, "
                "levelling and cropping each face (Apache Beam; locally Beam's FnApiRunner on every core).",
    inputs=(
        Artifact("manifest", "Folder written by ingest (or its manifest.parquet)."),
        Artifact("downloads", "Folder written by download."),
    ),
    outputs=(Artifact("examples", "Folder with the TFRecord shards and examples_summary.json (local or gs://).",
                      flag="--output"),),
    params=(
        Param("validation_fraction", float, 0.15, "Share of images in the validation split."),
        Param("test_fraction", float, 0.15, "Share of images in the test split."),
        Param("max_side", int, 0, "Longest image side after resizing in convert (0 keeps the size)."),
        BEAM_ARGS,
        *FACE_PARAMS,
    ),
)
# A shard holds about this many bytes of images (the TFRecord guideline is 100-200 MB).
SHARD_BYTES = 150 * 1000 * 1000
# Work is cut into parts of at most this many bytes so every core stays busy even when a split has a single shard;
# the parts of a shard are concatenated into it at the end.
PART_BYTES = 32 * 1000 * 1000
MIN_PARTS = 16
