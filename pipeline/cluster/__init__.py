"""Runs on a cluster: compile the DAG for it, submit one run, schedule retraining; sweeps use the same clients.

Kubeflow Pipelines through `kfp.Client` (`--host`, kfp.py) or Vertex AI Pipelines through
google-cloud-aiplatform (`--vertex-project/--vertex-region`, vertex.py); compile.py writes the spec,
cron.py turns --cron into each back-end's form, and cli.py holds the flags: pipeline.py and compile.py
parse the command line with it, and only it reads an argparse Namespace.
"""
from __future__ import annotations

import datetime


class ClusterError(ValueError):
    """A problem with what the user asked for; the CLI prints it and exits with 2."""


class RemoteError(RuntimeError):
    """The cluster's API refused a request or could not be reached; the message says which and what it answered.
    The CLI prints it and exits with 1."""


def utc_stamp() -> str:
    """UTC time to the second, for the default names of runs, versions and sweeps."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
