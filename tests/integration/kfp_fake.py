"""A loopback fake of the Kubeflow Pipelines v2beta1 REST API that records what the real kfp.Client sends.

Serves just what `pipeline.py submit|schedule` uses: healthz, experiments, pipelines (list, upload,
upload_version, versions), runs and recurring runs. Everything received is kept: `requests` (method,
path, query, headers, body), the uploaded specs (parsed YAML documents), the run and recurring-run bodies.
"""
from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

API = "/apis/v2beta1"


class FakeKFP:
    """`with FakeKFP() as kfp: kfp.Client(host=kfp.url)`; `fail` maps "METHOD /path" to an HTTP status to answer;
    a run that is asked for (GET /runs/ID) is in `run_state` (finished at once)."""

    def __init__(self, fail: dict[str, int] | None = None, run_state: str = "SUCCEEDED"):
        self.fail = dict(fail or {})
        self.run_state = run_state
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}  # version id -> version, with "spec": the uploaded YAML documents
        self.runs: list[dict] = []
        self.recurring_runs: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeKFP":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    # --- the API ------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> tuple[int, dict]:
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "headers": headers, "body": body})
            key = f"{method} {path[len(API):]}"
            if key in self.fail:
                return self.fail[key], {"error": f"fake failure of {key}", "code": self.fail[key]}
            route = path[len(API):].strip("/").split("/")
            if method == "GET" and route == ["healthz"]:
                return 200, {"multi_user": False, "commit_sha": "fake", "tag_name": "2.4.0"}
            if route[0] == "experiments":
                return self._experiments(method, query, body)
            if route[0] == "pipelines":
                return self._pipelines(method, route[1:], query, headers, body)
            if method == "POST" and route == ["runs"]:
                run = json.loads(body)
                run.update(run_id=self._id("run"), state="PENDING")
                self.runs.append(run)
                return 200, run
            if method == "GET" and len(route) == 2 and route[0] == "runs":
                run = next((r for r in self.runs if r["run_id"] == route[1]), None)
                if run is None:
                    return 404, {"error": f"no run {route[1]}", "code": 5}
                return 200, {**run, "state": self.run_state}
            if method == "POST" and route == ["recurringruns"]:
                recurring = json.loads(body)
                recurring.update(recurring_run_id=self._id("recurring"), status="ENABLED")
                self.recurring_runs.append(recurring)
                return 200, recurring
            return 404, {"error": f"the fake KFP has no {method} {path}", "code": 5}

    def _experiments(self, method, query, body):
        if method == "POST":
            experiment = json.loads(body)
            experiment["experiment_id"] = self._id("experiment")
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        found = [e for e in self.experiments.values() if _matches(e, query)]
        return 200, ({"experiments": found, "total_size": len(found)} if found else {})

    def _pipelines(self, method, route, query, headers, body):
        if method == "GET" and not route:
            found = [p for p in self.pipelines.values() if _matches(p, query)]
            return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
        if method == "POST" and route in (["upload"], ["upload_version"]):
            spec = list(yaml.safe_load_all(_multipart_file(headers, body, "uploadfile")))
            if route == ["upload"]:
                pipeline = {
                    "pipeline_id": self._id("pipeline"),
                    "display_name": query["name"],
                    "description": query.get("description", ""),
                }
                self.pipelines[pipeline["pipeline_id"]] = pipeline
                self._add_version(pipeline["pipeline_id"], query["name"], spec)
                return 200, pipeline
            if query.get("pipelineid") not in self.pipelines:
                return 404, {"error": f"no pipeline {query.get('pipelineid')}", "code": 5}
            return 200, _public(self._add_version(query["pipelineid"], query["name"], spec))
        if method == "GET" and len(route) == 2 and route[1] == "versions":
            found = [_public(v) for v in self.versions.values() if v["pipeline_id"] == route[0]]
            found.sort(key=lambda v: v["created_at"], reverse="desc" in query.get("sort_by", ""))
            found = found[: int(query.get("page_size", len(found)) or len(found))]
            return 200, {"pipeline_versions": found, "total_size": len(found)}
        return 404, {"error": f"the fake KFP has no {method} pipelines/{'/'.join(route)}", "code": 5}

    def _add_version(self, pipeline_id: str, name: str, spec: list) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._id("version"),
            "display_name": name,
            # Ordered like timestamps; the real server returns RFC 3339 times.
            "created_at": f"2030-01-01T00:00:{len(self.versions):02d}Z",
            "spec": spec,
        }
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = fake.handle(self.command, parsed.path, query, headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args):  # keep test output quiet
                pass

        return Handler


def _public(version: dict) -> dict:
    return {k: v for k, v in version.items() if k != "spec"}


def _matches(item: dict, query: dict) -> bool:
    """The display_name EQUALS predicate kfp.Client sends in `filter`; no filter matches everything."""
    if "filter" not in query:
        return True
    predicates = json.loads(query["filter"]).get("predicates", [])
    return all(item.get(p["key"]) == p.get("stringValue", p.get("string_value")) for p in predicates)


def _multipart_file(headers: dict, body: bytes, field: str) -> bytes:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field:
            return part.get_payload(decode=True)
    raise ValueError(f"multipart body has no {field!r} part")
