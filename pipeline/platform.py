"""Where the DAG's steps run: the settings a platform puts on each task (images, resources, GPUs, node pools).

`Platform()` is the local default and changes nothing; compile.py builds a `ClusterPlatform`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from components.common import images
from pipeline import defaults

TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# set_accelerator_limit in kfp 2.13 accepts only these counts.
GPU_COUNTS = (0, 1, 2, 4, 8, 16)
_CPU = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
# A Kubernetes label key (optional DNS prefix + name) and value.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Platform:
    """Configures each task of the DAG as it is created. Subclasses set images, resources and scheduling."""

    def configure(self, step: str, task) -> None:  # noqa: D401 - a hook
        """Called once per step with its kfp PipelineTask; the local platform leaves it as it is."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """CPU and memory of one step, as Kubernetes quantities ("500m", "2", "4Gi")."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    def __post_init__(self):
        for name in ("cpu_request", "cpu_limit"):
            if not _CPU.match(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not a CPU quantity; expected e.g. 500m, 2 or 1.5")
        for name in ("memory_request", "memory_limit"):
            if not _MEMORY.match(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not a memory quantity; expected e.g. 512Mi or 4Gi")


@dataclasses.dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration of a node taint, e.g. GKE's nvidia.com/gpu=present:NoSchedule."""

    key: str
    effect: str
    value: str = ""

    @property
    def operator(self) -> str:
        return "Equal" if self.value else "Exists"

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """KEY[=VALUE]:EFFECT, as `kubectl taint` writes a taint."""
        head, sep, effect = text.rpartition(":")
        key, _, value = head.partition("=")
        if not sep or not key or effect not in TOLERATION_EFFECTS:
            raise ValueError(
                f"toleration {text!r}: expected KEY[=VALUE]:EFFECT with EFFECT one of {', '.join(TOLERATION_EFFECTS)}, "
                "e.g. nvidia.com/gpu=present:NoSchedule"
            )
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"toleration {text!r}: {key!r}={value!r} is not a valid Kubernetes taint key and value")
        return cls(key=key, effect=effect, value=value)


@dataclasses.dataclass(frozen=True)
class SecretEnv:
    """Environment variables filled from the keys of a Kubernetes secret; only the names reach the spec."""

    secret: str
    key_to_env: Mapping[str, str]

    @classmethod
    def parse(cls, text: str) -> "SecretEnv":
        """SECRET:KEY=ENV[,KEY=ENV...]"""
        secret, sep, pairs = text.partition(":")
        mapping = {}
        for pair in pairs.split(",") if pairs else []:
            key, eq, env = pair.partition("=")
            if not eq or not key or not _ENV_NAME.match(env):
                mapping = {}
                break
            mapping[key] = env
        if not sep or not _SECRET_NAME.match(secret) or not mapping:
            raise ValueError(
                f"secret env {text!r}: expected SECRET:KEY=ENV[,KEY=ENV...], the names of a Kubernetes secret, "
                "its keys and the environment variables to fill, e.g. hf-token:token=HF_TOKEN (never the value itself)"
            )
        return cls(secret=secret, key_to_env=mapping)


@dataclasses.dataclass(frozen=True)
class SecretVolume:
    """A Kubernetes secret mounted as files; only its name and mount path reach the spec."""

    secret: str
    mount_path: str

    @classmethod
    def parse(cls, text: str) -> "SecretVolume":
        """SECRET:/MOUNT/PATH"""
        secret, sep, path = text.partition(":")
        if not sep or not _SECRET_NAME.match(secret) or not path.startswith("/"):
            raise ValueError(
                f"secret volume {text!r}: expected SECRET:/MOUNT/PATH, the name of a Kubernetes secret and an "
                "absolute path in the container, e.g. gcp-sa-key:/var/secrets/google"
            )
        return cls(secret=secret, mount_path=path)


def parse_node_selector(text: str) -> tuple[str, str]:
    """KEY=VALUE, a node label, e.g. cloud.google.com/gke-accelerator=nvidia-tesla-t4."""
    key, sep, value = text.partition("=")
    if not sep or not _LABEL_KEY.match(key) or not value or not _LABEL_VALUE.match(value):
        raise ValueError(
            f"node selector {text!r}: expected KEY=VALUE, a node label, e.g. cloud.google.com/gke-accelerator=nvidia-tesla-t4"
        )
    return key, value


def default_resources() -> dict[str, Resources]:
    """CPU and memory of every step as pipeline/defaults.py sets them."""
    return {step: Resources(*values) for step, values in defaults.CLUSTER_RESOURCES.items()}


@dataclasses.dataclass
class ImagePlatform(Platform):
    """The image each step runs in: the CPU image for the data steps, the GPU image for train and evaluate (the kind
    a component declares as its base image). A local container run sets only this; a cluster sets the rest too."""

    image_cpu: str | None = None
    image_gpu: str | None = None

    def __post_init__(self):
        self.image_cpu = self.image_cpu or images.CPU_IMAGE
        self.image_gpu = self.image_gpu or images.GPU_IMAGE
        # The component's declared base image says which kind of image it needs.
        self._image_for = {images.CPU_IMAGE: self.image_cpu, images.GPU_IMAGE: self.image_gpu}

    def configure(self, step: str, task) -> None:
        declared = task.container_spec.image
        task.set_container_image(self._image_for.get(declared, declared))


@dataclasses.dataclass
class ClusterPlatform(ImagePlatform):
    """Images, CPU/memory, retries, caching, GPU and node pool, and secrets of each step on a Kubernetes cluster.

    Only names reach the spec: secrets come from Kubernetes (kfp-kubernetes) or from workload identity
    (the run's service account), never from this process's environment.
    """

    gpu_type: str = defaults.CLUSTER_GPU_TYPE
    gpu_count: int = defaults.CLUSTER_GPU_COUNT
    gpu_steps: Sequence[str] = defaults.CLUSTER_GPU_STEPS
    node_selectors: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: Sequence[Toleration] = ()
    resources: Mapping[str, Resources] = dataclasses.field(default_factory=default_resources)
    retry_steps: Sequence[str] = defaults.CLUSTER_RETRY_STEPS
    retries: int = defaults.CLUSTER_RETRIES
    retry_backoff: str = defaults.CLUSTER_RETRY_BACKOFF
    retry_backoff_factor: float = defaults.CLUSTER_RETRY_BACKOFF_FACTOR
    retry_backoff_max: str = defaults.CLUSTER_RETRY_BACKOFF_MAX
    cached_steps: Sequence[str] = defaults.CLUSTER_CACHED_STEPS
    secret_envs: Sequence[SecretEnv] = ()
    secret_volumes: Sequence[SecretVolume] = ()
    gcp_credentials_secret: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.gpu_count not in GPU_COUNTS:
            raise ValueError(f"GPU count {self.gpu_count}: KFP accepts one of {', '.join(map(str, GPU_COUNTS))}")
        if self.retries < 0:
            raise ValueError(f"retries {self.retries}: expected 0 or more")
        if self.gcp_credentials_secret is not None and not _SECRET_NAME.match(self.gcp_credentials_secret):
            raise ValueError(f"credentials secret {self.gcp_credentials_secret!r} is not a Kubernetes secret name")

    def configure(self, step: str, task) -> None:
        from kfp import kubernetes

        super().configure(step, task)

        if step in self.resources:
            r = self.resources[step]
            task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
            task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)

        if step in self.retry_steps and self.retries:
            task.set_retry(
                num_retries=self.retries,
                backoff_duration=self.retry_backoff,
                backoff_factor=self.retry_backoff_factor,
                backoff_max_duration=self.retry_backoff_max,
            )

        task.set_caching_options(enable_caching=step in self.cached_steps)

        if step in self.gpu_steps:
            if self.gpu_count:
                task.set_accelerator_type(self.gpu_type).set_accelerator_limit(self.gpu_count)
            for key, value in self.node_selectors.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for t in self.tolerations:
                kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value or None, effect=t.effect)

        for s in self.secret_envs:
            kubernetes.use_secret_as_env(task, secret_name=s.secret, secret_key_to_env=dict(s.key_to_env))
        for s in self.secret_volumes:
            kubernetes.use_secret_as_volume(task, secret_name=s.secret, mount_path=s.mount_path)
        if self.gcp_credentials_secret:
            kubernetes.use_secret_as_volume(
                task, secret_name=self.gcp_credentials_secret, mount_path=defaults.CLUSTER_CREDENTIALS_MOUNT
            )
            # A path, not a secret: the google-cloud clients read the key file it names.
            task.set_env_variable(
                "GOOGLE_APPLICATION_CREDENTIALS",
                f"{defaults.CLUSTER_CREDENTIALS_MOUNT}/{defaults.CLUSTER_CREDENTIALS_FILE}",
            )
