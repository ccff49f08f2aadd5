"""Sweeps: one pass of the data steps, then a train -> evaluate run per point of a grid of parameters, and a comparison.

Locally (`pipeline.py sweep`, local.py) the data steps (ingest, download, validate, convert, filter) run once with
kfp.local; each grid point then runs train and evaluate on the filtered examples (a `dsl.importer`
of that folder), one after another, each in its own folder; the comparison table, the loss curves
of every run in one plot (compare.py), and the push of the best run (push.py) end it. On a cluster
(`pipeline.py sweep-submit`, cluster.py) a data run runs the data steps once and publishes the filtered
examples; then every point is a run of train -> evaluate -> push on them (a `dsl.importer` of that URI),
all in one KFP experiment, each pushing into its own candidate registry; `pipeline.py sweep-pick` then
compares them and pushes the best, as a local sweep does.

Only parameters that train or evaluate read, and no data step nor push, may vary (grid.py): the data
steps are shared by every point, and the registry is where the sweep pushes. dag.py builds the parts
of the DAG a sweep runs; cli.py holds the flags.
"""


class SweepError(ValueError):
    """A grid or sweep the user asked for that cannot run; the message says what to change."""
