"""The annotate step's one declaration: what it reads and writes, and its parameters."""
from components.common.inference import WHICH_FACES
from components.common.params import BEAM_ARGS, Artifact, Param, StepSpec

SPEC = StepSpec(
    name="annotate",
    description="Annotates every image of a dataset with a pushed model: each face's box and AU probabilities, one "
                "row per image and face in sharded Parquet, and a summary with the agreement with the sheet's "
                "labels (Apache Beam RunInference; locally Beam's FnApiRunner on every core).",
    inputs=(
        Artifact("manifest", "Folder written by ingest (manifest.parquet; AU labels optional), or one made from a "
                             "folder's listing.", required=False),
        Artifact("downloads", "Folder written by download (images/, ledger.parquet); for a listing's manifest, "
                              "whose urls are the images' paths, that manifest's folder again.", required=False),
    ),
    outputs=(Artifact("annotations", "Folder with annotations-<i>-of-<n>.parquet and annotate_summary.json (local "
                                     "or gs://).", flag="--output"),),
    params=(
        Param("model", str, "", "The model: a registry model root (its LATEST is followed), a pushed version folder "
              "or a model folder, local or gs://.", required=True),
        Param("which_faces", str, "all", "Score every face of an image, or only its largest (as convert crops for "
              "training).", choices=WHICH_FACES),
        Param("threshold", float, 0.0, "One threshold for every AU's active flag (0: the model's per-AU thresholds "
              "tuned on validation, else 0.5).", pipeline="annotate_threshold"),
        Param("batch_size", int, 32, "Images per batch of RunInference, and faces per call of the model.",
              pipeline="annotate_batch_size"),
        BEAM_ARGS,
    ),
)
# An images-per-shard target: a shard of this many images is ~10 MB of Parquet with the 11 AUs.
IMAGES_PER_SHARD = 50_000
# Locally a Beam worker process costs seconds to start (Beam, TensorFlow, the model): one per this many images, at
# most one per core; a run that needs only one scores in the step's own process.
IMAGES_PER_WORKER = 500
# A file this big is no photograph (a 100-megapixel JPEG is ~30 MB): refused before it is read into memory.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
