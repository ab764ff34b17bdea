"""`make bench-short` end to end: the short mode starts the suite and the two gRPC anchors on loopback, drives them
with h2load and wrk, measures batch, Explain and drift against the bare libraries, and writes RESULTS.md and
results.json of the shape `make bench` publishes. It proves the harness; its numbers mean nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from services.common import mlflow_config
from tests.harness import ROOT

pytestmark = pytest.mark.integration

TARGETS = {"minimal gRPC, no model", "minimal gRPC + model", "suite gRPC direct", "suite gRPC via Envoy",
           "suite REST via Envoy", "Envoy floor (router only) → direct"}


@pytest.fixture()
def load_generators(is_ci):
    missing = [tool for tool in ("h2load", "wrk") if shutil.which(tool) is None]
    if missing:
        if is_ci:
            pytest.fail(f"{missing} missing under CI=true: `make test` installs them (make bench-tools)")
        pytest.skip(f"{missing} not installed (make bench-tools)")


def test_short_bench_writes_results_of_the_published_shape(load_generators, settings, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]))
    done = subprocess.run([sys.executable, "-m", "bench.run", "--short", "--out-dir", str(out),
                           "--workdir", str(tmp_path / "work"), "--tracking-uri", mlflow_config.tracking_uri(settings)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "short"
    assert results["command"].startswith("python -m bench.run --short") and results["commit"]
    assert results["machine"]["cores"] == os.cpu_count() and results["machine"]["python"] and results["machine"]["cpu"]
    points = {p["target"]: p for p in results["single_row"]}
    assert set(points) == TARGETS
    for name, point in points.items():
        assert point["concurrency"] == 1
        # every answer the load generator saw was counted OK by the server itself (±1 in flight at the cut)
        assert point["ok"] > 0 and abs(point["ok"] - point["requests"]) <= 1, (name, point)
        assert 0 < point["p50_ms"] <= point["p99_ms"], (name, point)
    assert points["suite gRPC via Envoy"]["cpu_us_per_ok"]["envoy"] > 0
    assert points["Envoy floor (router only) → direct"]["cpu_us_per_ok"]["envoy"] > 0  # the floor's own Envoy
    assert points["minimal gRPC, no model"]["cpu_us_per_ok"]["server"] > 0  # an anchor's server, for the bounds
    steps = results["single_row_steps_us"]  # a single Predict's steps in-process, on production's model
    assert 0 < steps["model"] < steps["servicer_call"] and 0 < steps["outbox_commit"] < steps["servicer_call"]
    assert steps["intercepted_call"] > 0
    assert results["skipped"] == {"mlflow models serve": "short mode", "BentoML": "short mode"}
    (batch,) = results["batch"]
    assert batch["rows"] == 1000 and batch["served_ms"] > 0 and batch["bare_ms"] > 0
    assert batch["bounds_ms"]["minimal_grpc_server_same_request"] > 0  # the batch path's measured bound
    assert results["explain"]["rows"] == 1000 and results["explain"]["served_ms"] > 0
    assert results["drift"]["rows"] == 500 and results["drift"]["current_rows_reported"] == 500
    for name in ("suite auth", "suite monitoring", "suite production", "suite staging", "suite envoy",
                 "minimal gRPC + model"):
        assert results["start_seconds"][name] > 0 and results["rss_mb"][name] > 0
    by_target = {t["target"]: t for t in results["targets"]}
    assert by_target["p50 added by Envoy at c=1 (ms)"]["met"] in (True, False)
    assert by_target["gRPC via Envoy c=32 vs mlflow models serve"]["met"] is None  # not measured in short mode

    text = (out / "RESULTS.md").read_text()
    for heading in ("## Single row", "## Ratios", "## The issue's targets", "## Batch, Explain, drift",
                    "## Start to SERVING and memory"):
        assert heading in text
    assert "| suite gRPC via Envoy | h2load |" in text
