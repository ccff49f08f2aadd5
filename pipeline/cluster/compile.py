"""The DAG (or a part of it) compiled to the spec a cluster runs: KFP IR YAML, with the kfp-kubernetes platform spec."""
from __future__ import annotations

import os

from pipeline.platform import ClusterPlatform


def compile_pipeline(pipeline_func, output: str) -> str:
    """Writes the spec of a @dsl.pipeline to `output` (its folder made if missing)."""
    from kfp import compiler

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline_func, package_path=output)
    return output


# The DAGs a cluster runs: the training DAG (pipeline/dag.py) and the annotate DAG (pipeline/annotate_dag.py).
PIPELINES = ("training", "annotate")


def compile_spec(platform: ClusterPlatform, output: str, pipeline: str = "training") -> str:
    """Writes the spec of a DAG of PIPELINES (KFP IR YAML, with the kfp-kubernetes platform spec) for `platform` to
    `output`."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline {pipeline!r}: expected one of {', '.join(PIPELINES)}")
    if pipeline == "annotate":
        from pipeline.annotate_dag import build_annotate_pipeline

        return compile_pipeline(build_annotate_pipeline(platform), output)
    from pipeline.dag import build_pipeline

    return compile_pipeline(build_pipeline(platform), output)
