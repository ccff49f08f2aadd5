"""A step's parameters declared once: its CLI, its KFP component's docstring, the DAG and the KFP UI read the declaration.

Each step has `components/<step>/params.py` with one `StepSpec`: what the step reads and writes (its artifacts) and its
parameters (name, type, default, one line of help). From it come:
- the CLI (`SPEC.parser()`): a flag per parameter, the artifacts as path flags, the same help;
- the KFP component's docstring (`@SPEC.document`, under `@dsl.component`): the compiled spec and the KFP UI describe
  each input with the declaration's words; the component keeps a literal signature (kfp.local runs a component from
  its function's source), which `SPEC.check_component` pins to the declaration in a unit test;
- the DAG's parameters, docstring and wiring (pipeline/dag.py): a parameter with `pipeline=` set is a DAG parameter of
  that name (the mapping between the DAG's name and the step's is written there, once);
- logic.run's defaults (`SPEC.defaults.NAME`).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any, Callable

from components.common.cli import StepArgumentParser

_TYPES = (str, int, float, bool)


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a step."""

    name: str  # the step's name for it: the component's argument, logic.run's keyword, --name-with-dashes
    type: type
    default: Any
    help: str  # one line; the CLI adds "(default: ...)"
    choices: tuple = ()
    # The DAG's name for it: "" = the same as `name`; None = not a DAG parameter (the CLI and logic.run only).
    pipeline: str | None = ""
    flag: str = ""  # the CLI flag when it is not --name-with-dashes
    metavar: str = ""
    required: bool = False  # the CLI needs it (the DAG's default is then only the KFP UI form's)

    def __post_init__(self):
        if self.type not in _TYPES:
            raise TypeError(f"parameter {self.name}: type must be one of str, int, float, bool, not {self.type!r}")
        if not isinstance(self.default, self.type) and not (self.type is float and type(self.default) is int):
            raise TypeError(f"parameter {self.name}: default {self.default!r} is not a {self.type.__name__}")
        if self.choices and self.default not in self.choices:
            raise ValueError(f"parameter {self.name}: default {self.default!r} is not one of {self.choices}")
        if "\n" in self.help or not self.help.strip():
            raise ValueError(f"parameter {self.name}: help must be one non-empty line")

    @property
    def in_dag(self) -> bool:
        return self.pipeline is not None

    @property
    def dag_name(self) -> str:
        """The DAG's (and the KFP UI's) name of this parameter."""
        if self.pipeline is None:
            raise ValueError(f"parameter {self.name} is not a DAG parameter")
        return self.pipeline or self.name

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def renamed(self, name: str, pipeline: str | None = "") -> "Param":
        """The same parameter under another step-level name (a shared parameter one step calls otherwise)."""
        return dataclasses.replace(self, name=name, pipeline=pipeline, flag="")


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One input or output of a step: a folder (or file) another step wrote or reads."""

    name: str  # the component's argument
    help: str
    flag: str = ""  # the CLI flag when it is not --name-with-dashes; "-" = the CLI has none (KFP only)
    required: bool = True  # on the CLI


class _Defaults:
    """SPEC.defaults.NAME: a parameter's default, for logic.run's signature and callers; a typo fails at import."""

    def __init__(self, spec: "StepSpec"):
        object.__setattr__(self, "_values", {p.name: p.default for p in spec.params})
        object.__setattr__(self, "_step", spec.name)

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"step {self._step} declares no parameter {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("defaults are read-only: change the declaration in the step's params.py")

    def as_dict(self) -> dict:
        return dict(self._values)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """A step's one declaration: its description, artifacts and parameters."""

    name: str  # the step's package (components/<name>)
    description: str  # one or two sentences: the CLI's --help and the component docstring's first line
    inputs: tuple[Artifact, ...] = ()
    outputs: tuple[Artifact, ...] = ()
    params: tuple[Param, ...] = ()
    task: str = ""  # the task's name in the DAG when it is not `name` (e.g. filter-examples)

    def __post_init__(self):
        names = [a.name for a in self.inputs + self.outputs] + [p.name for p in self.params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"step {self.name} declares {', '.join(dup)} twice")

    @property
    def defaults(self) -> _Defaults:
        return _Defaults(self)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"step {self.name} declares no parameter {name!r}")

    @property
    def dag_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.in_dag)

    # --- the KFP component -----------------------------------------------------------------------------------
    def docstring(self) -> str:
        """Google-style docstring: kfp reads its Args into the component spec (the KFP UI's descriptions)."""
        lines = [self.description, "", "Args:"]
        for a in self.inputs + self.outputs:
            lines.append(f"    {a.name}: {a.help}")
        for p in self.dag_params:
            lines.append(f"    {p.name}: {p.help}")
        return "\n".join(lines) + "\n"

    def document(self, fn: Callable) -> Callable:
        """Decorator under @dsl.component: the function's docstring from the declaration (kfp drops decorators
        from the source it runs, so nothing of this reaches the executor)."""
        fn.__doc__ = self.docstring()
        return fn

    def check_component(self, component) -> list[str]:
        """How a component's literal signature differs from the declaration (empty when it agrees)."""
        fn = getattr(component, "python_func", component)
        sig = inspect.signature(fn)
        problems = []
        artifacts = [a.name for a in self.inputs + self.outputs]
        params = [p for p in self.dag_params]
        got_artifacts = [n for n, p in sig.parameters.items() if p.annotation not in _TYPES]
        got_params = [(n, p.annotation) for n, p in sig.parameters.items() if p.annotation in _TYPES]
        if got_artifacts != artifacts:
            problems.append(f"artifacts {got_artifacts} != declared {artifacts}")
        want = [(p.name, p.type) for p in params]
        if got_params != want:
            problems.append(f"parameters {[(n, t.__name__) for n, t in got_params]} != declared "
                            f"{[(n, t.__name__) for n, t in want]}")
        for n, p in sig.parameters.items():
            if p.default is not inspect.Parameter.empty:
                problems.append(f"{n} has a default in the component: defaults live in the declaration")
        return problems

    # --- the CLI ---------------------------------------------------------------------------------------------
    def parser(self, prog: str = "", description: str = "", artifacts: bool = True) -> StepArgumentParser:
        """The step's CLI parser: the artifacts as path flags, then every parameter."""
        p = StepArgumentParser(prog=prog or f"python -m components.{self.name}",
                               description=description or self.description)
        if artifacts:
            for a in self.inputs + self.outputs:
                if a.flag == "-":
                    continue
                p.add_argument(a.flag or "--" + a.name.replace("_", "-"), dest=a.name, required=a.required,
                               default=None if a.required else "", metavar="PATH", help=a.help)
        self.add_arguments(p)
        return p

    def add_arguments(self, parser: argparse.ArgumentParser, only: tuple[str, ...] = (), title: str = "") -> None:
        """A flag per parameter (or those named in `only`), with the declaration's help and default."""
        target = parser.add_argument_group(title) if title else parser
        for p in self.params:
            if only and p.name not in only:
                continue
            add_param_flag(target, p)

    def values(self, args: argparse.Namespace) -> dict:
        """{name: value} of every parameter, from arguments parsed by a parser of add_arguments."""
        return {p.name: getattr(args, p.name) for p in self.params if hasattr(args, p.name)}


def add_param_flag(parser, p: Param, default: Any = dataclasses.MISSING, help_suffix: bool = True) -> None:
    """One parameter's flag: bools get --x / --no-x; the help says the default."""
    value = p.default if default is dataclasses.MISSING else default
    shown = p.default if isinstance(p.default, str) is False else repr(p.default)
    help_text = f"{p.help} (default: {shown})" if help_suffix else p.help
    help_text = help_text.replace("%", "%%")
    if p.required:
        parser.add_argument(p.cli_flag, dest=p.name, type=p.type, required=True, help=p.help.replace("%", "%%"),
                            **({"choices": list(p.choices)} if p.choices else {}))
    elif p.type is bool:
        parser.add_argument(p.cli_flag, dest=p.name, action=argparse.BooleanOptionalAction, default=value,
                            help=help_text)
    else:
        kwargs = {"choices": list(p.choices)} if p.choices else {"metavar": p.metavar or p.type.__name__.upper()}
        parser.add_argument(p.cli_flag, dest=p.name, type=p.type, default=value, help=help_text, **kwargs)


# --- parameters two steps share: declared once here, so the DAG and both steps describe them alike ------------------
BEAM_ARGS = Param(
    "beam_args", str, "",
    'Apache Beam pipeline options of the Beam steps (convert, filter, annotate), e.g. '
    '--beam-args="--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp" ("" = the local '
    'FnApiRunner).')
REGISTRY = Param("registry", str, "runs/registry", "Model registry root, a local folder or gs:// prefix.")
MODEL_NAME = Param("model_name", str, "au-detector", "Name of the model in the registry.")
