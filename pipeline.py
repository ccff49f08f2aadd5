#!/usr/bin/env python
"""The pipeline's command line: `run` it here (kfp.local), `submit` it to a cluster, `schedule` retraining, or `sweep` a grid."""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys

from pipeline import defaults
from pipeline.params import add_pipeline_parameter_flags, pipeline_arguments

# Pipeline parameters that name local paths: made absolute so every step and the summary agree.
PATH_PARAMETERS = ("source", "download_store", "schema_uri", "registry")


def _absolute(value: str) -> str:
    if not value or "://" in value:
        return value
    return os.path.abspath(value)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="Pipeline root of this run (default: runs/<run-id>/).")
    p.add_argument("--runs-dir", default=defaults.RUNS_DIR, help="Folder holding every local run, the demo set and the registry.")
    p.add_argument("--demo-size", type=int, default=defaults.DEMO_SIZE, help="Images in the demo set generated when --source is not given.")
    p.add_argument("--demo-seed", type=int, default=defaults.DEMO_SEED, help="Seed of the demo set.")
    p.add_argument("--demo-scene", choices=defaults.DEMO_SCENES, default=defaults.DEMO_SCENE,
                   help="Demo images: wild (the face small in a cluttered web photo, some tilted, grey, low-quality "
                        "or partly hidden), portrait (the face fills a square image) or small-faces (the wild "
                        "conditions in 480-1024 px pictures whose face is 10-22%% of the shorter side, as in group "
                        "photos: the face step searches them in tiles).")
    p.add_argument("--verbose", action="store_true",
                   help="Stream every step's full output (the KFP executor's logs) to the console; without it each "
                        "step prints a line as it starts and ends, and its full output is in RUN_DIR/logs/STEP.log.")
    p.add_argument("--demo-faults", action=argparse.BooleanOptionalAction, default=True,
                   help="Serve the demo set with the web's faults (404s, timeouts, DNS, TLS...).")
    p.add_argument("--runner", choices=defaults.RUNNERS, default="local",
                   help="local: each step a subprocess in this environment (kfp.local's SubprocessRunner); docker: each "
                        "step in a container of its image (kfp.local's DockerRunner), as a cluster runs it; build the "
                        "images first with `make images`.")
    p.add_argument("--image-cpu", default=defaults.LOCAL_IMAGE_CPU, metavar="IMG",
                   help="With --runner docker: the image of the data steps (default: %(default)s, as make images tags it).")
    p.add_argument("--image-gpu", default=defaults.LOCAL_IMAGE_GPU, metavar="IMG",
                   help="With --runner docker: the image of train and evaluate (default: %(default)s).")
    add_pipeline_parameter_flags(p)


def _local_arguments(args: argparse.Namespace, command: str) -> dict | None:
    """The pipeline arguments of a local run or sweep: the registry under --runs-dir unless given, local paths made
    absolute; without --source (the demo set) the demo preset under any other preset and the flags; None (the reason
    printed) when --source names a file that is not there."""
    arguments = pipeline_arguments(args)
    if not arguments.get("source"):
        # The pipeline's own defaults are the recipe for real photos on a GPU; the demo world has 2 cores, no internet.
        arguments = {**defaults.PRESETS[defaults.DEMO_PRESET], **arguments}
    arguments.setdefault("registry", os.path.join(args.runs_dir, "registry"))
    for name in PATH_PARAMETERS:
        if name in arguments:
            arguments[name] = _absolute(arguments[name])
    if arguments.get("source") and "://" not in arguments["source"] and not os.path.exists(arguments["source"]):
        print(f"pipeline.py {command}: --source {arguments['source']} does not exist; give the EmotioNet sheet (.xlsx or "
              f".csv) or leave --source out to {command} on the generated demo set", file=sys.stderr)
        return None
    return arguments


def command_run(args: argparse.Namespace) -> int:
    from pipeline.local import format_summary, run_pipeline, write_summary

    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(args.run_dir or os.path.join(args.runs_dir, run_id))
    arguments = _local_arguments(args, "run")
    if arguments is None:
        return 2
    containers = None
    if args.runner == "docker":
        from pipeline import containers as images

        try:
            images.check_docker()
            for kind, tag in (("cpu", args.image_cpu), ("gpu", args.image_gpu)):
                for warning in images.check_image(tag, kind):
                    print(f"warning: {warning}", file=sys.stderr)
        except images.ContainerError as e:
            print(f"pipeline.py run --runner docker: {e}", file=sys.stderr)
            return 2
        containers = images.ContainerRun(args.image_cpu, args.image_gpu, os.getuid(), os.getgid(), dict(os.environ))
    os.makedirs(run_dir, exist_ok=True)
    print(f"run {run_id}: pipeline root {run_dir}"
          + (f"; each step in its container ({args.image_cpu}, {args.image_gpu})" if containers else ""), flush=True)

    if arguments.get("source"):
        result = run_pipeline(arguments, run_dir, verbose=args.verbose, containers=containers)
    else:
        result = _run_on_demo(args, arguments, run_dir, containers)
    print()
    print(format_summary(result))
    write_summary(result)
    _print_outcome(result)
    from pipeline.local import write_report

    print(f"\nrun report: {write_report(result)}")
    if containers is not None:
        from pipeline.containers import CONTAINERS_FILE

        print(f"each step's image, command, network and mounts: {os.path.join(run_dir, CONTAINERS_FILE)}")
    if not result.ok:
        print(f"\nthe run failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def _run_on_demo(args, arguments: dict, run_dir: str, containers=None):
    """Generates (or reuses) the demo set, serves it on loopback, runs the DAG on it, stops the server."""
    from pipeline.local import run_pipeline

    with _serving_demo(args, arguments, run_dir):
        return run_pipeline(arguments, run_dir, verbose=args.verbose, containers=containers)


@contextlib.contextmanager
def _serving_demo(args, arguments: dict, run_dir: str):
    """Generates (or reuses) the demo set and serves it on loopback while the block runs, arguments["source"]
    set to a sheet pointing at it (in run_dir); the server stops whatever happens."""
    from pipeline import demo

    demo_dir = os.path.abspath(os.path.join(args.runs_dir, "demo",
                                            f"size{args.demo_size}-seed{args.demo_seed}-{args.demo_scene}"))
    print(f"demo set: {args.demo_size} synthetic faces ({args.demo_scene} scenes) in {demo_dir}", flush=True)
    demo.generate_demo(demo_dir, args.demo_size, args.demo_seed, scene=args.demo_scene)
    arguments.setdefault("download_timeout", defaults.DEMO_DOWNLOAD_TIMEOUT)
    with demo.DemoServer(demo_dir, faults=args.demo_faults, seed=args.demo_seed) as server:
        sheet = demo.write_sheet(demo_dir, server, os.path.join(run_dir, "demo_sheet.xlsx"), seed=args.demo_seed)
        print(f"demo server: {server.base_url}; sheet: {sheet}", flush=True)
        arguments["source"] = sheet
        yield sheet


def _print_outcome(result) -> None:
    """What convert made of the faces, the per-AU table of the evaluation and where the model went, when those ran."""
    from components.common.evaluation import METRICS_FILE
    from components.common.examples import EXAMPLES_SUMMARY_FILE
    from components.common.registry import PUSH_FILE

    converted = result.output_path("convert", "examples")
    if converted and os.path.exists(os.path.join(converted, EXAMPLES_SUMMARY_FILE)):
        from components.common.faces import format_counters

        with open(os.path.join(converted, EXAMPLES_SUMMARY_FILE)) as f:
            print("\nfaces: " + format_counters(json.load(f)["counters"]))
    evaluation = result.output_path("evaluate", "evaluation")
    if evaluation and os.path.exists(os.path.join(evaluation, METRICS_FILE)):
        from components.common.metric_tables import format_table

        with open(os.path.join(evaluation, METRICS_FILE)) as f:
            print("\n" + format_table(json.load(f)))
    pushed = result.output_path("push", "pushed")
    if pushed and os.path.exists(os.path.join(pushed, PUSH_FILE)):
        with open(os.path.join(pushed, PUSH_FILE)) as f:
            record = json.load(f)
        if record["pushed"]:
            print(f"\nmodel pushed to {record['uri']}")
        else:
            print(f"\nmodel NOT pushed: {'; '.join(record['reasons'])}")


def add_images_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", choices=("cpu", "gpu"), help="Build one image (default: both).")
    p.add_argument("--tag-cpu", default=defaults.LOCAL_IMAGE_CPU, metavar="IMG", help="Tag of the CPU image (default: %(default)s).")
    p.add_argument("--tag-gpu", default=defaults.LOCAL_IMAGE_GPU, metavar="IMG", help="Tag of the GPU image (default: %(default)s).")
    p.add_argument("--base", metavar="IMG",
                   help="Build both on this base image instead of the Dockerfiles' public ones (or the stand-in).")
    p.add_argument("--log-dir", default=os.path.join(defaults.RUNS_DIR, "images"),
                   help="Where each image's full build output goes (default: %(default)s).")


def command_images(args: argparse.Namespace) -> int:
    """Builds the images (make images): on the public bases where they can be pulled, else on a stand-in from Debian."""
    from pipeline import containers

    kinds = [args.only] if args.only else ["cpu", "gpu"]
    tags = {kind: getattr(args, f"tag_{kind}") for kind in kinds}
    try:
        built = containers.build_images(tags, os.environ, args.log_dir, base=args.base)
    except containers.ContainerError as e:
        print(f"pipeline.py images: {e}", file=sys.stderr)
        return 1
    for b in built:
        print(f"{b.kind}: {b.tag} on {b.base}{' (stand-in base)' if b.standin else ''}, {b.seconds:.0f}s")
    print("run the DAG in them: python pipeline.py run --runner docker")
    return 0


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `pipeline.py sweep`: those of run (the sweep folder is --run-dir), the grid, and which models to push."""
    from pipeline.sweep.cli import add_grid_arguments, add_push_argument

    add_run_arguments(p)
    add_grid_arguments(p)
    add_push_argument(p)


def command_sweep(args: argparse.Namespace) -> int:
    """The data steps once, then train -> evaluate per grid point, one after another; the comparison; the push."""
    from pipeline.sweep import SweepError
    from pipeline.sweep.cli import given_flags
    from pipeline.sweep.grid import grid_points, parse_grid
    from pipeline.sweep.local import run_local

    if getattr(args, "runner", "local") != "local":
        print("pipeline.py sweep: a sweep runs its steps as subprocesses here (--runner local); run the grid's points "
              "one by one with pipeline.py run --runner docker", file=sys.stderr)
        return 2
    try:
        grid = parse_grid(args.grid, given_flags(args), args.max_points)
    except SweepError as e:
        print(f"pipeline.py sweep: {e}", file=sys.stderr)
        return 2
    arguments = _local_arguments(args, "sweep")
    if arguments is None:
        return 2
    sweep_id = "sweep-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sweep_dir = os.path.abspath(args.run_dir or os.path.join(args.runs_dir, sweep_id))
    os.makedirs(sweep_dir, exist_ok=True)
    points = grid_points(grid)
    print(f"sweep {sweep_id}: {len(points)} points ({', '.join(f'{k} x{len(v)}' for k, v in grid.items())}) "
          f"in {sweep_dir}", flush=True)
    with contextlib.ExitStack() as stack:
        if not arguments.get("source"):
            stack.enter_context(_serving_demo(args, arguments, sweep_dir))
        record = run_local(arguments, grid, sweep_dir, push=args.push, verbose=args.verbose)
    print(f"\ncomparison: {record['comparison']['markdown']}; loss curves: {record['comparison']['loss_curves']}")
    if not record["ok"]:
        print(f"\nthe sweep did not finish every run: {record['error']}", file=sys.stderr)
        return 1
    return 0


def add_sweep_pick_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.sweep.cli import add_push_argument

    p.add_argument("sweep_dir", help=f"The folder sweep-submit wrote (it holds {defaults.SWEEP_PLAN}); the comparison "
                                     "goes there too.")
    add_push_argument(p)
    p.add_argument("--force-push", action=argparse.BooleanOptionalAction, default=None,
                   help="Push even a model that is not blessed (default: as the sweep was submitted)")


def command_sweep_pick(args: argparse.Namespace) -> int:
    """Reads each run's model and evaluation from its candidate registry, compares them, pushes the best."""
    from pipeline.sweep.cluster import pick

    path = os.path.join(args.sweep_dir, defaults.SWEEP_PLAN)
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        print(f"pipeline.py sweep-pick: {path} cannot be read ({e}); give the folder that pipeline.py sweep-submit "
              "printed", file=sys.stderr)
        return 2
    record = pick(plan, args.sweep_dir, push=args.push, force=args.force_push)
    print(f"\ncomparison: {record['comparison']['markdown']}; loss curves: {record['comparison']['loss_curves']}")
    return 0 if record["ok"] else 1


def main(argv=None) -> int:
    # The steps are subprocesses of this one: keep their logs to what a user needs (TensorFlow's
    # C++ banner and the Google client libraries' Python-version notices are neither).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    parser = argparse.ArgumentParser(prog="python pipeline.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="Run the whole DAG on this machine (kfp.local); without --source, on the demo set "
                           "with the demo's recipe (--preset demo).")
    add_run_arguments(p_run)
    p_sweep = sub.add_parser("sweep", help="Run the data steps once, then train and evaluate each point of a "
                             "grid here, compare them and push the best.")
    add_sweep_arguments(p_sweep)
    from pipeline.cluster import cli as cluster_cli
    from pipeline.sweep import cli as sweep_cli

    p_submit = sub.add_parser("submit", help="Submit one run to a KFP host or Vertex AI Pipelines.")
    cluster_cli.add_submit_arguments(p_submit)
    p_schedule = sub.add_parser("schedule", help="Create a recurring (scheduled) retraining run.")
    cluster_cli.add_schedule_arguments(p_schedule)
    p_sweep_submit = sub.add_parser("sweep-submit", help="On a KFP host: the data steps once (a data run), then "
                                    "one train -> evaluate -> push run per grid point, together, in one experiment.")
    sweep_cli.add_sweep_submit_arguments(p_sweep_submit)
    p_sweep_pick = sub.add_parser("sweep-pick", help="Compare the finished runs of a sweep-submit and push the best.")
    add_sweep_pick_arguments(p_sweep_pick)
    p_images = sub.add_parser("images", help="Build the CPU and GPU images (docker/) that steps run in.")
    add_images_arguments(p_images)
    from pipeline import annotate_cli

    p_annotate = sub.add_parser("annotate", help="Annotate every image of a sheet (ingest -> download -> annotate) "
                                "or a folder with a pushed model, here (kfp.local).")
    annotate_cli.add_arguments(p_annotate)
    from components.serve import __main__ as serve_cli

    p_serve = sub.add_parser("serve", help="Serve a pushed model over HTTP (python -m components.serve).")
    serve_cli.add_arguments(p_serve, os.environ)
    from pipeline import deploy

    p_deploy = sub.add_parser("deploy", help="Serve a pushed version: a KServe InferenceService manifest and/or "
                              "Vertex AI (Model Registry upload, endpoint).")
    deploy.add_arguments(p_deploy)
    args = parser.parse_args(argv)
    if args.command == "deploy":
        return deploy.command(args)
    if args.command == "serve":
        return serve_cli.run(args)
    if args.command == "run":
        return command_run(args)
    if args.command == "sweep":
        return command_sweep(args)
    if args.command == "sweep-submit":
        return sweep_cli.submit_sweep(args)
    if args.command == "sweep-pick":
        return command_sweep_pick(args)
    if args.command == "annotate":
        return annotate_cli.command(args)
    if args.command == "images":
        return command_images(args)
    if args.command == "submit":
        return cluster_cli.submit(args)
    return cluster_cli.schedule(args)


if __name__ == "__main__":
    sys.exit(main())
