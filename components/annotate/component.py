"""KFP wrapper of the annotate step: manifest + downloads + a pushed model in, sharded annotation Parquet out (Beam)."""
from kfp import dsl

from components.annotate.params import SPEC
from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def annotate(
    manifest: dsl.Input[dsl.Dataset],
    downloads: dsl.Input[dsl.Dataset],
    annotations: dsl.Output[dsl.Dataset],
    model: str,
    which_faces: str,
    threshold: float,
    batch_size: int,
    beam_args: str,
):
    from components.annotate import logic
    from components.common.errors import refusals
    from components.common.storage import artifact_location

    with refusals("annotate"):
        summary = logic.run(
            manifest_dir=artifact_location(manifest, beam_args),
            downloads_dir=artifact_location(downloads, beam_args),
            output_dir=artifact_location(annotations, beam_args),
            model=model,
            which_faces=which_faces,
            threshold=threshold,
            batch_size=batch_size,
            beam_args=beam_args,
        )
    print(logic.format_summary(summary))
    counts = summary["counts"]
    annotations.metadata.update({"model_version": summary["model"]["version"] or "", "images": counts["images"],
                                 "faces": counts["faces"], "no_face": counts["no_face"], "bad": counts["bad"]})
