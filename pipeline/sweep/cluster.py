"""The sweep on a cluster: sweep-submit starts a data run, then a train -> evaluate -> push run per grid point, each
pushing into its own candidate registry, and writes the plan; sweep-pick compares the candidates and pushes the best."""
from __future__ import annotations

import json
import os
import sys
import tempfile

from components.common.model import MODEL_CONFIG_FILE
from components.push.params import SPEC as PUSH
from pipeline import defaults
from pipeline.cluster import ClusterError, RemoteError, kfp, utc_stamp
from pipeline.cluster.compile import compile_pipeline
from pipeline.platform import ClusterPlatform
from pipeline.sweep.compare import SELECTION, choose_best, format_console, load_point, read_json, write_comparison
from pipeline.sweep.dag import DATA_STEPS, POINT_STEPS, sub_pipeline, with_defaults
from pipeline.sweep.grid import Point, grid_points, point_parameters
from pipeline.sweep.push import push_points


def candidate_registry(registry: str, sweep_id: str, point: Point) -> str:
    """Where a cluster sweep's run pushes its model: its own registry beside the live one's models."""
    from components.common import storage

    return storage.join(registry, defaults.SWEEP_CANDIDATES, sweep_id, point.name)


def shared_examples_uri(pipeline_root: str, sweep_id: str) -> str:
    """Where a cluster sweep's data run publishes the filtered examples that every point run imports."""
    from components.common import storage

    return storage.join(pipeline_root, defaults.SWEEP_CANDIDATES, sweep_id, "examples")


def shared_uris(examples_uri: str) -> dict:
    """{(producer step, output): URI} of what a cluster sweep's data run publishes and every point run imports: the
    filtered examples, and ingest's manifest beside them (evaluate's URL-host and --slice-by slices read it)."""
    from components.common import storage

    return {("filter-examples", "filtered"): examples_uri,
            ("ingest", "manifest"): storage.join(examples_uri.rstrip("/").rsplit("/", 1)[0], "manifest")}


def cluster_data_part(params: dict, examples_uri: str, platform):
    """The data run of a cluster sweep: the data steps once, the filtered examples published to examples_uri (and
    the manifest beside them)."""
    return sub_pipeline(f"{defaults.PIPELINE_NAME}-sweep-data", DATA_STEPS, with_defaults(params), platform=platform,
                        publish_to=shared_uris(examples_uri))


def cluster_runs(params: dict, grid: dict, sweep_id: str, run_prefix: str) -> list[tuple[str, dict, Point]]:
    """(run name, parameters, point) per grid point: each pushes, forced, into its candidate registry only."""
    out = []
    for point in grid_points(grid):
        p = point_parameters(params, point)
        p["registry"] = candidate_registry(params["registry"], sweep_id, point)
        p["force_push"] = True  # every model lands in its candidate registry, so sweep-pick can compare all of them
        out.append((f"{run_prefix}-{point.name}", p, point))
    return out


def cluster_point_part(point_params: dict, examples_uri: str, platform):
    """A point run of a cluster sweep: train -> evaluate -> push on the examples the data run published."""
    return sub_pipeline(f"{defaults.PIPELINE_NAME}-sweep-point", POINT_STEPS + ("push",), with_defaults(point_params),
                        imported=shared_uris(examples_uri), platform=platform)


def submit(target: kfp.KfpTarget, platform: ClusterPlatform, params: dict, grid: dict, run_prefix: str | None = None,
           data_timeout: int = defaults.SWEEP_DATA_TIMEOUT, runs_dir: str = defaults.RUNS_DIR) -> int:
    """Runs the data steps once on the cluster, then one train -> evaluate -> push run per grid point, together, in one
    KFP experiment; writes the plan sweep-pick reads. Returns the exit status.

    The data run publishes its filtered examples to <registry>/sweeps/<sweep-id>/examples; once it has succeeded,
    every point's run imports them from there (a dsl.importer) and pushes, forced, into its own candidate registry,
    never the live one; `pipeline.py sweep-pick` then compares the runs and pushes the best.
    params: the checked cluster parameters (pipeline.cluster.cli.cluster_parameters); run_prefix: of the runs' names
    (default: the sweep id); data_timeout: seconds to wait for the data run; runs_dir: where the plan goes.
    """
    from pipeline.params import pipeline_parameters

    started: list[dict] = []
    data_run: dict = {}
    spec_defaults = {name: default for name, _, default, _ in pipeline_parameters()}
    sweep_id = f"sweep-{utc_stamp()}"
    registry = params.get("registry", spec_defaults["registry"])
    examples_uri = shared_examples_uri(registry, sweep_id)
    prefix = run_prefix or sweep_id
    runs = cluster_runs(params, grid, sweep_id, prefix)
    try:
        with kfp.api_errors(target.host), tempfile.TemporaryDirectory(prefix="au-pipeline-") as tmp:
            _start_runs(target, platform, params, runs, examples_uri, prefix, data_timeout, tmp, data_run, started)
        status = 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        if not data_run:
            return 2
        status = 1
    except RemoteError as e:
        print(f"error: {e}", file=sys.stderr)
        if not data_run:
            return 1
        if data_run.get("state") == "SUCCEEDED":
            print(f"error: only {len(started)} of {len(runs)} point runs started; the plan lists those", file=sys.stderr)
        status = 1
    plan = {
        "sweep_id": sweep_id,
        "host": target.host,
        "experiment": target.experiment,
        "grid": grid,
        "fixed": {k: v for k, v in params.items() if k not in grid},
        "registry": registry,
        "model_name": params.get("model_name", spec_defaults["model_name"]),
        "force_push": params.get("force_push", spec_defaults["force_push"]),
        "keep_versions": params.get("keep_versions", spec_defaults["keep_versions"]),
        "infra_validate": params.get("infra_validate", spec_defaults["infra_validate"]),
        "data_run": data_run,
        "examples_uri": examples_uri,
        "points": started,
    }
    folder = os.path.join(runs_dir, sweep_id)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, defaults.SWEEP_PLAN)
    with open(path, "w") as f:
        json.dump(plan, f, indent=2)
    print(f"sweep {sweep_id}: the data run and {len(started)} point runs in experiment {target.experiment}; plan: {path}")
    if started:
        print(f"when they have finished: python pipeline.py sweep-pick {folder}   (compares them, pushes the best)")
    return status


def _start_runs(target: kfp.KfpTarget, platform: ClusterPlatform, params: dict, runs: list, examples_uri: str,
                prefix: str, data_timeout: int, tmp: str, data_run: dict, started: list[dict]) -> None:
    """Starts the data run and waits for it, then starts every (name, parameters, point) run, all in one experiment;
    each run's spec goes with it. data_run and started are filled in as runs start and end."""
    kfp_client = kfp.client(target)
    experiment = kfp.experiment_id(kfp_client, target)

    def start(name: str, pipeline_func, package: str):
        return kfp.start_package(kfp_client, target, experiment, name, compile_pipeline(pipeline_func, package))

    run_id, url = start(f"{prefix}-data", cluster_data_part(params, examples_uri, platform),
                        os.path.join(tmp, "data.yaml"))
    data_run.update(run_name=f"{prefix}-data", run_id=run_id, run_url=url, state="RUNNING")
    print(f"data run {run_id} (the data steps, once; its filtered examples go to {examples_uri}): {url}")
    print("waiting for it to finish before the points start...", flush=True)
    try:
        finished = kfp_client.wait_for_run_completion(run_id, timeout=data_timeout,
                                                      sleep_duration=defaults.SWEEP_POLL_SECONDS)
    except TimeoutError:
        raise ClusterError(f"the data run has not finished within --data-timeout {data_timeout} s ({url}); "
                           "no point started") from None
    data_run["state"] = str(finished.state)
    if data_run["state"] != "SUCCEEDED":
        raise ClusterError(f"the data run ended {data_run['state']} ({url}): no point started; see its steps' logs "
                           "in the KFP UI, then sweep-submit again")
    for i, (name, point_params, point) in enumerate(runs):
        run_id, url = start(name, cluster_point_part(point_params, examples_uri, platform),
                            os.path.join(tmp, f"point-{i}.yaml"))
        print(f"run {run_id} ({point.label}): {url}")
        started.append({"name": point.name, "parameters": point.values, "run_name": name, "run_id": run_id,
                        "run_url": url, "registry": point_params["registry"]})


def pick(plan: dict, out_dir: str, push: str = defaults.SWEEP_PUSH, force: bool | None = None, say=print) -> dict:
    """Compares the runs of a submitted sweep from their candidate registries and pushes the best to the live one."""
    from components.common import registry as model_registry
    from components.common import storage

    entries = []
    for p in plan["points"]:
        point = Point(p["name"], p["parameters"])
        root = model_registry.model_root(p["registry"], plan["model_name"])
        try:
            version = model_registry.read_latest(root)
        except Exception as e:  # noqa: BLE001 - a registry that cannot be read is a point without a model
            version, why = None, f"{root} cannot be read ({e})"
        else:
            why = f"no model in {root} yet: its run ({p.get('run_url') or p.get('run_id')}) is still going or failed"
        if not version:
            entries.append(load_point(point, "failed", None, None, why))
            continue
        folder = storage.join(root, version)
        entry = load_point(point, "succeeded", folder, folder)
        entry["seconds"] = {"train": read_json(folder, MODEL_CONFIG_FILE).get("train_seconds")}
        entry["seconds"] = {k: v for k, v in entry["seconds"].items() if v is not None}
        entries.append(entry)
    record = {
        "sweep_id": plan["sweep_id"],
        "grid": plan["grid"],
        "fixed": plan.get("fixed", {}),
        "selection": SELECTION,
        "push_mode": push,
        "data": {"ok": True, "error": "", "seconds": 0.0,
                 "note": "on the cluster: the data run " + str((plan.get("data_run") or {}).get("run_url", "")) + ", once"},
        "points": entries,
    }
    best = choose_best(entries)
    record["best"] = best["name"] if best else None
    params = {"registry": plan["registry"], "model_name": plan["model_name"],
              "force_push": plan.get("force_push", PUSH.defaults.force) if force is None else force,
              "keep_versions": plan.get("keep_versions", PUSH.defaults.keep),
              "infra_validate": plan.get("infra_validate", PUSH.defaults.infra_validate)}
    record["pushed"] = push_points(entries, best, push, params, lambda e: os.path.join(out_dir, e["name"], "push"))
    for e in entries:
        e.pop("_push", None)
    record["ok"] = all(e["status"] == "succeeded" for e in entries)
    record["error"] = "" if record["ok"] else "points without a model: " + ", ".join(
        e["name"] for e in entries if e["status"] != "succeeded")
    write_comparison(out_dir, record, entries)
    say("\n" + format_console(record, entries))
    return record
