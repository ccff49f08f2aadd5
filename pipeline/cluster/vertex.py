"""Vertex AI Pipelines through google-cloud-aiplatform: one pipeline job, or a schedule of it."""
from __future__ import annotations

import contextlib
import dataclasses

from pipeline import defaults
from pipeline.cluster import ClusterError, RemoteError, utc_stamp
from pipeline.platform import ClusterPlatform


@dataclasses.dataclass(frozen=True)
class VertexTarget:
    """Where runs go on Vertex AI Pipelines, and how they run there."""

    project: str
    region: str  # e.g. europe-west4
    pipeline_root: str  # gs://BUCKET/PREFIX, where the steps' artifacts go
    service_account: str | None = None  # a service-account email
    disable_caching: bool = False


def check_platform(platform: ClusterPlatform) -> None:
    """Vertex AI picks machines itself: refuses what only Kubernetes (KFP) understands."""
    kubernetes_only = platform.node_selectors or platform.tolerations or platform.secret_envs or platform.secret_volumes
    if kubernetes_only or platform.gcp_credentials_secret:
        raise ClusterError(
            "--node-selector, --toleration and the secret flags are for Kubernetes (KFP); Vertex AI picks the "
            "machine from --gpu-type and the step's resources, and runs the steps as --service-account"
        )
    if "/" in platform.gpu_type and platform.gpu_count:
        raise ClusterError(
            f"--gpu-type {platform.gpu_type!r} is a Kubernetes resource; Vertex AI wants an accelerator name, "
            "e.g. --gpu-type NVIDIA_TESLA_T4 or NVIDIA_L4"
        )


def _job(target: VertexTarget, package: str, params: dict, display_name: str):
    """The aiplatform.PipelineJob of the spec; ClusterError, saying what to install, without the SDK."""
    try:
        from google.cloud import aiplatform
    except ImportError:
        raise ClusterError(
            "Vertex AI needs google-cloud-aiplatform: pip install google-cloud-aiplatform "
            "(or use --host with a Kubeflow Pipelines endpoint)"
        ) from None
    with _api_errors(target):
        return aiplatform.PipelineJob(
            display_name=display_name,
            template_path=package,
            pipeline_root=target.pipeline_root,
            parameter_values=params,
            enable_caching=False if target.disable_caching else None,
            project=target.project,
            location=target.region,
        )


@contextlib.contextmanager
def _api_errors(target: VertexTarget):
    from google.api_core import exceptions as google_exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        yield
    except (google_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as e:
        raise RemoteError(f"Vertex AI ({target.project}, {target.region}) refused: {e}") from e


def submit(target: VertexTarget, package: str, params: dict, pipeline_name: str = defaults.PIPELINE_NAME,
           run_name: str | None = None) -> str:
    """Starts one pipeline job of the spec with params; returns its resource name."""
    job = _job(target, package, params, run_name or f"{pipeline_name}-{utc_stamp()}")
    with _api_errors(target):
        job.submit(service_account=target.service_account)
        print(f"Vertex AI pipeline job {job.resource_name} started")
    return job.resource_name


def schedule(target: VertexTarget, package: str, params: dict, cron: str, pipeline_name: str = defaults.PIPELINE_NAME,
             schedule_name: str | None = None) -> str:
    """Creates a schedule of the spec with params (cron in Vertex AI's form, see cron.vertex_cron); returns its
    resource name."""
    job = _job(target, package, params, f"{pipeline_name}-{utc_stamp()}")
    name = schedule_name or f"{pipeline_name}-retrain"
    with _api_errors(target):
        sched = job.create_schedule(
            cron=cron, display_name=name, max_concurrent_run_count=1, service_account=target.service_account
        )
        print(f"Vertex AI schedule {sched.resource_name} ({name}, cron {cron!r}) created")
    return sched.resource_name
