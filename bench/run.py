"""`make bench`: the suite and its anchors on loopback, side by side in one run; writes bench/RESULTS.md and
bench/results.json (machine, command line, every point).

    python -m bench.run [--short] [--seconds 10] [--registry-dir var/bench/registry | --tracking-uri URI]
                        [--out-dir DIR] [--workdir DIR (kept; default a fresh folder under var/bench, removed)]

Full: anchors (`mlflow models serve`, BentoML, minimal gRPC with and without the model), the suite (gRPC and
REST through Envoy, gRPC direct) and Envoy's floor (a second Envoy with only the router, one route to production:
what any Envoy hop costs here) at concurrency 1, 8 and 32 under h2load/wrk; PredictBatch 1,000 and 10,000 rows,
Explain 1,000 rows, a 10,000-row drift report, each against the bare library; start-to-SERVING and RSS.
--short (CI): 1 s points at c=1, the two gRPC anchors only (and the floor), 1,000-row batch/Explain and a 500-row
drift report timed once each with no warm-up, the suite's services started at once: it proves the harness, its
numbers mean nothing."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import pathlib
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from concurrent import futures

from google.protobuf import json_format

from bench import anchors as A
from bench import gateway_ab, load, report, steps, workloads
from bench.stack import cpu_model, cpu_seconds, ensure_registry, rss_bytes, start_stack
from churn.v1 import inference_pb2
from gateway import render
from services.common import features as F
from services.common import model_registry as R
from services.common import telco_csv
from services.common.settings import Settings
from tests.e2e.envoy_process import free_port
from tests.harness import base_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRPC_PATH = "/churn.v1.InferenceService/Predict"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI mode: prove the harness in well under a minute")
    parser.add_argument("--seconds", type=int, default=None, help="measured seconds per point (default 10; short 1)")
    parser.add_argument("--registry-dir", type=pathlib.Path, default=ROOT / "var" / "bench" / "registry")
    parser.add_argument("--tracking-uri", default="", help="an already trained registry (skips training)")
    parser.add_argument("--out-dir", type=pathlib.Path, default=None,
                        help="default: bench/ (full), var/bench/short (short: it must not overwrite a full run)")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="default: a fresh folder under var/bench")
    return parser.parse_args(argv)


class Runner:
    """Holds what every point needs: the targets, their request bytes and the processes to watch."""

    def __init__(self, stack, anchors: dict[str, A.Anchor], customers, workdir: pathlib.Path,
                 floor: gateway_ab.ConfigEnvoy):
        self.stack, self.anchors, self.workdir, self.floor = stack, anchors, workdir, floor
        settings = stack.settings
        row = customers[0]
        self.frame = workdir / "predict.grpc"
        self.frame.write_bytes(load.grpc_frame(inference_pb2.PredictRequest(customer=row)))
        self.grpc_headers = {"authorization": f"Bearer {stack.service_token}", "x-api-key": settings.api_key}
        self.rest_body = json_format.MessageToJson(inference_pb2.PredictRequest(customer=row),
                                                   preserving_proto_field_name=True).encode()
        frame = telco_csv.customers_to_frame([row]).drop(columns=[F.ID_COLUMN])
        self.mlflow_body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})
        self.bento_body = json.dumps({"rows": [F.encode_customers([row])[0].tolist()]})
        self.points: list[dict] = []

    def watched(self, target: str) -> dict[str, int]:
        """Processes whose CPU a point accounts for (an anchor's: its server, with its workers)."""
        pids = self.stack.pids()
        behind = {name: pids[name] for name in ("production", "auth", "monitoring")}
        if target == report.FLOOR:
            return {"envoy": self.floor.process.pid, **behind}
        if target in self.anchors:
            return {"server": self.anchors[target].process.pid}
        return {"envoy": pids["envoy"], "staging": pids["staging"], **behind} if "Envoy" in target else behind

    def targets(self) -> list[tuple[str, str, callable]]:
        stack, out = self.stack, []
        prod = stack.services["production"]
        inference_ports = stack.inference_metric_ports()
        envoy = f"http://127.0.0.1:{stack.gateway.port}"
        for name in (A.ANCHOR_NAMES["grpc_nomodel"], A.ANCHOR_NAMES["grpc_model"]):
            if name in self.anchors:
                anchor = self.anchors[name]
                out.append((name, "h2load", lambda c, s, scratch, a=anchor: load.h2load(
                    f"http://127.0.0.1:{a.port}{GRPC_PATH}", self.frame, {}, c, s, [a.metrics_port], scratch)))
        if "mlflow models serve" in self.anchors:
            port = self.anchors["mlflow models serve"].port
            out.append(("mlflow models serve", "wrk", lambda c, s, scratch, port=port: load.wrk(
                f"http://127.0.0.1:{port}/invocations", self.mlflow_body.encode(),
                {"Content-Type": "application/json"}, c, s, scratch)))
        if "BentoML" in self.anchors:
            port = self.anchors["BentoML"].port
            out.append(("BentoML", "wrk", lambda c, s, scratch, port=port: load.wrk(
                f"http://127.0.0.1:{port}/predict", self.bento_body.encode(), {"Content-Type": "application/json"},
                c, s, scratch)))
        out.append(("suite gRPC direct", "h2load", lambda c, s, scratch: load.h2load(
            f"http://127.0.0.1:{prod.port}{GRPC_PATH}", self.frame, self.grpc_headers, c, s, [prod.http_port],
            scratch)))
        out.append((report.FLOOR, "h2load", lambda c, s, scratch: load.h2load(
            f"{self.floor.url}{GRPC_PATH}", self.frame, self.grpc_headers, c, s, [prod.http_port], scratch)))
        out.append(("suite gRPC via Envoy", "h2load", lambda c, s, scratch: load.h2load(
            f"{envoy}{GRPC_PATH}", self.frame, self.grpc_headers, c, s, inference_ports, scratch)))
        out.append(("suite REST via Envoy", "wrk", lambda c, s, scratch: load.wrk(
            f"{envoy}/v1/predict", self.rest_body, {"Content-Type": "application/json", **self.grpc_headers}, c, s,
            scratch, inference_ports)))
        return out

    def run_points(self, concurrencies: tuple[int, ...], seconds: int, warm_up: int) -> None:
        for c in concurrencies:
            for name, loader, fn in self.targets():
                # a file the loader writes: h2load's per-request log, wrk's Lua script
                scratch = self.workdir / f"load-{len(self.points)}.txt"
                if warm_up:
                    fn(c, warm_up, scratch)  # at the same concurrency, not counted
                watched = self.watched(name)
                began = time.monotonic()
                cpu_before = cpu_seconds(watched)
                loader_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                measured = fn(c, seconds, scratch)
                loader_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = {k: v - cpu_before[k] for k, v in cpu_seconds(watched).items()}
                cpu["load generator"] = (loader_after.ru_utime + loader_after.ru_stime
                                         - loader_before.ru_utime - loader_before.ru_stime)
                found = {"target": name, "loader": loader, "concurrency": c, "ok_per_s": measured.ok_per_second,
                         "requests": measured.requests, "ok": measured.ok, "seconds": measured.seconds,
                         "p50_ms": measured.p50_ms, "p99_ms": measured.p99_ms,
                         "cpu_us_per_ok": {k: v * 1e6 / max(measured.ok, 1) for k, v in cpu.items()}}
                self.points.append(found)
                print(f"  {name:34s} c={c:<3d} {measured.ok_per_second:8,.0f} OK/s  p50 {measured.p50_ms:6.2f} ms"
                      f"  p99 {measured.p99_ms:7.1f} ms  ({measured.ok}/{measured.requests} OK, "
                      f"{time.monotonic() - began:.1f} s)")


_BEGAN = time.monotonic()


def say(text: str) -> None:
    print(f"==> [{time.monotonic() - _BEGAN:5.1f} s] {text}")


def commit() -> str:
    """The checkout measured: its commit, with '+changes' when the work tree differs from it."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    return (head.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")


def machine() -> dict:
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": "%.2f %.2f %.2f" % os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir = args.out_dir or (ROOT / "var" / "bench" / "short" if args.short else ROOT / "bench")
    sys.stdout.reconfigure(line_buffering=True)
    seconds = args.seconds or (1 if args.short else 10)
    missing = load.tools_missing()
    if missing:
        raise SystemExit(f"missing load generators {missing}: `make bench` installs them (Debian nghttp2-client, wrk)")
    started_at = dt.datetime.now(dt.timezone.utc)
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix=f"run-{started_at:%Y%m%d-%H%M%S}-",
                                                            dir=_mkdir(ROOT / "var" / "bench")))
    workdir.mkdir(parents=True, exist_ok=True)
    args.workdir_used = workdir
    results = {"machine": machine(), "command": shlex.join(["python", "-m", "bench.run",
                                                             *(argv if argv is not None else sys.argv[1:])]),
               "started_at": f"{started_at:%Y-%m-%d %H:%M}", "mode": "short" if args.short else "full",
               "seconds_per_point": seconds, "skipped": {}, "commit": commit()}
    say("registry")
    tracking_uri = args.tracking_uri or ensure_registry(args.registry_dir)
    anchor_env = dict(base_env(workdir / "anchors"), MLFLOW_TRACKING_URI=tracking_uri)
    registry = R.ModelRegistry(tracking_uri, Settings.from_env(anchor_env).model_name)
    version = registry.version_for(R.ALIAS_PRODUCTION)
    info = registry.get(version)
    results["model"] = {"name": info.name, "version": version, "flavor": info.flavor}
    model_json = registry.download(version, workdir / "model", R.NATIVE_MODEL["xgboost"])
    started: dict[str, A.Anchor] = {}
    stack = None
    try:
        with futures.ThreadPoolExecutor(1) as pool:
            # short mode overlaps the anchors' start with the suite's; full mode keeps start times uncontended
            anchors = pool.submit(_start_anchors, args, workdir, anchor_env, info, model_json,
                                  results["skipped"]) if args.short else None
            say("starting the suite (auth, monitoring, inference ×2, Envoy)")
            stack = start_stack(workdir / "suite", tracking_uri, parallel=args.short,
                                inference_workers=1 if args.short else None)
            say("start → SERVING: " + ", ".join(f"{k} {v:.1f} s" for k, v in stack.start_seconds.items()))
            if anchors is None:
                say("starting the anchors")
                anchors = pool.submit(_start_anchors, args, workdir, anchor_env, info, model_json,
                                      results["skipped"])
            started.update(anchors.result())
        measure(args, results, stack, started, version, tracking_uri, info.name, model_json)
    finally:
        with futures.ThreadPoolExecutor(max(len(started), 1)) as pool:
            list(pool.map(A.Anchor.stop, started.values()))
        if stack is not None:
            stack.stop()
    results["machine"]["loadavg_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    results["finished_at"] = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results) + "\n")
    say(f"wrote {report.rerender(args.out_dir / 'results.json')} and results.json")  # with the targets computed
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def measure(args, results: dict, stack, started: dict[str, A.Anchor], version: str, tracking_uri: str,
            model_name: str, model_json: pathlib.Path) -> None:
    data = telco_csv.parse_telco_csv((ROOT / "data" / "telco_churn.csv").read_bytes(), None, 100_000)
    customers = data.customers()
    channel, inference, _ = workloads.channel_stubs(stack.services["production"].address, stack.settings.grpc_options())
    mon_channel, _, monitoring = workloads.channel_stubs(stack.services["monitoring"].address,
                                                         stack.settings.grpc_options())
    metadata = [("authorization", f"Bearer {stack.service_token}"), ("x-api-key", stack.settings.api_key)]
    ops = [("authorization", f"Bearer {stack.service_token}"), ("x-api-key", stack.settings.ops_api_key)]
    boosters = workloads.bare_boosters(str(model_json))
    drift_rows = 500 if args.short else 10_000
    say(f"drift: record {drift_rows:,} predictions, GetDriftReport vs bare Evidently")
    results["drift"] = workloads.drift(stack, inference, metadata, monitoring, ops, version, tracking_uri,
                                       model_name, customers, drift_rows, 1 if args.short else 3, warm=not args.short)
    say("batch and Explain")
    repeats = 1 if args.short else 10
    anchor_channel, anchor_stub, _ = workloads.channel_stubs(
        f"127.0.0.1:{started[A.ANCHOR_NAMES['grpc_model']].port}", stack.settings.grpc_options())
    suite_pids = {name: pid for name, pid in stack.pids().items() if name in ("production", "monitoring")}
    results["batch"] = [workloads.batch(inference, metadata, boosters, customers, n, repeats, anchor_stub,
                                        cpu=lambda: cpu_seconds(suite_pids),
                                        production_http=stack.services["production"].http_port, warm=not args.short)
                        for n in ((1000,) if args.short else (1000, 10_000))]
    anchor_channel.close()
    admin = [("authorization", f"Bearer {stack.admin_token()}"), ("x-api-key", stack.settings.api_key)]
    results["explain"] = workloads.explain(inference, admin, boosters, customers, 1000, repeats, warm=not args.short)
    if "mlflow models serve" in started:
        rows = telco_csv.customers_to_frame(workloads.rows_of(customers, 1000)).drop(columns=[F.ID_COLUMN])
        results["mlflow_rows_1000_ms"] = workloads.mlflow_rows(
            f"http://127.0.0.1:{started['mlflow models serve'].port}/invocations", rows, repeats)
    channel.close()
    mon_channel.close()
    say("a single Predict's steps in-process, on production's model")
    results["single_row_steps_us"] = steps.single_row(stack.settings, stack.service_token, customers[0],
                                                      args.workdir_used / "steps", 200 if args.short else 3000)
    say("single-row load (and Envoy's floor)")
    floor = start_floor(stack, args.workdir_used)
    try:
        runner = Runner(stack, started, customers, args.workdir_used, floor)
        runner.run_points((1,) if args.short else (1, 8, 32), results["seconds_per_point"],
                          warm_up=0 if args.short else 2)
    finally:
        floor.stop()
    results["single_row"] = runner.points
    results["start_seconds"] = {**{f"suite {k}": v for k, v in stack.start_seconds.items()},
                                **{name: a.start_seconds for name, a in started.items()}}
    pids = {**{f"suite {k}": v for k, v in stack.pids().items()},
            **{name: a.process.pid for name, a in started.items()}}
    results["rss_mb"] = {name: rss / 2**20 for name, rss in rss_bytes(pids).items()}


def start_floor(stack, workdir: pathlib.Path) -> gateway_ab.ConfigEnvoy:
    """A second Envoy in front of production with only the router (gateway_ab's `floor` config), with the suite
    Envoy's worker threads: what any Envoy hop costs on this machine, measured beside the suite's own."""
    settings = dataclasses.replace(stack.settings, envoy_admin_port=free_port(), gateway_port=0)
    floor = gateway_ab.ConfigEnvoy("envoy_floor", settings, workdir, gateway_ab.floor(render.render(settings)))
    try:
        return floor.wait_ready()
    except BaseException:
        floor.stop()
        raise


def _mkdir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _start_anchors(args, workdir, env, info, model_json, skipped: dict) -> dict[str, A.Anchor]:
    started: dict[str, A.Anchor] = {}
    try:
        for model in (None, model_json):
            anchor = A.start_grpc_anchor(workdir, env, model)
            started[anchor.name] = anchor
        if args.short:
            skipped.update({"mlflow models serve": "short mode", "BentoML": "short mode"})
            return started
        anchor = A.start_mlflow(workdir, env, f"models:/{info.name}/{info.version}")
        started[anchor.name] = anchor
        why = A.bento_available()
        if why:
            skipped["BentoML"] = why
        else:
            anchor = A.start_bento(workdir, model_json)
            started[anchor.name] = anchor
    except BaseException:
        for anchor in started.values():
            anchor.stop()
        raise
    return started


if __name__ == "__main__":
    sys.exit(main())
