"""The OpenAPI document generated from the protos is valid, describes the JSON error shape and leaves internal
RPCs out; Envoy serves it and Swagger UI at GET /docs without a key; headless Chromium renders the Predict operation
(a screenshot is kept for a human to look at)."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import urllib.request

import pytest
from openapi_spec_validator import validate

from services.common.access import access_table
from tests.deploy.envoy_stats import StatsEnvoy, gateway_env
from tests.deploy.tools import require
from tools import openapi

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "var" / "docs-screenshot.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def spec() -> dict:
    require(openapi.PLUGIN, "docs-tools")
    return openapi.document()


def test_document_is_valid_and_maps_every_routed_rpc(spec):
    validate(spec)
    operations = {(op["tags"][0], op["operationId"].rstrip("0123456789"))
                  for path in spec["paths"].values() for op in path.values()}
    routed = {(e.service.rsplit(".", 1)[-1], e.method) for e in access_table().values()  # the Open Inference
              if e.routing != "internal" and not e.client_streaming and not e.server_streaming  # Protocol is
              and e.service.startswith("churn.v1.")}  # gRPC only
    internal = {(e.service.rsplit(".", 1)[-1], e.method) for e in access_table().values() if e.routing == "internal"}
    assert ("InferenceService", "Predict") in operations
    assert not operations & internal
    assert routed <= operations, routed - operations


def test_errors_are_google_rpc_status_and_public_routes_need_only_the_key(spec):
    status = spec["definitions"]["rpcStatus"]["properties"]
    assert set(status) == {"code", "message", "details"}
    for path, operations in spec["paths"].items():
        for verb, operation in operations.items():
            assert operation["responses"]["default"]["schema"] == {"$ref": "#/definitions/rpcStatus"}, (verb, path)
    assert spec["paths"]["/v1/auth/token"]["post"]["security"] == [{"apiKey": []}]
    assert spec["paths"]["/v1/predict"]["post"]["security"] == [{"apiKey": [], "bearer": []}]


def test_http_bodies_are_described_as_they_travel(spec):
    """HttpBody goes raw through Envoy's transcoder: CSV in (other fields in the query), the report as HTML or JSON."""
    for path, operations in spec["paths"].items():
        for verb, operation in operations.items():
            bodies = [p.get("schema") for p in operation.get("parameters", [])] + [operation["responses"]["200"]]
            assert "#/definitions/apiHttpBody" not in json.dumps(bodies), (verb, path)
    predict_csv = spec["paths"]["/v1/predict:csv"]["post"]
    assert predict_csv["consumes"] == ["text/csv"]
    assert {(p["in"], p["name"]) for p in predict_csv["parameters"]} == {("body", "body"), ("query", "explain_top_k")}
    upload = spec["paths"]["/v1/data/training"]["post"]
    assert upload["consumes"] == ["text/csv"] and "name" in {p["name"] for p in upload["parameters"]}
    assert spec["paths"]["/v1/monitoring/drift"]["get"]["produces"] == ["text/html", "application/json"]
    assert spec["paths"]["/.well-known/jwks.json"]["get"]["produces"] == ["application/json"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    require(openapi.PLUGIN, "docs-tools")
    openapi.build()
    envoy = StatsEnvoy(gateway_env(tmp_path_factory.mktemp("env")), tmp_path_factory.mktemp("envoy"))
    yield f"http://127.0.0.1:{envoy.ports['gateway']}"
    envoy.stop()


def test_gateway_serves_docs_without_a_key(gateway):
    with urllib.request.urlopen(f"{gateway}/docs", timeout=5) as page:
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        assert b"swagger-ui-bundle.js" in page.read()
    with urllib.request.urlopen(f"{gateway}/docs/openapi.json", timeout=5) as document:
        validate(json.loads(document.read()))
    with urllib.request.urlopen(f"{gateway}/docs/swagger-ui-bundle.js", timeout=5) as bundle:
        assert len(bundle.read()) > 500_000


def test_chromium_renders_the_predict_operation(gateway, tmp_path):
    chromium = require("chromium", "browser-tools")
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000"]
    rendered = ""
    for _ in range(3):  # a first Chromium start on a fresh profile may spend the budget starting up
        dom = subprocess.run([*flags, "--dump-dom", f"{gateway}/docs"], capture_output=True, text=True, timeout=120)
        rendered = dom.stdout
        if 'class="opblock-summary-path"' in rendered:
            break
    assert 'data-path="/v1/predict"' in rendered, rendered[-2000:]
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shot = subprocess.run([*flags, "--window-size=1280,2200", f"--screenshot={tmp_path / 'docs.png'}",
                           f"{gateway}/docs#/InferenceService/Predict"], capture_output=True, text=True, timeout=120)
    assert (tmp_path / "docs.png").stat().st_size > 20_000, shot.stderr[-2000:]
    shutil.copyfile(tmp_path / "docs.png", SCREENSHOT)
