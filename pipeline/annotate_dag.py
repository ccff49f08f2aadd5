"""The annotate DAG: ingest -> download -> annotate, a whole dataset annotated by a pushed model; and its form for a
folder of images, whose listing is the manifest (no ingest, no download)."""
from __future__ import annotations

from kfp import dsl

from components.annotate import params as annotate_params
from components.annotate.component import annotate
from components.download import params as download_params
from components.download.component import download
from components.ingest import params as ingest_params
from components.ingest.component import ingest
from pipeline import defaults
from pipeline.dag import dag_parameters, with_declared_signature
from pipeline.platform import Platform

# Step name -> the KFP component, in DAG order (the tasks' names in the spec).
STEPS = {"ingest": ingest, "download": download, "annotate": annotate}
SPECS = {"ingest": ingest_params.SPEC, "download": download_params.SPEC, "annotate": annotate_params.SPEC}
SUMMARY = "Annotates every image of an EmotioNet-format sheet with a pushed Action Unit model."
IMAGES_SUMMARY = "Annotates every image of a folder with a pushed Action Unit model."


def build_annotate_pipeline(platform: "Platform | None" = None):
    """The @dsl.pipeline ingest -> download -> annotate; `platform` sets images and resources per step."""
    platform = platform or Platform()
    params = dag_parameters(SPECS)

    def annotate_pipeline(*values):
        given = dict(zip(params, values))

        def args(step: str) -> dict:
            return {p.name: given[p.dag_name] for p in SPECS[step].dag_params}

        ingest_task = ingest(**args("ingest"))
        download_task = download(manifest=ingest_task.outputs["manifest"], **args("download"))
        annotate_task = annotate(manifest=ingest_task.outputs["manifest"],
                                 downloads=download_task.outputs["downloads"], **args("annotate"))
        for step, task in (("ingest", ingest_task), ("download", download_task), ("annotate", annotate_task)):
            platform.configure(step, task)

    with_declared_signature(annotate_pipeline, params, SUMMARY)
    return dsl.pipeline(name=defaults.ANNOTATE_PIPELINE_NAME,
                        description=defaults.ANNOTATE_PIPELINE_DESCRIPTION)(annotate_pipeline)


def build_images_pipeline(listing_uri: str, platform: "Platform | None" = None):
    """annotate alone on a folder's listing (components.annotate.listing.write_manifest wrote it to listing_uri):
    the listing comes in through a dsl.importer, as the manifest and as the folder the images are read from."""
    platform = platform or Platform()
    params = dag_parameters({"annotate": SPECS["annotate"]})

    def annotate_images_pipeline(*values):
        given = dict(zip(params, values))
        listing = dsl.importer(artifact_uri=listing_uri, artifact_class=dsl.Dataset, reimport=False)
        task = annotate(manifest=listing.output, downloads=listing.output,
                        **{p.name: given[p.dag_name] for p in SPECS["annotate"].dag_params})
        platform.configure("annotate", task)

    with_declared_signature(annotate_images_pipeline, params, IMAGES_SUMMARY)
    return dsl.pipeline(name=defaults.ANNOTATE_PIPELINE_NAME + "-images",
                        description=IMAGES_SUMMARY)(annotate_images_pipeline)


annotate_pipeline = build_annotate_pipeline()
