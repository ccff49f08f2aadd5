"""pipeline.py deploy: the KServe manifest checked against KServe's CRD schema, and Vertex AI against a stand-in SDK."""
from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import yaml

from components.common import images
from pipeline import deploy

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "kserve" / "inferenceservice_v1beta1_schema.json").read_text())
VERSION = "20260101T000000Z-abcdef12"


def check_schema(value, schema: dict, where: str = "") -> list[str]:
    """The openAPIV3Schema rules the kept part uses (no jsonschema in .venv): type, required, properties (a field the
    schema does not know is an error: the API server would drop it), items, enum, additionalProperties and
    Kubernetes' int-or-string."""
    if schema.get("x-kubernetes-int-or-string"):
        return [] if isinstance(value, (int, str)) and not isinstance(value, bool) else [f"{where}: not int or string"]
    kind = schema.get("type")
    types_ = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool, "number": (int, float)}
    if kind and not isinstance(value, types_[kind]) or (kind in ("integer", "number") and isinstance(value, bool)):
        return [f"{where}: {type(value).__name__}, the schema says {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    problems = []
    if kind == "object":
        props = schema.get("properties")
        problems += [f"{where}.{k}: required" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if props is not None and k in props:
                problems += check_schema(v, props[k], f"{where}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += check_schema(v, schema["additionalProperties"], f"{where}.{k}")
            elif props is not None:
                problems.append(f"{where}.{k}: unknown field")
    if kind == "array" and "items" in schema:
        for i, v in enumerate(value):
            problems += check_schema(v, schema["items"], f"{where}[{i}]")
    return problems


def _registry(tmp_path: Path, name: str = "au-detector") -> str:
    root = tmp_path / "registry" / name
    (root / VERSION / "saved_model").mkdir(parents=True)
    (root / VERSION / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    (root / VERSION / "push.json").write_text("{}")
    (root / "LATEST").write_text(VERSION + "\n")
    return str(root)


def test_the_kserve_manifest_fits_kserves_crd_schema(tmp_path, capsys):
    root = _registry(tmp_path)
    out = tmp_path / "isvc.yaml"
    main = _load_pipeline_main()
    assert main(["deploy", "--model", root, "--kserve", str(out)]) == 0 and "wrote the InferenceService" in capsys.readouterr().out
    manifest = yaml.safe_load(out.read_text())
    assert check_schema(manifest, SCHEMA["openAPIV3Schema"]) == []
    assert manifest["apiVersion"] == f"{SCHEMA['crd']['group']}/{SCHEMA['crd']['version']}"
    assert manifest["kind"] == SCHEMA["crd"]["kind"] and manifest["metadata"]["name"] == "au-detector"
    (c,) = manifest["spec"]["predictor"]["containers"]
    assert c["image"] == images.CPU_IMAGE and c["command"] == ["python", "-m", "components.serve"]
    assert c["args"][:2] == ["--model", "$(STORAGE_URI)"] and {"name": "STORAGE_URI",
                                                              "value": f"{root}/{VERSION}"} in c["env"]
    assert c["ports"][0]["containerPort"] == 8080 and c["args"][c["args"].index("--port") + 1] == "8080"
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]


def test_the_schema_check_catches_what_the_api_server_would_refuse_or_drop():
    good = deploy.kserve_manifest("gs://b/r/au/" + VERSION, VERSION, "au")
    assert check_schema(good, SCHEMA["openAPIV3Schema"]) == []
    bad = json.loads(json.dumps(good))
    c = bad["spec"]["predictor"]["containers"][0]
    c["ports"][0]["containerPort"] = "8080"
    c["readinessProbe"]["httpGet"]["pathh"] = "/x"
    del bad["spec"]["predictor"]["containers"][0]["name"]
    problems = check_schema(bad, SCHEMA["openAPIV3Schema"])
    assert any("containerPort: str" in p for p in problems) and any("pathh: unknown field" in p for p in problems)
    assert any(p.endswith(".name: required") for p in problems)
    assert check_schema({"apiVersion": deploy.KSERVE_API, "kind": "InferenceService", "spec": {}},
                        SCHEMA["openAPIV3Schema"]) == [".spec.predictor: required"]


def test_names_become_dns_labels():
    assert deploy.k8s_name("AU_Detector.v2") == "au-detector-v2" and deploy.k8s_name("12x") == "m-12x"


class _FakeAiplatform(types.ModuleType):
    """Stands in for google.cloud.aiplatform; records what deploy asks of it."""

    def __init__(self):
        super().__init__("google.cloud.aiplatform")
        self.calls = []
        calls = self.calls

        class Endpoint:
            def __init__(self, endpoint_name, **kwargs):
                calls.append(("Endpoint", {"endpoint_name": endpoint_name, **kwargs}))
                self.resource_name = f"projects/p/locations/r/endpoints/{endpoint_name}"

            @classmethod
            def create(cls, **kwargs):
                calls.append(("Endpoint.create", kwargs))
                e = cls.__new__(cls)
                e.resource_name = "projects/p/locations/r/endpoints/new-1"
                return e

        class Model:
            @classmethod
            def upload(cls, **kwargs):
                calls.append(("Model.upload", kwargs))
                m = cls()
                m.resource_name = "projects/p/locations/r/models/m-1"
                return m

            def deploy(self, **kwargs):
                calls.append(("Model.deploy", kwargs))

        self.Endpoint, self.Model = Endpoint, Model
        self.init = lambda **kwargs: calls.append(("init", kwargs))


def _real_signature_names(cls: str, method: str) -> set:
    """Argument names of aiplatform.<cls>.<method>, read from its source without the slow import."""
    spec = importlib.util.find_spec("google.cloud.aiplatform")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("google-cloud-aiplatform is not installed")
    source = Path(list(spec.submodule_search_locations)[0]) / "models.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    return {a.arg for a in item.args.args + item.args.kwonlyargs}
    raise AssertionError(f"{cls}.{method} not found in {source}")


def _load_pipeline_main():
    spec = importlib.util.spec_from_file_location("pipeline_cli", Path(__file__).parents[2] / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_vertex_uploads_the_version_with_the_cpu_image_then_deploys_it(monkeypatch, capsys):
    real = {m: _real_signature_names("Model", m) for m in ("upload", "deploy")}  # before the stand-in is put in
    fake = _FakeAiplatform()
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform", fake)
    monkeypatch.setattr(deploy, "resolve", lambda uri: (f"gs://bkt/registry/au/{VERSION}", VERSION))
    args = ["deploy", "--model", "gs://bkt/registry/au", "--vertex-project", "p", "--vertex-region", "europe-west4"]
    main = _load_pipeline_main()
    assert main(args) == 0
    assert f"deployed version {VERSION}" in capsys.readouterr().out
    names = [c[0] for c in fake.calls]
    assert names == ["init", "Model.upload", "Endpoint.create", "Model.deploy"]
    (_, init), (_, upload), (_, created), (_, deployed) = fake.calls
    assert init == {"project": "p", "location": "europe-west4"}
    assert upload["artifact_uri"] == f"gs://bkt/registry/au/{VERSION}"
    assert upload["serving_container_image_uri"] == images.CPU_IMAGE
    assert upload["serving_container_ports"] == [8080]
    assert upload["serving_container_predict_route"] == "/predict"
    assert upload["serving_container_health_route"] == "/health"
    assert created["display_name"] == "au" and deployed["traffic_percentage"] == 100
    assert deployed["endpoint"].resource_name.endswith("/new-1")
    # Only arguments the real SDK takes.
    assert set(upload) <= real["upload"] and set(deployed) <= real["deploy"]

    fake.calls.clear()
    assert main([*args, "--endpoint", "123"]) == 0
    assert [c[0] for c in fake.calls] == ["init", "Model.upload", "Endpoint", "Model.deploy"]


def test_deploy_refuses_what_it_cannot_do(tmp_path, monkeypatch, capsys):
    main = _load_pipeline_main()
    root = _registry(tmp_path)
    assert main(["deploy", "--model", root]) == 2
    assert "say where to deploy" in capsys.readouterr().err
    assert main(["deploy", "--model", root, "--vertex-project", "p", "--vertex-region", "r"]) == 2
    assert "not in Cloud Storage" in capsys.readouterr().err
    unpushed = tmp_path / "model"
    (unpushed / "saved_model").mkdir(parents=True)
    (unpushed / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    assert main(["deploy", "--model", str(unpushed), "--kserve", "-"]) == 2
    assert "never pushed" in capsys.readouterr().err
