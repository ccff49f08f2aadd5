"""The Action Unit pipeline: ingest -> download -> validate -> convert -> filter -> train -> evaluate -> push -> report."""

import inspect

from kfp import dsl

from components.common.params import Param
from components.convert import params as convert_params
from components.download import params as download_params
from components.evaluate import params as evaluate_params
from components.filter import params as filter_params
from components.ingest import params as ingest_params
from components.push import params as push_params
from components.report import params as report_params
from components.train import params as train_params
from components.validate import params as validate_params

from components.convert.component import convert
from components.download.component import download
from components.evaluate.component import evaluate
from components.filter.component import filter_examples
from components.ingest.component import ingest
from components.push.component import push
from components.report.component import report
from components.train.component import train
from components.validate.component import validate
from pipeline import defaults
from pipeline.platform import Platform

# Step name -> the KFP component, in DAG order. The names are the tasks' names in the spec.
STEPS = {
    "ingest": ingest,
    "download": download,
    "validate": validate,
    "convert": convert,
    "filter-examples": filter_examples,
    "train": train,
    "evaluate": evaluate,
    "push": push,
    "report": report,
}


# Each step's one declaration, in DAG order: the DAG's parameters, their defaults and descriptions come from these.
SPECS = {
    "ingest": ingest_params.SPEC,
    "download": download_params.SPEC,
    "validate": validate_params.SPEC,
    "convert": convert_params.SPEC,
    "filter-examples": filter_params.SPEC,
    "train": train_params.SPEC,
    "evaluate": evaluate_params.SPEC,
    "push": push_params.SPEC,
    "report": report_params.SPEC,
}


def dag_parameters(specs=None) -> dict[str, Param]:
    """The DAG's parameters (its name -> the declaration), in step order; a parameter two steps take (beam_args,
    registry, model_name) must be declared alike by both."""
    out: dict[str, Param] = {}
    for step, spec in (specs or SPECS).items():
        for p in spec.dag_params:
            seen = out.get(p.dag_name)
            if seen is None:
                out[p.dag_name] = p
            elif (seen.type, seen.default, seen.help, seen.choices) != (p.type, p.default, p.help, p.choices):
                raise ValueError(f"pipeline parameter {p.dag_name} is declared differently by {step} and an earlier "
                                 "step: declare it once in components/common/params.py and share it")
    return out


SUMMARY = "Trains, evaluates and pushes a facial Action Unit detector from an EmotioNet-format sheet."


def _docstring(params: dict[str, Param], summary: str = SUMMARY) -> str:
    lines = [summary, "", "Args:"]
    lines += [f"    {name}: {p.help}" for name, p in params.items()]
    return "\n".join(lines) + "\n"


def with_declared_signature(fn, params: dict[str, Param], summary: str = SUMMARY):
    """fn(*values) gets the DAG parameters' signature and docstring: kfp reads both to make the pipeline's inputs
    (pipeline/annotate_dag.py declares its DAG the same way)."""
    fn.__signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.type)
        for name, p in params.items()])
    fn.__doc__ = _docstring(params, summary)
    return fn


def build_pipeline(platform: "Platform | None" = None):
    """The @dsl.pipeline function; `platform` sets images, resources and node pools per step."""
    platform = platform or Platform()
    params = dag_parameters()

    def au_pipeline(*values):
        given = dict(zip(params, values))

        def args(step: str) -> dict:
            """The step's parameters, from the DAG's (named as the step names them)."""
            return {p.name: given[p.dag_name] for p in SPECS[step].dag_params}

        ingest_task = ingest(**args("ingest"))
        download_task = download(manifest=ingest_task.outputs["manifest"], **args("download"))
        validate_task = validate(
            manifest=ingest_task.outputs["manifest"], downloads=download_task.outputs["downloads"], **args("validate")
        )
        convert_task = convert(
            manifest=ingest_task.outputs["manifest"], downloads=download_task.outputs["downloads"], **args("convert")
        )
        # Converting data that failed validation would waste the rest of the run.
        convert_task.after(validate_task)
        filter_task = filter_examples(examples=convert_task.outputs["examples"], **args("filter-examples"))
        train_task = train(examples=filter_task.outputs["filtered"], **args("train"))
        evaluate_task = evaluate(
            examples=filter_task.outputs["filtered"],
            model=train_task.outputs["model"],
            manifest=ingest_task.outputs["manifest"],
            **args("evaluate"),
        )
        # The push step reads the blessing and refuses an unblessed model itself: kfp.local
        # runs no dsl.If, and one DAG must run the same locally and on a cluster.
        push_task = push(
            model=train_task.outputs["model"], evaluation=evaluate_task.outputs["evaluation"], **args("push")
        )
        # The run report as an HTML artifact, which the KFP UI shows; a local run also writes RUN_DIR/report.html.
        report_task = report(
            manifest=ingest_task.outputs["manifest"],
            downloads=download_task.outputs["downloads"],
            validation=validate_task.outputs["validation"],
            examples=convert_task.outputs["examples"],
            filtered=filter_task.outputs["filtered"],
            model=train_task.outputs["model"],
            evaluation=evaluate_task.outputs["evaluation"],
            pushed=push_task.outputs["pushed"],
        )
        tasks = {
            "ingest": ingest_task,
            "download": download_task,
            "validate": validate_task,
            "convert": convert_task,
            "filter-examples": filter_task,
            "train": train_task,
            "evaluate": evaluate_task,
            "push": push_task,
            "report": report_task,
        }
        for step, t in tasks.items():
            platform.configure(step, t)

    with_declared_signature(au_pipeline, params)
    return dsl.pipeline(name=defaults.PIPELINE_NAME, description=defaults.PIPELINE_DESCRIPTION)(au_pipeline)


au_pipeline = build_pipeline()
