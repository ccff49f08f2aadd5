"""The flags of the sweep commands (pipeline.py sweep, sweep-submit, sweep-pick): the only module of pipeline.sweep that
reads an argparse Namespace; below it, functions take the grid, the parameters and plain values."""
from __future__ import annotations

import argparse
import sys

from pipeline import defaults
from pipeline.cluster import ClusterError
from pipeline.cluster import cli as cluster_cli
from pipeline.sweep import SweepError, cluster
from pipeline.sweep.grid import parse_grid


def add_grid_arguments(parser) -> None:
    """--grid and --max-points (pipeline.py sweep and sweep-submit)."""
    g = parser.add_argument_group("sweep")
    g.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="A train or evaluate parameter and its values, e.g. --grid batch_size=32,64,128 (repeatable: "
                        "the sweep runs every combination). Data-step parameters (aus, policy, faces...) cannot vary: "
                        "the data steps run once for the whole sweep.")
    g.add_argument("--max-points", type=int, default=defaults.SWEEP_MAX_POINTS, metavar="N",
                   help="Refuse a grid of more points than this (default: %(default)s)")


def given_flags(args: argparse.Namespace) -> dict:
    """The pipeline parameters typed as flags, without those a --preset brings: a grid may vary a preset's value."""
    from pipeline.params import pipeline_arguments

    return pipeline_arguments(argparse.Namespace(**{**vars(args), "preset": None}))


def add_push_argument(parser) -> None:
    """--push (pipeline.py sweep and sweep-pick)."""
    parser.add_argument("--push", choices=defaults.SWEEP_PUSH_MODES, default=defaults.SWEEP_PUSH,
                        help="Which models go to the registry: best (the highest macro F1 at threshold 0.5 on the "
                             "test split, then macro AUC), all (best last, so LATEST names it) or none; each only when "
                             "blessed, unless --force-push (default: %(default)s)")


def add_sweep_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `pipeline.py sweep-submit`: those of submit, the grid, and where the sweep's plan is kept."""
    cluster_cli.add_target_arguments(parser)
    add_grid_arguments(parser)
    parser.add_argument("--run-name", help="Prefix of the runs' names (default: the sweep id, sweep-<UTC time>)")
    parser.add_argument("--data-timeout", type=int, default=defaults.SWEEP_DATA_TIMEOUT, metavar="SECONDS",
                        help="How long to wait for the data run before giving up on starting the points "
                             "(default: %(default)s)")
    parser.add_argument("--runs-dir", default=defaults.RUNS_DIR,
                        help=f"Where the sweep's plan ({defaults.SWEEP_PLAN}) is kept for sweep-pick (default: %(default)s)")


def submit_sweep(args: argparse.Namespace) -> int:
    """`pipeline.py sweep-submit`: checks the flags and the grid before anything is sent, then cluster.submit (the data
    run once, a run per point, the plan). Returns the exit status."""
    try:
        where = cluster_cli.check_target(args)
        if where != "kfp":
            raise ClusterError("sweep-submit starts Kubeflow Pipelines runs (--host); on Vertex AI start each point "
                               "with pipeline.py submit --run-name NAME and the point's flags")
        if args.package:
            raise ClusterError("sweep-submit compiles its own two parts of the DAG (the data steps once, then train, "
                               "evaluate and push per point): give compile.py's flags (--image-cpu, --image-gpu, "
                               "--node-selector...) instead of --package")
        params = cluster_cli.cluster_parameters(args, scheduled=False)
        try:
            grid = parse_grid(args.grid, given_flags(args), args.max_points)
        except SweepError as e:
            raise ClusterError(str(e)) from None
        platform = cluster_cli.platform_from_args(args)
        token = cluster_cli.read_token(args.token_file) if args.token_file else None
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return cluster.submit(cluster_cli.kfp_target(args, token), platform, params, grid, run_prefix=args.run_name,
                          data_timeout=args.data_timeout, runs_dir=args.runs_dir)
