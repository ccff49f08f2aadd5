"""The DAG's parameters as command-line flags: one --flag per pipeline parameter, same type, default and help."""
from __future__ import annotations

import argparse
import inspect

import docstring_parser


def pipeline_parameters(pipeline_func=None) -> list[tuple[str, type, object, str]]:
    """(name, type, default, description) of every parameter of the pipeline function, in order."""
    if pipeline_func is None:
        from pipeline.dag import au_pipeline as pipeline_func
    fn = getattr(pipeline_func, "pipeline_func", pipeline_func)
    docs = {p.arg_name: p.description for p in docstring_parser.parse(fn.__doc__ or "").params}
    out = []
    for name, p in inspect.signature(fn).parameters.items():
        out.append((name, p.annotation, p.default, " ".join((docs.get(name) or "").split())))
    return out


def add_pipeline_parameter_flags(parser: argparse.ArgumentParser, pipeline_func=None, skip=(), presets: bool = True,
                                 title: str = "pipeline parameters") -> None:
    """Adds --NAME-WITH-DASHES for each pipeline parameter (bools get --x / --no-x); presets: --preset too (the
    training DAG's)."""
    group = parser.add_argument_group(title)
    from pipeline import defaults

    if presets:
        _add_preset_flag(group, defaults)
    for name, typ, default, doc in pipeline_parameters(pipeline_func):
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{doc} (default: {default!r})"
        if typ is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=typ, default=None, metavar=typ.__name__.upper(), help=help_text)


def _add_preset_flag(group, defaults) -> None:
    group.add_argument("--preset", choices=sorted(defaults.PRESETS), default=None,
                       help="A recipe (demo: the demo set's, applied without --source; the others: the study's "
                            "experiments): " + "; ".join(
                           f"{name}: " + ", ".join(f"{k}={v if len(str(v)) < 30 else str(v)[:12] + '...'}"
                                                   for k, v in values.items())
                           for name, values in sorted(defaults.PRESETS.items()))
                       + ". Flags given beside it win.")


def pipeline_arguments(args: argparse.Namespace, pipeline_func=None) -> dict:
    """The pipeline parameters the user set on the command line, over those of --preset (others keep the
    pipeline's defaults)."""
    from pipeline import defaults

    out = dict(defaults.PRESETS.get(getattr(args, "preset", None) or "", {}))
    for name, _, _, _ in pipeline_parameters(pipeline_func):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out
