"""The push step's one declaration: what it reads and writes, and its parameters."""
import dataclasses

from components.common.params import MODEL_NAME, REGISTRY, Artifact, Param, StepSpec

SPEC = StepSpec(
    name="push",
    description="Copies a blessed model with its metrics and blessing to the registry, then moves LATEST.",
    inputs=(
        Artifact("model", "Folder written by train."),
        Artifact("evaluation", "Folder written by evaluate (blessing.json, metrics.json)."),
    ),
    outputs=(Artifact("pushed", "Folder to write push.json to, the record of what was pushed and where.",
                      flag="--output", required=False),),
    params=(
        # The CLI names the registry it writes: a push to a default folder by mistake is not undone by a rerun.
        dataclasses.replace(REGISTRY.renamed("destination", pipeline="registry"), required=True),
        MODEL_NAME,
        Param("force", bool, False, "Push even when the model is not blessed.", pipeline="force_push"),
        Param("keep", int, 0, "Versions kept in the registry (0 keeps all).", pipeline="keep_versions"),
        Param("infra_validate", bool, True, "Before moving LATEST, start the model in the serving code (a fresh "
              "process) and check its answers to evaluate's canonical requests; a model that fails is not pushed."),
        # CLI only: where the DAG runs in containers (--runner docker, Vertex AI), push runs in the CPU image already,
        # so its subprocess is the image's serving code, and there is no docker in there to start another one with.
        Param("infra_image", str, "", "Run infra validation's server in this Docker image (e.g. "
              "emotionet-au/pipeline-cpu:local, the model mounted read-only) instead of a subprocess here; \"\" = a "
              "subprocess.", pipeline=None, metavar="IMAGE"),
    ),
)
