"""The cluster side of the CLI: compile the DAG for a cluster, submit one run, schedule retraining.

Kubeflow Pipelines through `kfp.Client` (`--host`), or Vertex AI Pipelines through
google-cloud-aiplatform (`--vertex-project/--vertex-region`). pipeline.py and compile.py
parse the command line with the helpers here and call `submit`, `schedule` or `compile_spec`.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import tempfile

from pipeline import defaults
from pipeline.params import add_pipeline_parameter_flags, pipeline_arguments, pipeline_parameters
from pipeline.platform import GPU_COUNTS, ClusterPlatform, Resources, SecretEnv, SecretVolume, Toleration, parse_node_selector

# Pipeline parameters that name storage: a pod sees neither this machine's disk nor the other
# pods', so on a cluster they must be gs:// URIs (or empty where the step allows it).
URI_PARAMETERS = {"source": False, "download_store": True, "schema_uri": True, "registry": False}  # name: may be ""
_CRON_FIELD = re.compile(r"^[0-9*?/,\-A-Za-z#LW]+$")
_CRON_DESCRIPTOR = re.compile(r"^@(yearly|annually|monthly|weekly|daily|midnight|hourly|every ([0-9]+(\.[0-9]+)?(h|m|s|ms))+)$")


class ClusterError(ValueError):
    """A problem with what the user asked for; the CLI prints it and exits with 2."""


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
    from pipeline.dag import STEPS

    return tuple(STEPS)


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


def compile_spec(platform: ClusterPlatform, output: str) -> str:
    """Writes the pipeline spec (KFP IR YAML, with the kfp-kubernetes platform spec) for `platform` to `output`."""
    from kfp import compiler

    from pipeline.dag import build_pipeline

    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build_pipeline(platform), package_path=output)
    return output


# --- cron -----------------------------------------------------------------------------------


def _check_fields(fields: list[str], cron: str) -> None:
    for f in fields:
        if not _CRON_FIELD.match(f):
            raise ClusterError(f"--cron {cron!r}: field {f!r} is not a cron field (digits, * , - / ? and names)")


def kfp_cron(cron: str) -> str:
    """KFP's cron has a seconds field first (6 fields); a usual 5-field cron gets second 0."""
    text = " ".join(cron.split())
    if text.startswith("@"):
        # The scheduler's own descriptors: @hourly, @daily, @every 6h...
        if not _CRON_DESCRIPTOR.match(text):
            raise ClusterError(f"--cron {cron!r}: expected @hourly, @daily, @weekly, @monthly, @yearly or @every 6h")
        return text
    fields = text.split(" ")
    if len(fields) == 5:
        fields = ["0"] + fields
    if len(fields) != 6:
        raise ClusterError(
            f"--cron {cron!r}: expected 5 fields (minute hour day month weekday, e.g. \"0 3 * * 1\" = Mondays 03:00) "
            "or KFP's 6 (second first, e.g. \"0 0 3 * * 1\")"
        )
    _check_fields(fields, cron)
    return " ".join(fields)


def vertex_cron(cron: str) -> str:
    """Vertex AI schedules take the usual 5 fields, optionally after TZ=Area/City; a 6-field KFP cron loses second 0."""
    text = " ".join(cron.split())
    tz = ""
    if text.startswith(("TZ=", "CRON_TZ=")):
        tz, _, text = text.partition(" ")
    fields = text.split(" ") if text else []
    if len(fields) == 6:
        if fields[0] != "0":
            raise ClusterError(f"--cron {cron!r}: Vertex AI schedules have no seconds field; the first of 6 fields must be 0")
        fields = fields[1:]
    if len(fields) != 5:
        raise ClusterError(f"--cron {cron!r}: expected 5 fields (minute hour day month weekday), optionally after TZ=Area/City")
    _check_fields(fields, cron)
    return " ".join(([tz] if tz else []) + fields)


# --- submit and schedule --------------------------------------------------------------------


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
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
    """Flags of `pipeline.py submit`."""
    _add_target_arguments(parser)
    parser.add_argument("--run-name", help="Name of the run (default: pipeline name + UTC time)")


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `pipeline.py schedule`."""
    _add_target_arguments(parser)
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
        target = _check_target(args)
        params = pipeline_arguments(args)
        # On a cluster the download step faces the internet and the cloud's metadata server.
        params.setdefault("download_allow_private", False)
        _check_parameters(params, scheduled)
        cron = None
        if scheduled:
            cron = kfp_cron(args.cron) if target == "kfp" else vertex_cron(args.cron)
        token = _read_token(args.token_file) if args.token_file else None
        with tempfile.TemporaryDirectory(prefix="au-pipeline-") as tmp:
            package = _package(args, target, tmp)
            if target == "kfp":
                return _kfp(args, package, params, cron, token)
            return _vertex(args, package, params, cron)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _check_target(args: argparse.Namespace) -> str:
    vertex = args.vertex_project or args.vertex_region
    if args.host and vertex:
        raise ClusterError("pass either --host (Kubeflow Pipelines) or --vertex-project and --vertex-region (Vertex AI), not both")
    if args.host:
        if not re.match(r"^https?://[^/\s]+", args.host):
            raise ClusterError(f"--host {args.host!r}: expected the KFP API endpoint as http(s)://HOST[:PORT][/PATH]")
        if args.pipeline_root and not re.match(r"^(gs|s3|minio)://[^/]+", args.pipeline_root):
            raise ClusterError(f"--pipeline-root {args.pipeline_root!r}: expected a bucket URI, gs://BUCKET/PREFIX (or s3:// / minio://)")
        return "kfp"
    if vertex:
        if not (args.vertex_project and args.vertex_region):
            raise ClusterError("Vertex AI needs both --vertex-project and --vertex-region")
        if not (args.pipeline_root or "").startswith("gs://"):
            raise ClusterError("Vertex AI needs --pipeline-root gs://BUCKET/PREFIX, where the steps' artifacts go")
        if args.namespace or args.token_file:
            raise ClusterError("--namespace and --token-file are for a KFP --host; Vertex AI uses your gcloud credentials")
        return "vertex"
    raise ClusterError("where to run? pass --host http(s)://KFP-ENDPOINT (Kubeflow Pipelines) or --vertex-project P --vertex-region R (Vertex AI)")


def _check_parameters(params: dict, scheduled: bool) -> None:
    """The values the run will see (given here, or the spec's defaults) name storage every pod can reach."""
    spec_defaults = {name: default for name, _, default, _ in pipeline_parameters()}
    for name, may_be_empty in URI_PARAMETERS.items():
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


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ClusterError(f"--token-file {path!r}: cannot read it ({e.strerror})") from None
    if not token:
        raise ClusterError(f"--token-file {path!r} is empty; expected a bearer token")
    return token


def _package(args: argparse.Namespace, target: str, tmp: str) -> str:
    if args.package:
        if not os.path.isfile(args.package) or not args.package.endswith((".yaml", ".yml")):
            raise ClusterError(f"--package {args.package!r}: expected a pipeline YAML written by compile.py")
        return args.package
    platform = platform_from_args(args)
    kubernetes_only = platform.node_selectors or platform.tolerations or platform.secret_envs or platform.secret_volumes
    if target == "vertex" and (kubernetes_only or platform.gcp_credentials_secret):
        raise ClusterError(
            "--node-selector, --toleration and the secret flags are for Kubernetes (KFP); Vertex AI picks the "
            "machine from --gpu-type and the step's resources, and runs the steps as --service-account"
        )
    if target == "vertex" and "/" in platform.gpu_type and platform.gpu_count:
        raise ClusterError(
            f"--gpu-type {platform.gpu_type!r} is a Kubernetes resource; Vertex AI wants an accelerator name, "
            "e.g. --gpu-type NVIDIA_TESLA_T4 or NVIDIA_L4"
        )
    return compile_spec(platform, os.path.join(tmp, "pipeline.yaml"))


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _kfp(args, package: str, params: dict, cron: str | None, token: str | None) -> int:
    import kfp
    import kfp_server_api
    import urllib3

    try:
        client = kfp.Client(host=args.host, namespace=args.namespace or "kubeflow", existing_token=token)
        pipeline_id, version_id = _upload(client, args, package)
        experiment = client.create_experiment(name=args.experiment, namespace=args.namespace)
        enable_caching = False if args.disable_caching else None
        if cron is None:
            run = client.run_pipeline(
                experiment_id=experiment.experiment_id,
                job_name=args.run_name or f"{args.pipeline_name}-{_stamp()}",
                params=params,
                pipeline_id=pipeline_id,
                version_id=version_id,
                pipeline_root=args.pipeline_root,
                enable_caching=enable_caching,
                service_account=args.service_account,
            )
            print(f"run {run.run_id} started: {args.host.rstrip('/')}/#/runs/details/{run.run_id}")
        else:
            name = args.schedule_name or f"{args.pipeline_name}-retrain"
            recurring = client.create_recurring_run(
                experiment_id=experiment.experiment_id,
                job_name=name,
                description=f"Scheduled retraining ({cron}); each run downloads only what the download store lacks.",
                cron_expression=cron,
                # Runs share the download store: one at a time, and no backfill of missed times.
                max_concurrency=1,
                no_catchup=True,
                params=params,
                pipeline_id=pipeline_id,
                version_id=version_id,
                pipeline_root=args.pipeline_root,
                enable_caching=enable_caching,
                service_account=args.service_account,
            )
            print(
                f"recurring run {recurring.recurring_run_id} ({name}, cron {cron!r}): "
                f"{args.host.rstrip('/')}/#/recurringrun/details/{recurring.recurring_run_id}"
            )
        return 0
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError, TimeoutError) as e:
        print(f"error: {_kfp_error(args, e)}", file=sys.stderr)
        return 1


def _kfp_error(args, e: Exception) -> str:
    """What went wrong talking to the KFP API, for the user."""
    import kfp_server_api

    if isinstance(e, kfp_server_api.ApiException):
        body = (e.body or "").strip() if isinstance(e.body, str) else e.body
        return f"KFP at {args.host} answered {e.status} {e.reason}: {body}"
    return f"cannot reach KFP at {args.host}: {e}. Is the endpoint right (port-forward running)?"


def _upload(client, args, package: str) -> tuple[str, str]:
    """Uploads the spec as a new version of the named pipeline (creating it the first time), so the KFP UI lists it."""
    pipeline_id = client.get_pipeline_id(args.pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            package, pipeline_name=args.pipeline_name, description=defaults.PIPELINE_DESCRIPTION, namespace=args.namespace
        )
        versions = client.list_pipeline_versions(pipeline.pipeline_id, sort_by="created_at desc", page_size=1)
        if not versions.pipeline_versions:
            raise ClusterError(f"KFP at {args.host} created pipeline {pipeline.pipeline_id} without a version")
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(
        package,
        pipeline_version_name=args.version_name or f"{args.pipeline_name}-{_stamp()}",
        pipeline_id=pipeline_id,
        description=defaults.PIPELINE_DESCRIPTION,
    )
    return pipeline_id, version.pipeline_version_id


def _vertex(args, package: str, params: dict, cron: str | None) -> int:
    try:
        from google.cloud import aiplatform
    except ImportError:
        raise ClusterError(
            "Vertex AI needs google-cloud-aiplatform: pip install google-cloud-aiplatform "
            "(or use --host with a Kubeflow Pipelines endpoint)"
        ) from None
    from google.api_core import exceptions as google_exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        job = aiplatform.PipelineJob(
            display_name=getattr(args, "run_name", None) or f"{args.pipeline_name}-{_stamp()}",
            template_path=package,
            pipeline_root=args.pipeline_root,
            parameter_values=params,
            enable_caching=False if args.disable_caching else None,
            project=args.vertex_project,
            location=args.vertex_region,
        )
        if cron is None:
            job.submit(service_account=args.service_account)
            print(f"Vertex AI pipeline job {job.resource_name} started")
        else:
            name = args.schedule_name or f"{args.pipeline_name}-retrain"
            sched = job.create_schedule(
                cron=cron, display_name=name, max_concurrent_run_count=1, service_account=args.service_account
            )
            print(f"Vertex AI schedule {sched.resource_name} ({name}, cron {cron!r}) created")
        return 0
    except (google_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as e:
        print(f"error: Vertex AI ({args.vertex_project}, {args.vertex_region}) refused: {e}", file=sys.stderr)
        return 1


# --- sweeps ---------------------------------------------------------------------------------


def add_sweep_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `pipeline.py sweep-submit`: those of submit, the grid, and where the sweep's plan is kept."""
    from pipeline import sweep

    _add_target_arguments(parser)
    sweep.add_grid_arguments(parser)
    parser.add_argument("--run-name", help="Prefix of the runs' names (default: the sweep id, sweep-<UTC time>)")
    parser.add_argument("--data-timeout", type=int, default=defaults.SWEEP_DATA_TIMEOUT, metavar="SECONDS",
                        help="How long to wait for the data run before giving up on starting the points "
                             "(default: %(default)s)")
    parser.add_argument("--runs-dir", default=defaults.RUNS_DIR,
                        help=f"Where the sweep's plan ({defaults.SWEEP_PLAN}) is kept for sweep-pick (default: %(default)s)")


def submit_sweep(args: argparse.Namespace) -> int:
    """Runs the data steps once on the cluster, then one train -> evaluate -> push run per grid point, together, in one
    KFP experiment; writes the plan sweep-pick reads.

    The data run publishes its filtered examples to <registry>/sweeps/<sweep-id>/examples; once it has succeeded,
    every point's run imports them from there (a dsl.importer) and pushes, forced, into its own candidate registry,
    never the live one; `pipeline.py sweep-pick` then compares the runs and pushes the best.
    """
    import json

    import kfp_server_api
    import urllib3

    from pipeline import sweep

    started: list[dict] = []
    data_run: dict = {}
    try:
        target = _check_target(args)
        if target != "kfp":
            raise ClusterError("sweep-submit starts Kubeflow Pipelines runs (--host); on Vertex AI start each point "
                               "with pipeline.py submit --run-name NAME and the point's flags")
        if args.package:
            raise ClusterError("sweep-submit compiles its own two parts of the DAG (the data steps once, then train, "
                               "evaluate and push per point): give compile.py's flags (--image-cpu, --image-gpu, "
                               "--node-selector...) instead of --package")
        params = pipeline_arguments(args)
        params.setdefault("download_allow_private", False)
        _check_parameters(params, scheduled=False)
        try:
            grid = sweep.parse_grid(args.grid, sweep.given_flags(args), args.max_points)
        except sweep.SweepError as e:
            raise ClusterError(str(e)) from None
        spec_defaults = {name: default for name, _, default, _ in pipeline_parameters()}
        sweep_id = f"sweep-{_stamp()}"
        registry = params.get("registry", spec_defaults["registry"])
        examples_uri = sweep.shared_examples_uri(registry, sweep_id)
        runs = sweep.cluster_runs(params, grid, sweep_id, args.run_name or sweep_id)
        platform = platform_from_args(args)
        token = _read_token(args.token_file) if args.token_file else None
        with tempfile.TemporaryDirectory(prefix="au-pipeline-") as tmp:
            _kfp_sweep(args, platform, params, runs, examples_uri, args.run_name or sweep_id, token, tmp, data_run,
                       started)
        status = 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        if not data_run:
            return 2
        status = 1
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError, TimeoutError) as e:
        print(f"error: {_kfp_error(args, e)}", file=sys.stderr)
        if not data_run:
            return 1
        if data_run.get("state") == "SUCCEEDED":
            print(f"error: only {len(started)} of {len(runs)} point runs started; the plan lists those", file=sys.stderr)
        status = 1
    plan = {
        "sweep_id": sweep_id,
        "host": args.host,
        "experiment": args.experiment,
        "grid": grid,
        "fixed": {k: v for k, v in params.items() if k not in grid},
        "registry": registry,
        "model_name": params.get("model_name", spec_defaults["model_name"]),
        "force_push": params.get("force_push", spec_defaults["force_push"]),
        "keep_versions": params.get("keep_versions", spec_defaults["keep_versions"]),
        "data_run": data_run,
        "examples_uri": examples_uri,
        "points": started,
    }
    folder = os.path.join(args.runs_dir, sweep_id)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, defaults.SWEEP_PLAN)
    with open(path, "w") as f:
        json.dump(plan, f, indent=2)
    print(f"sweep {sweep_id}: the data run and {len(started)} point runs in experiment {args.experiment}; plan: {path}")
    if started:
        print(f"when they have finished: python pipeline.py sweep-pick {folder}   (compares them, pushes the best)")
    return status


def _kfp_sweep(args, platform, params: dict, runs: list, examples_uri: str, prefix: str, token: str | None,
               tmp: str, data_run: dict, started: list[dict]) -> None:
    """Starts the data run and waits for it, then starts every (name, parameters, point) run, all in one experiment;
    each run's spec goes with it. data_run and started are filled in as runs start and end."""
    import kfp
    from kfp import compiler

    from pipeline import sweep

    client = kfp.Client(host=args.host, namespace=args.namespace or "kubeflow", existing_token=token)
    experiment = client.create_experiment(name=args.experiment, namespace=args.namespace)

    def start(name: str, pipeline_func, package: str):
        compiler.Compiler().compile(pipeline_func, package)
        run = client.run_pipeline(
            experiment_id=experiment.experiment_id,
            job_name=name,
            pipeline_package_path=package,
            params={},
            pipeline_root=args.pipeline_root,
            enable_caching=False if args.disable_caching else None,
            service_account=args.service_account,
        )
        return run.run_id, f"{args.host.rstrip('/')}/#/runs/details/{run.run_id}"

    run_id, url = start(f"{prefix}-data", sweep.cluster_data_part(params, examples_uri, platform),
                        os.path.join(tmp, "data.yaml"))
    data_run.update(run_name=f"{prefix}-data", run_id=run_id, run_url=url, state="RUNNING")
    print(f"data run {run_id} (the data steps, once; its filtered examples go to {examples_uri}): {url}")
    print("waiting for it to finish before the points start...", flush=True)
    try:
        finished = client.wait_for_run_completion(run_id, timeout=args.data_timeout,
                                                  sleep_duration=defaults.SWEEP_POLL_SECONDS)
    except TimeoutError:
        raise ClusterError(f"the data run has not finished within --data-timeout {args.data_timeout} s ({url}); "
                           "no point started") from None
    data_run["state"] = str(finished.state)
    if data_run["state"] != "SUCCEEDED":
        raise ClusterError(f"the data run ended {data_run['state']} ({url}): no point started; see its steps' logs "
                           "in the KFP UI, then sweep-submit again")
    for i, (name, point_params, point) in enumerate(runs):
        run_id, url = start(name, sweep.cluster_point_part(point_params, examples_uri, platform),
                            os.path.join(tmp, f"point-{i}.yaml"))
        print(f"run {run_id} ({point.label}): {url}")
        started.append({"name": point.name, "parameters": point.values, "run_name": name, "run_id": run_id,
                        "run_url": url, "registry": point_params["registry"]})
