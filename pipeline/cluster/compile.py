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


def compile_spec(platform: ClusterPlatform, output: str) -> str:
    """Writes the pipeline spec (KFP IR YAML, with the kfp-kubernetes platform spec) for `platform` to `output`."""
    from pipeline.dag import build_pipeline

    return compile_pipeline(build_pipeline(platform), output)
