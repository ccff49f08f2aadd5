"""The flags of the cluster commands (pipeline.py submit, schedule, sweep-submit; compile.py): the only module of
pipeline.cluster that reads an argparse Namespace; below it, kfp.py and vertex.py take plain values and a target."""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

from pipeline import defaults
from pipeline.cluster import ClusterError, RemoteError, cron, kfp, vertex
from pipeline.cluster.compile import compile_spec
from pipeline.params import add_pipeline_parameter_flags, pipeline_arguments, pipeline_parameters
from pipeline.platform import GPU_COUNTS, ClusterPlatform, Resources, SecretEnv, SecretVolume, Toleration, parse_node_selector

# Pipeline parameters that name storage: a pod sees neither this machine's disk nor the other
# pods', so on a cluster they must be gs:// URIs (or empty where the step allows it).
URI_PARAMETERS = {"source": False, "download_store": True, "schema_uri": True, "registry": False}  # name: may be ""
# The same for the annotate DAG (pipeline/annotate_dag.py): its sheet, its store and the model it scores with.
ANNOTATE_URI_PARAMETERS = {"source": False, "download_store": True, "model": False}


# --- the cluster platform as flags ----------------------------------------------------------


def add_platform_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of compile.py (and of submit/schedule, which compile the same way): images, GPU, node pool, secrets."""
    from components.common import images

    g = parser.add_argument_group("cluster (images, GPU node pool, resources, secrets)")
    g.add_argument("--image-cpu", default=images.CPU_IMAGE, metavar="IMG", help="Image of the data steps, built from docker/Dockerfile.cpu (default: %(default)s)")
    g.add_argument("--image-gpu", default=images.GPU_IMAGE, metavar="IMG", help="Image of train and evaluate, built from docker/Dockerfile.gpu (default: %(default)s)")
    g.add_argument("--gpu-type", default=defaults.CLUSTER_GPU_TYPE, help="Accelerator of train: a Kubernetes resource such as nvidia.com/gpu, or on Vertex AI e.g. NVIDIA_TESLA_T4 (default: %(default)s)")
    g.add_argument("--gpu-count", type=int, default=defaults.CLUSTER_GPU_COUNT, choices=GPU_COUNTS, metavar="N", help="GPUs of train, one of 0 1 2 4 8 16; 0 runs it on CPU (default: %(default)s)")
    g.add_argument("--gpu-evaluate", action="store_true", help="Run evaluate on the GPU node pool too")
    g.add_argument("--node-selector", action="append", default=[], metavar="K=V", help="Node label of the GPU node pool, e.g. cloud.google.com/gke-accelerator=nvidia-tesla-t4 (repeatable)")
    g.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT", help="Taint of the GPU node pool to tolerate, e.g. nvidia.com/gpu=present:NoSchedule (repeatable)")
    g.add_argument("--cpu", action="append", default=[], metavar="STEP=REQUEST[:LIMIT]", help="CPU of a step, e.g. convert=8:16 (repeatable; defaults in pipeline/defaults.py)")
    g.add_argument("--memory", action="append", default=[], metavar="STEP=REQUEST[:LIMIT]", help="Memory of a step, e.g. train=24Gi:30Gi (repeatable)")
    g.add_argument("--retries", type=int, default=defaults.CLUSTER_RETRIES, metavar="N", help=f"Retries with backoff of {', '.join(defaults.CLUSTER_RETRY_STEPS)} (default: %(default)s)")
    g.add_argument("--secret-env", action="append", default=[], metavar="SECRET:KEY=ENV[,KEY=ENV]", help="Fill environment variables of every step from a Kubernetes secret (names only; repeatable)")
    g.add_argument("--secret-volume", action="append", default=[], metavar="SECRET:/PATH", help="Mount a Kubernetes secret in every step (repeatable)")
    g.add_argument("--gcp-credentials-secret", metavar="SECRET", help=f"Kubernetes secret holding a service-account {defaults.CLUSTER_CREDENTIALS_FILE}, mounted with GOOGLE_APPLICATION_CREDENTIALS set (instead of workload identity)")


def _steps() -> tuple[str, ...]:
    from pipeline.annotate_dag import STEPS as ANNOTATE_STEPS
    from pipeline.dag import STEPS

    return tuple(STEPS) + tuple(s for s in ANNOTATE_STEPS if s not in STEPS)


def _request_limit(text: str, what: str) -> tuple[str, str, str]:
    step, sep, value = text.partition("=")
    request, _, limit = value.partition(":")
    if not sep or not request:
        raise ClusterError(f"--{what} {text!r}: expected STEP=REQUEST[:LIMIT], e.g. convert=4:8 or train=20Gi:26Gi")
    if step not in _steps():
        raise ClusterError(f"--{what} {text!r}: unknown step {step!r}; the steps are {', '.join(_steps())}")
    return step, request, limit or request


def platform_from_args(args: argparse.Namespace) -> ClusterPlatform:
    """The ClusterPlatform the platform flags describe; ClusterError names the flag that is wrong."""
    try:
        resources = {step: list(values) for step, values in defaults.CLUSTER_RESOURCES.items()}
        for text in args.cpu:
            step, request, limit = _request_limit(text, "cpu")
            resources[step][0:2] = [request, limit]
        for text in args.memory:
            step, request, limit = _request_limit(text, "memory")
            resources[step][2:4] = [request, limit]
        step_resources = {}
        for step, values in resources.items():
            try:
                step_resources[step] = Resources(*values)
            except ValueError as e:
                raise ClusterError(f"--cpu/--memory of step {step}: {e}") from None
        gpu_steps = defaults.CLUSTER_GPU_STEPS + (("evaluate",) if args.gpu_evaluate else ())
        return ClusterPlatform(
            image_cpu=args.image_cpu,
            image_gpu=args.image_gpu,
            gpu_type=args.gpu_type,
            gpu_count=args.gpu_count,
            gpu_steps=gpu_steps,
            node_selectors=dict(parse_node_selector(t) for t in args.node_selector),
            tolerations=[Toleration.parse(t) for t in args.toleration],
            resources=step_resources,
            retries=args.retries,
            secret_envs=[SecretEnv.parse(t) for t in args.secret_env],
            secret_volumes=[SecretVolume.parse(t) for t in args.secret_volume],
            gcp_credentials_secret=args.gcp_credentials_secret,
        )
    except ClusterError:
        raise
    except ValueError as e:
        raise ClusterError(str(e)) from None


# --- submit and schedule --------------------------------------------------------------------


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of submit, schedule and sweep-submit: where to run (KFP or Vertex AI), the run, the platform, the parameters."""
    t = parser.add_argument_group("where (a Kubeflow Pipelines host, or a Vertex AI project and region)")
    t.add_argument("--host", help="KFP API endpoint, e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`, or https://<id>-dot-<region>.pipelines.googleusercontent.com")
    t.add_argument("--namespace", help="KFP namespace (multi-user deployments)")
    t.add_argument("--token-file", metavar="PATH", help="File holding a bearer token for the KFP API (e.g. `gcloud auth print-access-token > f`); read here, never put in the spec")
    t.add_argument("--vertex-project", metavar="PROJECT", help="Google Cloud project of Vertex AI Pipelines (instead of --host)")
    t.add_argument("--vertex-region", metavar="REGION", help="Vertex AI region, e.g. europe-west4")
    r = parser.add_argument_group("run")
    r.add_argument("--pipeline-root", metavar="gs://...", help="Where the steps' artifacts go (required on Vertex AI; KFP defaults to its own bucket)")
    r.add_argument("--service-account", help="Identity the steps run as: a Kubernetes service account bound to a Google service account by workload identity (KFP), or a service-account email (Vertex AI)")
    r.add_argument("--experiment", default=defaults.KFP_EXPERIMENT, help="KFP experiment (default: %(default)s)")
    r.add_argument("--pipeline-name", default=defaults.PIPELINE_NAME, help="Name of the uploaded pipeline in the KFP UI (default: %(default)s)")
    r.add_argument("--version-name", help="Name of the uploaded pipeline version (default: pipeline name + UTC time)")
    r.add_argument("--package", metavar="PIPELINE_YAML", help="Submit this spec from compile.py instead of compiling one with the cluster flags below")
    r.add_argument("--disable-caching", action="store_true", help="Run every step even where KFP holds a cached result")
    add_platform_arguments(parser)
    add_pipeline_parameter_flags(parser)
    parser.epilog = (
        "On a cluster --source, --registry (and --download-store, --schema-uri when given) must be gs:// URIs, "
        "and --download-allow-private is off unless given."
    )


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `pipeline.py submit`: those of the training DAG, and --pipeline annotate with the annotate DAG's."""
    from pipeline.annotate_dag import annotate_pipeline
    from pipeline.cluster.compile import PIPELINES

    add_target_arguments(parser)
    parser.add_argument("--run-name", help="Name of the run (default: pipeline name + UTC time)")
    parser.add_argument("--pipeline", choices=PIPELINES, default="training",
                        help="Which DAG to run: training, or annotate (ingest -> download -> annotate with --model) "
                             "(default: %(default)s)")
    training = {name for name, _, _, _ in pipeline_parameters()}
    add_pipeline_parameter_flags(parser, annotate_pipeline, skip=training, presets=False,
                                 title="annotate parameters (--pipeline annotate)")


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `pipeline.py schedule`."""
    add_target_arguments(parser)
    parser.add_argument("--cron", required=True, help="When to run, e.g. \"0 3 * * 1\" (Mondays 03:00 UTC); 5 fields, or KFP's 6 with seconds first")
    parser.add_argument("--schedule-name", help="Name of the recurring run / schedule (default: pipeline name + \"-retrain\")")


def submit(args: argparse.Namespace) -> int:
    """Starts one run of the pipeline on KFP or Vertex AI. Returns the exit status."""
    return _main(args, scheduled=False)


def schedule(args: argparse.Namespace) -> int:
    """Creates a recurring run (KFP) or a schedule (Vertex AI) of the pipeline. Returns the exit status."""
    return _main(args, scheduled=True)


def _main(args: argparse.Namespace, scheduled: bool) -> int:
    try:
        where = check_target(args)
        params = cluster_parameters(args, scheduled)
        if getattr(args, "pipeline", "training") == "annotate" and args.pipeline_name == defaults.PIPELINE_NAME:
            args.pipeline_name = defaults.ANNOTATE_PIPELINE_NAME  # a pipeline of its own in the KFP UI
        when = None
        if scheduled:
            when = cron.kfp_cron(args.cron) if where == "kfp" else cron.vertex_cron(args.cron)
        token = read_token(args.token_file) if args.token_file else None
        with tempfile.TemporaryDirectory(prefix="au-pipeline-") as tmp:
            package = _package(args, where, tmp)
            if where == "kfp":
                target = kfp_target(args, token)
                if scheduled:
                    kfp.schedule(target, package, params, when, args.pipeline_name, args.version_name, args.schedule_name)
                else:
                    kfp.submit(target, package, params, args.pipeline_name, args.version_name, args.run_name)
            elif scheduled:
                vertex.schedule(vertex_target(args), package, params, when, args.pipeline_name, args.schedule_name)
            else:
                vertex.submit(vertex_target(args), package, params, args.pipeline_name, args.run_name)
        return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RemoteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def check_target(args: argparse.Namespace) -> str:
    """Which back-end the flags name, kfp (--host) or vertex (--vertex-project/--vertex-region); ClusterError when they
    do not add up."""
    on_vertex = args.vertex_project or args.vertex_region
    if args.host and on_vertex:
        raise ClusterError("pass either --host (Kubeflow Pipelines) or --vertex-project and --vertex-region (Vertex AI), not both")
    if args.host:
        if not re.match(r"^https?://[^/\s]+", args.host):
            raise ClusterError(f"--host {args.host!r}: expected the KFP API endpoint as http(s)://HOST[:PORT][/PATH]")
        if args.pipeline_root and not re.match(r"^(gs|s3|minio)://[^/]+", args.pipeline_root):
            raise ClusterError(f"--pipeline-root {args.pipeline_root!r}: expected a bucket URI, gs://BUCKET/PREFIX (or s3:// / minio://)")
        return "kfp"
    if on_vertex:
        if not (args.vertex_project and args.vertex_region):
            raise ClusterError("Vertex AI needs both --vertex-project and --vertex-region")
        if not (args.pipeline_root or "").startswith("gs://"):
            raise ClusterError("Vertex AI needs --pipeline-root gs://BUCKET/PREFIX, where the steps' artifacts go")
        if args.namespace or args.token_file:
            raise ClusterError("--namespace and --token-file are for a KFP --host; Vertex AI uses your gcloud credentials")
        return "vertex"
    raise ClusterError("where to run? pass --host http(s)://KFP-ENDPOINT (Kubeflow Pipelines) or --vertex-project P --vertex-region R (Vertex AI)")


def kfp_target(args: argparse.Namespace, token: str | None) -> kfp.KfpTarget:
    """The KFP host, experiment and run settings the flags name; token: read from --token-file (read_token)."""
    return kfp.KfpTarget(host=args.host, namespace=args.namespace, token=token, experiment=args.experiment,
                         pipeline_root=args.pipeline_root, service_account=args.service_account,
                         disable_caching=args.disable_caching)


def vertex_target(args: argparse.Namespace) -> vertex.VertexTarget:
    """The Vertex AI project, region and run settings the flags name."""
    return vertex.VertexTarget(project=args.vertex_project, region=args.vertex_region, pipeline_root=args.pipeline_root,
                               service_account=args.service_account, disable_caching=args.disable_caching)


def _pipeline_func(args: argparse.Namespace):
    """The @dsl.pipeline --pipeline names (the training DAG when the command has no --pipeline)."""
    if getattr(args, "pipeline", "training") == "annotate":
        from pipeline.annotate_dag import annotate_pipeline

        return annotate_pipeline
    from pipeline.dag import au_pipeline

    return au_pipeline


def cluster_parameters(args: argparse.Namespace, scheduled: bool) -> dict:
    """The pipeline arguments given as flags, as a cluster run gets them, checked (check_parameters)."""
    pipeline_func = _pipeline_func(args)
    params = pipeline_arguments(args, pipeline_func)
    if getattr(args, "pipeline", "training") == "annotate":
        # The training DAG's parameters (and --preset) are not the annotate DAG's.
        names = {name for name, _, _, _ in pipeline_parameters(pipeline_func)}
        extra = sorted(set(pipeline_arguments(args)) - names)
        if extra:
            raise ClusterError(f"--pipeline annotate takes no {', '.join('--' + n.replace('_', '-') for n in extra)}: "
                               "those are the training DAG's")
        params.setdefault("download_allow_private", False)
        check_parameters(params, scheduled, pipeline_func, ANNOTATE_URI_PARAMETERS)
        return params
    # On a cluster the download step faces the internet and the cloud's metadata server.
    params.setdefault("download_allow_private", False)
    check_parameters(params, scheduled)
    return params


def check_parameters(params: dict, scheduled: bool, pipeline_func=None, uri_parameters=None) -> None:
    """The values the run will see (given here, or the spec's defaults) name storage every pod can reach."""
    spec_defaults = {name: default for name, _, default, _ in pipeline_parameters(pipeline_func)}
    for name, may_be_empty in (uri_parameters or URI_PARAMETERS).items():
        value = params.get(name, spec_defaults.get(name, ""))
        flag = "--" + name.replace("_", "-")
        if not value:
            if name == "download_store" and scheduled:
                raise ClusterError(
                    f"a schedule needs {flag} gs://BUCKET/store: each scheduled run then fetches only images "
                    "that no earlier run has downloaded"
                )
            if not may_be_empty:
                raise ClusterError(f"pass {flag} gs://BUCKET/PATH: the pods of a cluster cannot read this machine's files")
            continue
        if name not in params and not value.startswith("gs://"):
            raise ClusterError(
                f"{flag} defaults to {value!r}, a local path no pod can see; pass {flag} gs://BUCKET/PATH"
            )
        if not value.startswith("gs://") or len(value) <= len("gs://"):
            raise ClusterError(
                f"{flag} {value!r}: on a cluster it must be a gs:// URI (a pod sees neither this machine's disk "
                "nor the other pods'), e.g. gs://my-bucket/emotionet/..."
            )
    if not params.get("download_store", spec_defaults.get("download_store")):
        print(
            "note: no --download-store: this run downloads every image; pass --download-store gs://BUCKET/store "
            "so later runs fetch only new ones",
            file=sys.stderr,
        )


def read_token(path: str) -> str:
    """The bearer token in --token-file; it goes in the request header only."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ClusterError(f"--token-file {path!r}: cannot read it ({e.strerror})") from None
    if not token:
        raise ClusterError(f"--token-file {path!r} is empty; expected a bearer token")
    return token


def _package(args: argparse.Namespace, where: str, tmp: str) -> str:
    if args.package:
        if not os.path.isfile(args.package) or not args.package.endswith((".yaml", ".yml")):
            raise ClusterError(f"--package {args.package!r}: expected a pipeline YAML written by compile.py")
        return args.package
    platform = platform_from_args(args)
    if where == "vertex":
        vertex.check_platform(platform)
    return compile_spec(platform, os.path.join(tmp, "pipeline.yaml"), getattr(args, "pipeline", "training"))
