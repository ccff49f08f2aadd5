"""KFP wrapper of the convert step: images + labels to sharded TFRecords (Apache Beam)."""
from kfp import dsl

from components.common import images
from components.convert.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def convert(
    manifest: dsl.Input[dsl.Dataset],
    downloads: dsl.Input[dsl.Dataset],
    examples: dsl.Output[dsl.Dataset],
    validation_fraction: float,
    test_fraction: float,
    max_side: int,
    beam_args: str,
    faces: str,
    no_face: str,
    face_size: int,
    face_margin: float,
    face_min_score: float,
):
    from components.common.errors import refusals
    from components.common.faces import FaceSettings, face_counters
    from components.common.storage import artifact_location
    from components.convert import logic

    with refusals("convert"):
        summary = logic.run(
            manifest_dir=artifact_location(manifest, beam_args),
            downloads_dir=artifact_location(downloads, beam_args),
            output_dir=artifact_location(examples, beam_args),
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            max_side=max_side,
            beam_args=beam_args,
            faces=FaceSettings(mode=faces, no_face=no_face, size=face_size, margin=face_margin,
                               min_score=face_min_score),
            progress=True,  # progress lines: the local console draws its bar from them
        )
    # The face counts by reason, on the examples artifact in the UI (and in examples_summary.json).
    examples.metadata.update({"faces": faces, "no_face": no_face, **face_counters(summary["counters"])})
