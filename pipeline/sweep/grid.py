"""The grid of a sweep: --grid NAME=V1,V2 parsed and typed as the DAG's parameters, the rules of what may vary, its points."""
from __future__ import annotations

import dataclasses
import itertools
import math
import re

from components.train.params import SPEC as TRAIN
from pipeline import defaults
from pipeline.sweep import SweepError
from pipeline.sweep.dag import DATA_STEPS, POINT_STEPS, parameters_of

_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its folder and run name, and the parameters it sets."""

    name: str
    values: dict

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


def sweepable_parameters() -> dict[str, type]:
    """Pipeline parameters a grid may vary, with their types: those train or evaluate read, and no data step nor push."""
    from pipeline.params import pipeline_parameters

    fixed = set().union(*(parameters_of(s) for s in DATA_STEPS + ("push",)))
    varying = set().union(*(parameters_of(s) for s in POINT_STEPS)) - fixed
    return {name: typ for name, typ, _, _ in pipeline_parameters() if name in varying}


def _why_fixed(name: str) -> str:
    data = [s for s in DATA_STEPS if name in parameters_of(s)]
    if data:
        return (f"it is a parameter of {', '.join(data)}, a data step the sweep runs once for all its points; "
                f"run one sweep per value (e.g. pipeline.py sweep --{name.replace('_', '-')} VALUE --grid ...)")
    if name in parameters_of("push"):
        return "it says where and how the sweep pushes, the same for every point; give it as a flag"
    return "it is not a parameter of train or evaluate"


def _parse_value(name: str, typ: type, text: str):
    text = text.strip()
    if typ is bool:
        if text.lower() not in _BOOLS:
            raise SweepError(f"--grid {name}: {text!r} is not a boolean; use true or false")
        return _BOOLS[text.lower()]
    try:
        value = typ(text)
    except ValueError:
        raise SweepError(f"--grid {name}: {text!r} is not {'an' if typ is int else 'a'} {typ.__name__}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepError(f"--grid {name}: {text!r} is not a finite number")
    return value


def parse_grid(texts: list[str], fixed: dict | None = None, max_points: int = defaults.SWEEP_MAX_POINTS) -> dict:
    """{parameter: [values]} from --grid NAME=V1,V2,... (names as pipeline parameters, - or _), typed as the DAG's.

    fixed: the parameters given as flags (cli.given_flags), which a grid may not vary too.
    """
    from pipeline.params import pipeline_parameters

    fixed = fixed or {}
    known = {name for name, _, _, _ in pipeline_parameters()}
    sweepable = sweepable_parameters()
    grid: dict[str, list] = {}
    if not texts:
        raise SweepError("give at least one --grid NAME=V1,V2 (e.g. --grid batch_size=32,64 --grid learning_rate=0.01,0.001)")
    for text in texts:
        key, sep, values = text.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise SweepError(f"--grid {text!r}: expected NAME=V1,V2,..., e.g. --grid learning_rate=0.01,0.001")
        if name not in known:
            raise SweepError(f"--grid {text!r}: {name!r} is not a pipeline parameter; those a sweep may vary: "
                             f"{', '.join(sorted(sweepable))}")
        if name not in sweepable:
            raise SweepError(f"--grid {text!r}: {name} cannot vary in a sweep: {_why_fixed(name)}")
        if name in grid:
            raise SweepError(f"--grid {name} is given twice; give all its values once: --grid {name}=V1,V2,...")
        if name in fixed:
            raise SweepError(f"{name} is given both as --{name.replace('_', '-')} and in --grid; keep one")
        parts = [v for v in values.split(",")]
        if not values.strip() or any(not v.strip() for v in parts):
            raise SweepError(f"--grid {text!r}: an empty value; expected NAME=V1,V2,... with no empty item")
        parsed = [_parse_value(name, sweepable[name], v) for v in parts]
        if len(set(parsed)) != len(parsed):
            raise SweepError(f"--grid {text!r}: a value is repeated; each point must differ")
        grid[name] = parsed
    if fixed.get("task", TRAIN.defaults.task) != "au" or "va" in grid.get("task", []):
        raise SweepError("a sweep compares Action Unit models by the study's measures (F1, AUC...); "
                         "task va is not supported: sweep with --task au")
    n = math.prod(len(v) for v in grid.values())
    if n > max_points:
        raise SweepError(f"the grid has {n} points, more than --max-points {max_points}; "
                         "narrow it or raise --max-points")
    return grid


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_") or "_"


def grid_points(grid: dict) -> list[Point]:
    """Every combination, the last key varying fastest; names are numbered so each folder and run is distinct."""
    keys = list(grid)
    points = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys)), 1):
        values = dict(zip(keys, combo))
        name = f"{i:02d}-" + "-".join(f"{k}={_slug(v)}" for k, v in values.items())
        points.append(Point(name, values))
    return points


def point_parameters(params: dict, point: Point) -> dict:
    """The parameters of one point's run: the sweep's, the point's values, and its own checkpoint folder."""
    out = {**params, **point.values}
    if out.get("checkpoint_dir"):
        # Points sharing one checkpoint folder would resume from each other's epochs.
        from components.common import storage

        out["checkpoint_dir"] = storage.join(out["checkpoint_dir"], point.name)
    return out
