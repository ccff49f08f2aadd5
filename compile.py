#!/usr/bin/env python
"""Compiles the pipeline to the YAML spec that Kubeflow Pipelines 2.x and Vertex AI Pipelines run.

    python compile.py --output pipeline.yaml \\
        --image-cpu REGISTRY/pipeline-cpu:TAG --image-gpu REGISTRY/pipeline-gpu:TAG \\
        --node-selector cloud.google.com/gke-accelerator=nvidia-tesla-t4 \\
        --toleration nvidia.com/gpu=present:NoSchedule

Without the cluster flags it writes a valid spec with the default images and resources.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.cluster import ClusterError, cli
from pipeline.cluster.compile import PIPELINES, compile_spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python compile.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="pipeline.yaml", help="Where the spec goes (default: %(default)s)")
    parser.add_argument("--pipeline", choices=PIPELINES, default="training",
                        help="Which DAG: training (ingest ... push -> report) or annotate (ingest -> download -> "
                             "annotate, a whole dataset annotated by a pushed model) (default: %(default)s)")
    cli.add_platform_arguments(parser)
    args = parser.parse_args(argv)
    try:
        platform = cli.platform_from_args(args)
    except ClusterError as e:
        print(f"compile.py: {e}", file=sys.stderr)
        return 2
    try:
        compile_spec(platform, args.output, args.pipeline)
    except OSError as e:
        print(f"compile.py: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
