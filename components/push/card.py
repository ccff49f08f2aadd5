"""The model card push writes into every version (components.common.model_card), from what push can reach: the
model's model_config.json, the evaluation's metrics.json and blessing.json, and the push itself."""
from __future__ import annotations

import socket

from components.common import evaluation, images
from components.common import model as model_contract
from components.common import model_card


def pipeline_version() -> str | None:
    """The installed pipeline package's version (setup.py), None when run from a tree that is not installed."""
    from importlib import metadata

    try:
        return metadata.version("emotionet-au-pipeline")
    except metadata.PackageNotFoundError:
        return None


def write_card(model_dir: str, evaluation_dir: str, blessing: dict, model_name: str, version: str, version_uri: str,
               previous: str | None, pushed_at: str, forced: bool = False) -> list[str]:
    """Builds the version's model card and writes model_card.json and model_card.md into it; returns their URIs."""
    try:
        config = model_contract.read_model_config(model_dir)
        metrics = evaluation.read_metrics(evaluation_dir)
    except (model_contract.ModelError, evaluation.EvaluationError) as e:
        from components.push.logic import PushError

        raise PushError(f"the model card cannot be made: {e}") from e
    lineage = {
        # The run is where its model and evaluation were written (a KFP artifact's URI holds the run's id).
        "source_model": model_dir,
        "source_evaluation": evaluation_dir,
        "pushed_at": pushed_at,
        "previous_version": previous,
        "forced": forced,
        "pipeline_version": pipeline_version(),
        "images": {"cpu": images.CPU_IMAGE, "gpu": images.GPU_IMAGE},
        "host": socket.gethostname(),
    }
    card = model_card.build(model_name=model_name, version=version, uri=version_uri, config=config, metrics=metrics,
                            blessing=blessing, lineage=lineage)
    return model_card.write(version_uri, card)
