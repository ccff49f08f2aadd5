"""The parts of the DAG a sweep runs (its data steps once, train -> evaluate per point), rebuilt from the DAG's spec."""
from __future__ import annotations

from pipeline import defaults
from pipeline.sweep import SweepError

# The steps a sweep runs once, and those it runs per point: the DAG's own tasks, wired as in the DAG.
DATA_STEPS = ("ingest", "download", "validate", "convert", "filter-examples")
POINT_STEPS = ("train", "evaluate")


def dag_tasks():
    """The tasks of the compiled DAG (pipeline.dag.au_pipeline), by step name."""
    from pipeline.dag import au_pipeline

    return au_pipeline.pipeline_spec.root.dag.tasks


def parameters_of(step: str) -> set[str]:
    """The pipeline parameters the DAG feeds into a step."""
    return {v.component_input_parameter for v in dag_tasks()[step].inputs.parameters.values()
            if v.component_input_parameter}


def with_defaults(params: dict) -> dict:
    """Every pipeline parameter's value: those given, the DAG's defaults for the rest."""
    from pipeline.params import pipeline_parameters

    return {**{name: default for name, _, default, _ in pipeline_parameters()}, **params}


def sub_pipeline(name: str, steps: tuple[str, ...], params: dict, imported: dict | None = None, platform=None,
                 publish_to: dict | None = None):
    """A @dsl.pipeline running `steps` of the DAG, wired exactly as the DAG wires them (read from its spec).

    params: every pipeline parameter's value (baked in as constants). imported: {(producer step,
    output): path or URI} for the artifacts of steps not in `steps`; each comes in through a dsl.importer.
    platform: sets each task's image and resources (pipeline.platform; a cluster's). publish_to: {(producer step,
    output): URI}, each also copied there (a publish step), for the point runs of a cluster sweep to import.
    """
    from kfp import dsl

    from pipeline.dag import STEPS

    spec = dag_tasks()
    imported = imported or {}

    @dsl.pipeline(name=name, description=defaults.PIPELINE_DESCRIPTION)
    def part():
        made, importers = {}, {}
        for step in (s for s in STEPS if s in steps):
            task_spec = spec[step]
            kwargs = {}
            for arg, v in task_spec.inputs.parameters.items():
                kwargs[arg] = params[v.component_input_parameter]
            for arg, a in task_spec.inputs.artifacts.items():
                source = (a.task_output_artifact.producer_task, a.task_output_artifact.output_artifact_key)
                if source[0] in made:
                    kwargs[arg] = made[source[0]].outputs[source[1]]
                    continue
                if source not in imported:
                    raise SweepError(f"step {step} needs {source[1]} of {source[0]}, which this part neither runs nor imports")
                if source not in importers:
                    importers[source] = dsl.importer(artifact_uri=imported[source], artifact_class=dsl.Dataset,
                                                     reimport=False)
                kwargs[arg] = importers[source].output
            task = STEPS[step](**kwargs)
            for dep in task_spec.dependent_tasks:
                if dep in made:
                    task.after(made[dep])
            made[step] = task
        if publish_to:
            from components.publish.component import publish

            # The tasks are named as kfp names them: publish, publish-2, ...
            for i, ((producer, output), uri) in enumerate(publish_to.items()):
                made["publish" + (f"-{i + 1}" if i else "")] = publish(source=made[producer].outputs[output],
                                                                       destination=uri)
        if platform is not None:
            for step, task in made.items():
                platform.configure(step, task)

    return part
