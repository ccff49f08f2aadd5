"""KFP wrapper of the convert step: images + labels to sharded TFRecords (Apache Beam)."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
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
    """Converts the downloaded images and their labels to train/validation/test TFRecord shards
    (Apache Beam; locally Beam's FnApiRunner on every core).

    Args:
        manifest: Folder written by ingest (or its manifest.parquet).
        downloads: Folder written by download.
        examples: Folder with the TFRecord shards and examples_summary.json (local or gs://).
        validation_fraction: Share of images in the validation split.
        test_fraction: Share of images in the test split.
        max_side: Longest image side after resizing (0 keeps the size).
        beam_args: Apache Beam pipeline options, e.g. "--runner=DataflowRunner --project=P" ("" for the local runner).
        faces: crop (find the largest face, level its eyes, crop it) or whole (the whole picture).
        no_face: What to do with an image in which no face is found: skip or whole.
        face_size: Side of the square face crop, in pixels.
        face_margin: Added on each side of the face box, as a share of its side.
        face_min_score: Detector confidence needed to call it a face (0..1).
    """
    from components.common.faces import FaceSettings, face_counters
    from components.common.storage import artifact_location
    from components.convert import logic

    summary = logic.run(
        manifest_dir=artifact_location(manifest, beam_args),
        downloads_dir=artifact_location(downloads, beam_args),
        output_dir=artifact_location(examples, beam_args),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        max_side=max_side,
        beam_args=beam_args,
        faces=FaceSettings(mode=faces, no_face=no_face, size=face_size, margin=face_margin, min_score=face_min_score),
        progress=True,  # progress lines: the local console draws its bar from them
    )
    # The face counts by reason, on the examples artifact in the UI (and in examples_summary.json).
    examples.metadata.update({"faces": faces, "no_face": no_face, **face_counters(summary["counters"])})
