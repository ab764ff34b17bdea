"""The deploy files as a reviewer would run them: the image lint-clean (hadolint), built from a small context,
non-root and self-checking; compose services with health checks and Grafana; Kubernetes pods hardened and probed;
every secret key a manifest reads is one that tools/init_secrets.py writes; nothing scrapes Envoy's admin."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import yaml

from tools.init_secrets import init_secrets
from tools.health_probe import role_of

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _k8s_docs() -> list[dict]:
    return [doc for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pod_specs() -> list[tuple[str, dict]]:
    return [(doc["metadata"]["name"], doc["spec"]["template"]["spec"]) for doc in _k8s_docs()
            if doc["kind"] in ("Deployment", "StatefulSet", "Job")]


def test_dockerfile_passes_hadolint():
    done = subprocess.run([BIN / "hadolint", "--config", ROOT / ".hadolint.yaml", DOCKERFILE], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_multi_stage_numeric_non_root_and_health_checked():
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    assert re.search(r"^HEALTHCHECK .*tools\.health_probe", text, re.M)
    assert "COPY --from=build /opt/venv" in text


def test_build_context_leaves_out_the_venv_data_and_secrets():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "var", "secrets", ".git", "gen", ".env", ".tools"} <= ignored
    # what the image copies must not be ignored
    for source in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.M):
        assert source.split("/")[0] not in ignored, source


def test_health_probe_finds_the_role_from_the_command():
    assert role_of(["python", "-m", "services.inference", ""]) == "inference"
    assert role_of(["/opt/venv/bin/envoy", "-c", "/data/envoy.yaml"]) == "gateway"
    assert role_of(["python", "-m", "gateway", "run"]) == "gateway"


def test_every_long_running_compose_service_has_a_health_check():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        if service.get("restart") == "no":
            continue
        assert check.get("test") and not check.get("disable"), name


def test_compose_provisions_grafana_with_the_dashboard():
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"])
    for source in mounts:
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    assert mounts["./deploy/grafana/churn-dashboard.json"].startswith("/var/lib/grafana/dashboards/")
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/churn.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_secret_key_the_deploy_files_read_is_one_init_secrets_writes(tmp_path):
    env = {"SECRETS_DIR": str(tmp_path / "secrets"), "DATA_DIR": str(tmp_path / "var")}
    written = {path.name for path in init_secrets(env, with_auth=False).values()}
    written |= {p.name for p in (tmp_path / "secrets").iterdir()} | {"service_token", "monitoring_token"}  # by auth
    assert (tmp_path / "secrets" / "database_password").stat().st_mode & 0o777 == 0o600
    keys = {ref["key"] for doc in _k8s_docs() for ref in _secret_refs(doc)}
    assert keys and keys <= written, keys - written
    compose = (ROOT / "docker-compose.yml").read_text()
    assert set(re.findall(r"/seed/(\w+)", compose)) <= written


def _secret_refs(node):
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def test_no_database_password_in_any_url():
    for path in [ROOT / "docker-compose.yml", *(ROOT / "deploy" / "k8s").glob("*.yaml")]:
        assert not re.search(r"postgresql\+psycopg://[^@/\s]+:[^@/\s]+@", path.read_text()), path


def test_kubernetes_pods_run_as_non_root_with_probes():
    for name, spec in _pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"], name
            if container["image"].startswith("churn-suite"):
                assert context["readOnlyRootFilesystem"] is True, name
            if spec.get("restartPolicy") in ("OnFailure", "Never"):
                continue  # the trainer Job: a one-shot, nothing to probe
            assert "readinessProbe" in container and "livenessProbe" in container, (name, container["name"])
            grpc_ports = [p["containerPort"] for p in container.get("ports", []) if p["name"] == "grpc"]
            if grpc_ports:
                assert container["readinessProbe"]["grpc"]["port"] in grpc_ports, name
                assert container["livenessProbe"]["grpc"]["port"] in grpc_ports, name


def test_monitoring_runs_beside_envoy_and_nothing_scrapes_the_admin():
    gateway = next(spec for name, spec in _pod_specs() if name == "gateway")
    commands = [" ".join(container["command"]) for container in gateway["containers"]]
    assert any("gateway run" in c for c in commands) and any("services.monitoring" in c for c in commands)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["monitoring"]["network_mode"] == "service:gateway"
    everything = (ROOT / "deploy" / "prometheus.yml").read_text() + "".join(
        p.read_text() for p in (ROOT / "deploy" / "k8s").glob("*.yaml"))
    assert "9901" not in everything
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    envoy = next(job for job in config["scrape_configs"] if job["job_name"] == "envoy")
    assert envoy["static_configs"][0]["targets"] == ["gateway:9902"]
