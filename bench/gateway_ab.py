"""Envoy's share of a single-row Predict, side by side in one run (`python -m bench.gateway_ab`).

One suite (bench/stack.py, canary weight `--canary`, 0 by default so every call is production's, like the direct
one) and one Envoy per gateway config in front of the same services, all started before the first point:
- `rendered`: the config this checkout renders, with its worker threads (what `make run` serves);
- `router only`: the same listener, routes and clusters with every HTTP filter but the router removed;
- `floor`: a listener with only the router and one route to the production instance (no health checks, no
  access log): what any Envoy hop costs on this machine;
- `before` (with `--before CHECKOUT`): the config another checkout renders (e.g. main), run with Envoy's default
  worker count, as checkouts before ENVOY_CONCURRENCY ran it.

h2load (pre-encoded frame, bench/load.py) alternates between gRPC direct to production and every gateway, several
rounds; per round a gateway's p50 minus direct's p50; medians (and range) over rounds. Also Envoy's CPU per call
(/proc) and its own time per call from an extra access log (`%COMMON_DURATION%` in µs: the whole downstream call
minus the upstream round trip), which Envoy's histograms (whole milliseconds) cannot show.

    python -m bench.gateway_ab [--before ../main] [--concurrency 1,8,32] [--rounds 7] [--seconds 3]
                               [--inference-workers N (default one per core)]
                               [--registry-dir var/bench/registry | --tracking-uri URI]
                               [--workdir var/bench/gateway-ab] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import yaml

from bench import load
from bench.stack import cpu_seconds, ensure_registry, start_stack
from churn.v1 import inference_pb2
from gateway import render
from gateway.__main__ import envoy_command
from gateway.names import FILTER, PRODUCTION_HOSTS_CLUSTER, T, typed
from services.common import canary_runtime, telco_csv
from tests.e2e.envoy_process import EnvoyProcess, free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRPC_PATH = "/churn.v1.InferenceService/Predict"
TIMING = ("%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% %COMMON_DURATION(US_TX_BEG:US_RX_END:us)%\n")


def _hcm(config: dict) -> dict:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def router_only(config: dict) -> dict:
    hcm = _hcm(config)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] == FILTER["router"]]
    for host in hcm["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            route.pop("typed_per_filter_config", None)
    return config


def floor(config: dict) -> dict:
    cluster = copy.deepcopy(next(c for c in config["static_resources"]["clusters"]
                                 if c["name"] == PRODUCTION_HOSTS_CLUSTER))
    for key in ("health_checks", "outlier_detection", "circuit_breakers"):
        cluster.pop(key, None)
    hcm = _hcm(config)
    hcm.clear()
    hcm.update(typed(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="floor", codec_type="AUTO",
        http_filters=[{"name": FILTER["router"], "typed_config": typed(T + "router.v3.Router")}],
        route_config={"virtual_hosts": [{"name": "floor", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster["name"], "timeout": "10s"}}]}]}))
    config["static_resources"] = {"listeners": config["static_resources"]["listeners"][:1], "clusters": [cluster]}
    config.pop("layered_runtime", None)
    return config


def rendered_by(checkout: pathlib.Path, env: dict[str, str], admin_port: int, out: pathlib.Path) -> dict:
    """The config `python -m gateway render` of another checkout writes for the same services."""
    subprocess.run([sys.executable, "-m", "gateway", "render", "--out", str(out)], cwd=checkout, check=True,
                   capture_output=True, env=dict(env, ENVOY_ADMIN_PORT=str(admin_port), GATEWAY_PORT="0",
                                                 PYTHONPATH=os.pathsep.join([str(checkout), str(checkout / "gen")])))
    return yaml.safe_load(out.read_text())


class ConfigEnvoy(EnvoyProcess):
    """A real Envoy on a given config (EnvoyProcess renders its own from Settings)."""

    def __init__(self, name: str, settings, workdir: pathlib.Path, config: dict):
        self.name, self.settings = name, settings
        canary_runtime.ensure_persisted(settings.data_dir, settings.canary_percent)  # the layer configs watch
        self.config_path = render.write(config, workdir / f"{name}.yaml")
        self.admin_path = workdir / f"{name}.admin"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(envoy_command(self.config_path, settings, admin_address_path=self.admin_path),
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.admin, self.port = "", 0


class Gateway(ConfigEnvoy):
    """A real Envoy on a given config, plus a file access log of its own time per call."""

    def __init__(self, name: str, settings, workdir: pathlib.Path, config: dict):
        self.timing = workdir / f"{name}.timing"
        _hcm(config).setdefault("access_log", []).append({"name": "envoy.access_loggers.file", "typed_config": typed(
            "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", path=str(self.timing),
            log_format={"text_format_source": {"inline_string": TIMING}})})
        super().__init__(name, settings, workdir, config)

    def logged(self) -> int:
        return self.timing.stat().st_size if self.timing.exists() else 0

    def rows_after(self, offset: int, calls: int) -> list[list[str]]:
        """The timing rows logged after `offset`, once the `calls` answered since are all there (the log is
        flushed every second: read until then, at most 5 s)."""
        deadline = time.monotonic() + 5
        while True:
            with open(self.timing) if self.timing.exists() else io.StringIO() as log:
                log.seek(offset)
                rows = [line.split() for line in log.read().splitlines()]
            if len(rows) >= calls or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def inside_us(self, offset: int, calls: int) -> float | None:
        """Median µs of Envoy's own time per call over the `calls` logged after `offset`."""
        rows = self.rows_after(offset, calls)
        spans = [int(a) - int(b) for a, b in (r for r in rows if len(r) == 2) if a.isdigit() and b.isdigit()]
        return statistics.median(spans) if spans else None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=pathlib.Path, help="another checkout whose rendered config runs beside")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--canary", type=int, default=0)
    parser.add_argument("--inference-workers", type=int, default=None,
                        help="worker processes per inference instance (default: one per core, as `make run`)")
    parser.add_argument("--registry-dir", type=pathlib.Path, default=ROOT / "var" / "bench" / "registry")
    parser.add_argument("--tracking-uri", default="", help="an already trained registry (skips training)")
    parser.add_argument("--workdir", type=pathlib.Path, default=ROOT / "var" / "bench" / "gateway-ab")
    parser.add_argument("--out", type=pathlib.Path, help="also write the table there")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    load_start = "%.2f" % os.getloadavg()[0]
    # start times are not measured here: the services start at once; each config below gets its own Envoy
    stack = start_stack(args.workdir / "suite", args.tracking_uri or ensure_registry(args.registry_dir),
                        canary_percent=args.canary, parallel=True, inference_workers=args.inference_workers,
                        gateway=False)
    gateways: dict[str, Gateway] = {}
    try:
        variants = {"rendered": lambda s: render.render(s), "router only": lambda s: router_only(render.render(s)),
                    "floor": lambda s: floor(render.render(s))}
        if args.before:
            variants["before"] = lambda s: rendered_by(args.before.resolve(), stack.env, s.envoy_admin_port,
                                                       args.workdir / "before.yaml")
        for name, make in variants.items():
            settings = dataclasses.replace(stack.settings, envoy_admin_port=free_port(), gateway_port=0)
            if name == "before":
                settings = dataclasses.replace(settings, envoy_concurrency=0)
            gateways[name] = Gateway(name.replace(" ", "_"), settings, args.workdir, make(settings))
        for gateway in gateways.values():  # all started, then each waited for
            gateway.wait_ready()
        table = measure(args, stack, gateways)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        stack.stop()
    text = (f"h2load, {args.rounds} alternating rounds of {args.seconds:g} s per point, canary {args.canary} %, "
            f"load average {load_start} → {os.getloadavg()[0]:.2f}\n\n" + table)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


def measure(args, stack, gateways: dict[str, Gateway]) -> str:
    data = telco_csv.parse_telco_csv((ROOT / "data" / "telco_churn.csv").read_bytes(), None, 100_000)
    frame = args.workdir / "predict.grpc"
    frame.write_bytes(load.grpc_frame(inference_pb2.PredictRequest(customer=data.customers()[0])))
    headers = {"authorization": f"Bearer {stack.service_token}", "x-api-key": stack.settings.api_key}
    ports, production = stack.inference_metric_ports(), stack.services["production"]
    urls = {"direct": f"http://127.0.0.1:{production.port}{GRPC_PATH}",
            **{name: f"{g.url}{GRPC_PATH}" for name, g in gateways.items()}}
    lines = ["| c | target | p50 ms | added p50 ms (range) | OK/s | / direct | Envoy CPU µs/call | Envoy's own µs |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    scratch = args.workdir / "h2load.log"
    for c in [int(x) for x in args.concurrency.split(",")]:
        warm = {}
        for name, url in urls.items():  # warm-up: upstream connections, caches (as long as a point, at most 1 s)
            offset = gateways[name].logged() if name in gateways else 0
            warm[name] = offset, load.h2load(url, frame, headers, c, min(1.0, args.seconds), ports, scratch).requests
        for name, gateway in gateways.items():  # the warm-up's calls logged before a point's offset is taken
            gateway.rows_after(*warm[name])
        rows: dict[str, list[dict]] = {name: [] for name in urls}
        for r in range(args.rounds):
            names = list(urls)[r % len(urls):] + list(urls)[:r % len(urls)]
            logged = []  # a gateway's own times are read once the round is over: one wait for the log flush
            for name in names:
                gateway = gateways.get(name)
                pid = {"envoy": gateway.process.pid} if gateway else {}
                offset = gateway.logged() if gateway else 0
                cpu = cpu_seconds(pid)
                point = load.h2load(urls[name], frame, headers, c, args.seconds, ports, scratch)
                spent = sum(cpu_seconds(pid).values()) - sum(cpu.values())
                rows[name].append({"p50": point.p50_ms, "ok_s": point.ok_per_second, "ok": point.ok,
                                   "requests": point.requests, "cpu_us": spent * 1e6 / max(point.requests, 1),
                                   "inside_us": None})
                if gateway:
                    logged.append((rows[name][-1], gateway, offset, point.requests))
            for row, gateway, offset, calls in logged:
                row["inside_us"] = gateway.inside_us(offset, calls)
        lines += _summary(c, rows)
    return "\n".join(lines) + "\n"


def _summary(c: int, rows: dict[str, list[dict]]) -> list[str]:
    median, direct = statistics.median, rows["direct"]
    out = []
    for name, runs in rows.items():
        failed = sum(max(0, run["requests"] - run["ok"]) for run in runs)
        if failed > 0:
            name += f" ({failed} not OK)"
        if runs is direct:
            out.append(f"| {c} | {name} | {median(r['p50'] for r in runs):.3f} | | "
                       f"{median(r['ok_s'] for r in runs):,.0f} | 1.00 | | |")
            continue
        added = [run["p50"] - base["p50"] for run, base in zip(runs, direct)]
        ratio = [run["ok_s"] / base["ok_s"] for run, base in zip(runs, direct)]
        inside = [r["inside_us"] for r in runs if r["inside_us"] is not None]
        out.append(f"| {c} | {name} | {median(r['p50'] for r in runs):.3f} | {median(added):.3f} "
                   f"({min(added):.3f}–{max(added):.3f}) | {median(r['ok_s'] for r in runs):,.0f} | "
                   f"{median(ratio):.2f} | {median(r['cpu_us'] for r in runs):,.0f} | "
                   f"{median(inside) if inside else 0:,.0f} |")
    return out


if __name__ == "__main__":
    sys.exit(main())
