"""`pipeline.py annotate`: a sheet's images (ingest -> download -> annotate) or a folder's, annotated by a pushed model
here through kfp.local; the annotations end up in --output."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from pipeline import defaults

# Pipeline parameters that name local paths: made absolute so every step and the summary agree.
PATH_PARAMETERS = ("source", "download_store", "model")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `pipeline.py annotate`: where things go, and every parameter of the annotate DAG."""
    from pipeline.annotate_dag import annotate_pipeline
    from pipeline.params import add_pipeline_parameter_flags

    p.add_argument("--output", metavar="DIR",
                   help="Folder or gs:// prefix the annotations (annotations-*.parquet, annotate_summary.json) are "
                        "copied to at the end (default: they stay in the run folder, which is printed).")
    p.add_argument("--run-dir", help="Pipeline root of this run (default: runs/annotate-<time>/).")
    p.add_argument("--runs-dir", default=defaults.RUNS_DIR,
                   help="Folder holding every local run (default: %(default)s).")
    p.add_argument("--verbose", action="store_true",
                   help="Stream every step's full output to the console; without it each step prints a line as it "
                        "starts and ends, and its full output is in RUN_DIR/logs/STEP.log.")
    add_pipeline_parameter_flags(p, annotate_pipeline, presets=False)
    p.epilog = ("--source takes an EmotioNet-format sheet (.xlsx or .csv: ingest and download run first; a rerun with "
                "the same --download-store fetches nothing twice), or a folder or gs:// prefix of images (its "
                "listing is the manifest: no ingest, no download, no labels). --model takes a registry model root "
                "(<registry>/<model_name>, whose LATEST is followed), a pushed version or a model folder.")


def _absolute(value: str) -> str:
    return value if not value or "://" in value else os.path.abspath(value)


def command(args: argparse.Namespace) -> int:
    """Runs the annotate DAG (or annotate alone on a folder's listing) here; prints the figures. Exit status 0 when
    it finished, 1 when a step failed, 2 for bad arguments."""
    from components.annotate import listing
    from components.common import annotations, registry, storage
    from pipeline.annotate_dag import STEPS, annotate_pipeline, build_images_pipeline
    from pipeline.local import format_summary, run_pipeline, write_summary
    from pipeline.params import pipeline_arguments

    arguments = pipeline_arguments(args, annotate_pipeline)
    for name in PATH_PARAMETERS:
        if arguments.get(name):
            arguments[name] = _absolute(arguments[name])
    source, model = arguments.get("source", ""), arguments.get("model", "")
    if not source or not model:
        print("pipeline.py annotate: give --source (a sheet, a folder of images or a gs:// prefix) and --model (a "
              "registry model root, a pushed version or a model folder)", file=sys.stderr)
        return 2
    if "://" not in source and not os.path.exists(source):
        print(f"pipeline.py annotate: --source {source} does not exist; give a sheet (.xlsx or .csv) or a folder of "
              "images", file=sys.stderr)
        return 2
    try:  # before any step runs: a model URI without LATEST is named now, not after the download
        model_dir, version = registry.resolve_model(model)
    except registry.RegistryError as e:
        print(f"pipeline.py annotate: --model {model}: {e}", file=sys.stderr)
        return 2
    run_id = "annotate-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(args.run_dir or os.path.join(args.runs_dir, run_id))
    os.makedirs(run_dir, exist_ok=True)
    print(f"run {run_id}: pipeline root {run_dir}; model {model_dir} (version {version or '-'})", flush=True)
    if listing.is_listing_source(source):
        listing_dir = os.path.join(run_dir, "listing")
        try:
            listed = listing.write_manifest(source, listing_dir)
        except listing.ListingError as e:
            print(f"pipeline.py annotate: {e}", file=sys.stderr)
            return 2
        print(f"{listed['images']} images listed under {source}"
              + (f" ({listed['skipped']} other files left out)" if listed["skipped"] else ""), flush=True)
        pipeline_func, steps = build_images_pipeline(listing_dir), ("annotate",)
        names = {p.dag_name for p in _annotate_params()}
        arguments = {k: v for k, v in arguments.items() if k in names}
    else:
        pipeline_func, steps = annotate_pipeline, tuple(STEPS)
    result = run_pipeline(arguments, run_dir, pipeline_func=pipeline_func, verbose=args.verbose, steps=steps)
    print()
    print(format_summary(result))
    write_summary(result)
    if not result.ok:
        print(f"\nthe run failed: {result.error}", file=sys.stderr)
        return 1
    from components.annotate.logic import format_summary as format_annotations

    folder = result.output_path("annotate", "annotations")
    print("\n" + format_annotations(annotations.read_summary(folder)))
    if args.output:
        output = _absolute(args.output)
        annotations.remove_shards(output)  # an earlier run's shards would mix with these
        # The summary last, as annotate writes it: a folder without it is a copy that did not finish.
        for path in annotations.shard_files(folder) + [os.path.join(folder, annotations.SUMMARY_FILE)]:
            storage.upload_file(path, storage.join(output, os.path.basename(path)))
        folder = output
    print(f"\nannotations: {folder}")
    return 0


def _annotate_params():
    from components.annotate.params import SPEC

    return SPEC.dag_params
