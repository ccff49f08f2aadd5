"""Kubeflow Pipelines through kfp.Client: upload the spec and start a run or a recurring run; start and await the runs
of a sweep."""
from __future__ import annotations

import contextlib
import dataclasses

from pipeline import defaults
from pipeline.cluster import ClusterError, RemoteError, utc_stamp


@dataclasses.dataclass(frozen=True)
class KfpTarget:
    """Where runs go on Kubeflow Pipelines, and how they run there."""

    host: str  # the KFP API endpoint, http(s)://HOST[:PORT][/PATH]
    namespace: str | None = None  # multi-user deployments
    token: str | None = None  # a bearer token: sent in the request header only
    experiment: str = defaults.KFP_EXPERIMENT
    pipeline_root: str | None = None  # None: KFP's own bucket
    service_account: str | None = None
    disable_caching: bool = False

    @property
    def enable_caching(self) -> bool | None:
        # None keeps each step's own caching setting from the spec.
        return False if self.disable_caching else None

    def run_url(self, run_id: str) -> str:
        return f"{self.host.rstrip('/')}/#/runs/details/{run_id}"


@contextlib.contextmanager
def api_errors(host: str):
    """What the KFP client raises (the API's answer, a network error) comes out as RemoteError, for the user."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError, TimeoutError) as e:
        if isinstance(e, kfp_server_api.ApiException):
            body = (e.body or "").strip() if isinstance(e.body, str) else e.body
            raise RemoteError(f"KFP at {host} answered {e.status} {e.reason}: {body}") from e
        raise RemoteError(f"cannot reach KFP at {host}: {e}. Is the endpoint right (port-forward running)?") from e


def client(target: KfpTarget):
    import kfp

    return kfp.Client(host=target.host, namespace=target.namespace or "kubeflow", existing_token=target.token)


def experiment_id(kfp_client, target: KfpTarget) -> str:
    """The id of the target's experiment, created the first time."""
    return kfp_client.create_experiment(name=target.experiment, namespace=target.namespace).experiment_id


def _upload(kfp_client, target: KfpTarget, package: str, pipeline_name: str, version_name: str | None) -> tuple[str, str]:
    """Uploads the spec as a new version of the named pipeline (creating it the first time), so the KFP UI lists it."""
    pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = kfp_client.upload_pipeline(
            package, pipeline_name=pipeline_name, description=defaults.PIPELINE_DESCRIPTION, namespace=target.namespace
        )
        versions = kfp_client.list_pipeline_versions(pipeline.pipeline_id, sort_by="created_at desc", page_size=1)
        if not versions.pipeline_versions:
            raise ClusterError(f"KFP at {target.host} created pipeline {pipeline.pipeline_id} without a version")
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version = kfp_client.upload_pipeline_version(
        package,
        pipeline_version_name=version_name or f"{pipeline_name}-{utc_stamp()}",
        pipeline_id=pipeline_id,
        description=defaults.PIPELINE_DESCRIPTION,
    )
    return pipeline_id, version.pipeline_version_id


def submit(target: KfpTarget, package: str, params: dict, pipeline_name: str = defaults.PIPELINE_NAME,
           version_name: str | None = None, run_name: str | None = None) -> str:
    """Uploads the spec as a version of the pipeline and starts one run of it with params; returns the run's id."""
    with api_errors(target.host):
        kfp_client = client(target)
        pipeline_id, version_id = _upload(kfp_client, target, package, pipeline_name, version_name)
        experiment = experiment_id(kfp_client, target)
        run = kfp_client.run_pipeline(
            experiment_id=experiment,
            job_name=run_name or f"{pipeline_name}-{utc_stamp()}",
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=target.pipeline_root,
            enable_caching=target.enable_caching,
            service_account=target.service_account,
        )
        print(f"run {run.run_id} started: {target.run_url(run.run_id)}")
    return run.run_id


def schedule(target: KfpTarget, package: str, params: dict, cron: str, pipeline_name: str = defaults.PIPELINE_NAME,
             version_name: str | None = None, schedule_name: str | None = None) -> str:
    """Uploads the spec as a version of the pipeline and creates a recurring run of it (cron in KFP's form, see
    cron.kfp_cron); returns the recurring run's id."""
    with api_errors(target.host):
        kfp_client = client(target)
        pipeline_id, version_id = _upload(kfp_client, target, package, pipeline_name, version_name)
        experiment = experiment_id(kfp_client, target)
        name = schedule_name or f"{pipeline_name}-retrain"
        recurring = kfp_client.create_recurring_run(
            experiment_id=experiment,
            job_name=name,
            description=f"Scheduled retraining ({cron}); each run downloads only what the download store lacks.",
            cron_expression=cron,
            # Runs share the download store: one at a time, and no backfill of missed times.
            max_concurrency=1,
            no_catchup=True,
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=target.pipeline_root,
            enable_caching=target.enable_caching,
            service_account=target.service_account,
        )
        print(
            f"recurring run {recurring.recurring_run_id} ({name}, cron {cron!r}): "
            f"{target.host.rstrip('/')}/#/recurringrun/details/{recurring.recurring_run_id}"
        )
    return recurring.recurring_run_id


def start_package(kfp_client, target: KfpTarget, experiment: str, name: str, package: str) -> tuple[str, str]:
    """Starts a run of a spec file (sent with the run, not uploaded as a pipeline); returns its id and URL."""
    run = kfp_client.run_pipeline(
        experiment_id=experiment,
        job_name=name,
        pipeline_package_path=package,
        params={},
        pipeline_root=target.pipeline_root,
        enable_caching=target.enable_caching,
        service_account=target.service_account,
    )
    return run.run_id, target.run_url(run.run_id)
