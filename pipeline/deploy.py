"""`pipeline.py deploy`: a pushed version served by the CPU image's server on KServe (an InferenceService manifest)
or on Vertex AI (Model Registry upload, then an endpoint).

Here rather than in components/push: deploying talks to a cluster or a cloud project, as submit does, and is done
by a person or a CD job after a push; the push step stays a registry copy that needs no cloud SDK.
"""
from __future__ import annotations

import argparse
import re
import sys

from components.common import images, registry

PORT = 8080  # Vertex AI's and KServe's default container port
SERVE_COMMAND = ["python", "-m", "components.serve"]
PREDICT_ROUTE = "/predict"  # components/serve: Vertex AI's routes (its defaults)
HEALTH_ROUTE = "/health"
READY_ROUTE = "/v2/health/ready"  # 200 once the model is loaded and warmed (Open Inference Protocol)
LIVE_ROUTE = "/v2/health/live"  # 200 while the process serves
KSERVE_API = "serving.kserve.io/v1beta1"
RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}


class DeployError(Exception):
    """A deployment that cannot be made; the message says what was found and what to do."""


def k8s_name(name: str) -> str:
    """A DNS-1123 label from a model name (an InferenceService's metadata.name)."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    if not out or not out[0].isalpha():
        out = ("m-" + out)[:63].strip("-")
    return out


def resolve(model_uri: str) -> tuple[str, str]:
    """(version URI, version) of a registry model root (follows LATEST) or a pushed version; never a bare folder."""
    try:
        uri, version = registry.resolve_model(model_uri)
    except registry.RegistryError as e:
        raise DeployError(str(e)) from e
    if version is None:
        raise DeployError(f"{model_uri} is a model folder that was never pushed: deploy a registry model root or a "
                          f"pushed version (push it first: python -m components.push)")
    return uri, version


def kserve_manifest(version_uri: str, version: str, name: str, image: str = images.CPU_IMAGE,
                    resources: dict | None = None, min_replicas: int = 1, max_replicas: int = 1) -> dict:
    """An InferenceService whose predictor is the CPU image's server on one pushed version (no LATEST polling:
    a new version is a new manifest, rolled out by KServe)."""
    probe = {"initialDelaySeconds": 5, "periodSeconds": 5, "timeoutSeconds": 2}
    return {
        "apiVersion": KSERVE_API,
        "kind": "InferenceService",
        "metadata": {"name": k8s_name(name), "labels": {"app.kubernetes.io/name": k8s_name(name)},
                     "annotations": {"emotionet-au/model-version": version, "emotionet-au/model-uri": version_uri}},
        "spec": {"predictor": {
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "containers": [{
                "name": "kserve-container",
                "image": image,
                "command": SERVE_COMMAND,
                # Kubernetes expands $(STORAGE_URI) from the env below; the server reads gs:// itself.
                "args": ["--model", "$(STORAGE_URI)", "--model-name", name, "--host", "0.0.0.0", "--port", str(PORT),
                         "--poll-s", "0"],
                "env": [{"name": "STORAGE_URI", "value": version_uri}],
                "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
                # Loading TensorFlow, the model and the face detector takes a while: readiness waits for it.
                "readinessProbe": {"httpGet": {"path": READY_ROUTE, "port": PORT}, **probe, "failureThreshold": 60},
                "livenessProbe": {"httpGet": {"path": LIVE_ROUTE, "port": PORT}, **probe, "failureThreshold": 6},
                "resources": resources or RESOURCES,
            }],
        }},
    }


def write_manifest(manifest: dict, path: str | None) -> str:
    import yaml

    text = yaml.safe_dump(manifest, sort_keys=False)
    if path and path != "-":
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def deploy_vertex(version_uri: str, version: str, name: str, project: str, region: str, endpoint: str = "",
                  image: str = images.CPU_IMAGE, machine_type: str = "n1-standard-4", min_replicas: int = 1,
                  max_replicas: int = 1, service_account: str = "") -> dict:
    """Uploads the version to the Vertex AI Model Registry with the CPU image as its serving container, then deploys
    it to `endpoint` (an endpoint's ID or resource name; '' creates one named after the model). Returns the names."""
    try:
        from google.cloud import aiplatform
    except ImportError as e:
        raise DeployError("google-cloud-aiplatform is not installed: pip install google-cloud-aiplatform "
                          "(it is in the project's lock: make venv)") from e
    if not version_uri.startswith("gs://"):
        raise DeployError(f"{version_uri} is not in Cloud Storage: Vertex AI reads a model's artifact_uri from "
                          "gs:// only; push to a gs:// registry first")
    aiplatform.init(project=project, location=region)
    # Vertex AI copies artifact_uri and passes it as AIP_STORAGE_URI, the port and routes as AIP_*: the server's
    # flags default to those, so the container needs no args.
    model = aiplatform.Model.upload(
        display_name=name,
        artifact_uri=version_uri,
        serving_container_image_uri=image,
        serving_container_command=SERVE_COMMAND,
        serving_container_predict_route=PREDICT_ROUTE,
        serving_container_health_route=HEALTH_ROUTE,
        serving_container_ports=[PORT],
        labels={"model-version": k8s_name(version)},
        version_description=f"registry version {version} ({version_uri})",
    )
    target = aiplatform.Endpoint(endpoint) if endpoint else aiplatform.Endpoint.create(display_name=name)
    kwargs = {"endpoint": target, "deployed_model_display_name": f"{name}-{version}", "machine_type": machine_type,
              "min_replica_count": min_replicas, "max_replica_count": max_replicas, "traffic_percentage": 100,
              "sync": True}
    if service_account:
        kwargs["service_account"] = service_account
    model.deploy(**kwargs)
    return {"model": model.resource_name, "endpoint": target.resource_name, "version": version, "uri": version_uri}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Registry model root (<destination>/<model_name>, follows LATEST) "
                                                  "or a pushed version folder.")
    p.add_argument("--name", default="", help="Name of the service and of the Vertex AI model (default: the model "
                                              "root's folder name).")
    p.add_argument("--image", default=images.CPU_IMAGE, help=f"Serving image (default: {images.CPU_IMAGE}).")
    p.add_argument("--min-replicas", type=int, default=1, help="(default: 1)")
    p.add_argument("--max-replicas", type=int, default=1, help="(default: 1)")
    p.add_argument("--kserve", metavar="FILE", default="", help="Write a KServe InferenceService manifest to FILE "
                                                                "('-' prints it); apply it with kubectl apply -f FILE.")
    p.add_argument("--vertex-project", default="", help="Upload to this project's Vertex AI Model Registry and deploy.")
    p.add_argument("--vertex-region", default="", help="Vertex AI region, e.g. europe-west4.")
    p.add_argument("--endpoint", default="", help="Vertex AI endpoint ID or resource name ('' creates one).")
    p.add_argument("--machine-type", default="n1-standard-4", help="Vertex AI machine type (default: n1-standard-4).")
    p.add_argument("--service-account", default="", help="Service account the Vertex AI endpoint runs as.")


def command(args: argparse.Namespace) -> int:
    """pipeline.py deploy: 0 when done, 2 with a sentence on stderr when it cannot be."""
    try:
        if not args.kserve and not args.vertex_project:
            raise DeployError("say where to deploy: --kserve FILE (a KServe manifest) and/or --vertex-project P "
                              "--vertex-region R (Vertex AI)")
        if bool(args.vertex_project) != bool(args.vertex_region):
            raise DeployError("--vertex-project and --vertex-region go together")
        if not 1 <= args.min_replicas <= args.max_replicas:
            raise DeployError(f"replicas: need 1 <= --min-replicas ({args.min_replicas}) <= --max-replicas "
                              f"({args.max_replicas})")
        uri, version = resolve(args.model)
        name = args.name or registry.basename(uri.rstrip("/")[: -len(version)].rstrip("/")) or "model"
        if args.kserve:
            text = write_manifest(kserve_manifest(uri, version, name, args.image, None, args.min_replicas,
                                                  args.max_replicas), args.kserve)
            print(text if args.kserve == "-" else f"wrote the InferenceService of version {version} to {args.kserve}")
        if args.vertex_project:
            done = deploy_vertex(uri, version, name, args.vertex_project, args.vertex_region, args.endpoint,
                                 args.image, args.machine_type, args.min_replicas, args.max_replicas,
                                 args.service_account)
            print(f"deployed version {version} as {done['model']} to {done['endpoint']}")
    except DeployError as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 2
    return 0
