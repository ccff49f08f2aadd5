"""The faces CLI's one declaration: the images it reads, the crops it writes, and the face settings convert uses."""
from components.common.faces import FACE_PARAMS
from components.common.params import Artifact, StepSpec

SPEC = StepSpec(
    name="faces",
    description="Finds the largest face of each image (MediaPipe BlazeFace), turns it so the eyes are level and "
                "crops it with a margin: what convert does to every training image, and predict to a new one.",
    # flag "-": the images are the CLI's positional arguments (build_parser adds them), not a --flag.
    inputs=(Artifact("images", "Image files (local or gs://), any format Pillow reads.", flag="-"),),
    outputs=(Artifact("output", "Folder for the crops, <name>.face.jpg (default: none written).", required=False),),
    # Every face setting but --faces: this CLI always crops (--faces whole would only copy the images).
    params=tuple(p for p in FACE_PARAMS if p.name != "faces"),
)
