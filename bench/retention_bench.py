"""Benchmark (not a test): retention levers for all 7,043 Telco customers in batches through the real inference gRPC
server, next to PredictBatch on the same rows and batches, in one run (alternating rounds, median), per alias.
Reports the cost per 1,000 customers of each and their ratio (issue 15's target: levers <= 20x PredictBatch).

    .venv/bin/python bench/retention_bench.py [--rounds 3] [--batch 1000] [--write bench/results/retention.md]
    .venv/bin/python bench/retention_bench.py --short        # 2,000 customers, 1 round, production only

Uses DATA_DIR's registry (trains into it with `python -m training --if-missing` when empty).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
from churn.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from bench.inference_bench import BenchKeys, append_run, bench_settings  # noqa: E402
from services.common import telco_csv  # noqa: E402
from services.common.settings import Settings  # noqa: E402
from services.inference import app  # noqa: E402


def per_thousand_ms(seconds: float, customers: int) -> float:
    return seconds / customers * 1000 * 1000


def bench_alias(settings: Settings, verifier, keys: BenchKeys, alias: str, customers, args, tmp: pathlib.Path):
    parts = dataclasses.replace(app.build_parts(settings, alias, ship=False), port=0, http_port=0,
                                outbox_file=tmp / f"outbox-{alias}.db")
    inference = app.start(settings, verifier, parts)
    assert inference.wait_loaded(120), f"{alias} model did not load"
    model = inference.holder.current
    channel = grpc.insecure_channel(f"127.0.0.1:{inference.port}", options=settings.grpc_options())
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    metadata = (("authorization", f"Bearer {keys.token(settings)}"), ("x-api-key", settings.api_key))
    batches = [customers[i:i + args.batch] for i in range(0, len(customers), args.batch)]
    predict = [inference_pb2.PredictBatchRequest(customers=b) for b in batches]
    suggest = [inference_pb2.SuggestRetentionRequest(customers=b, top_k=3) for b in batches]
    stub.PredictBatch(predict[0], metadata=metadata, timeout=120)  # warm up both paths
    stub.SuggestRetention(suggest[0], metadata=metadata, timeout=120)

    def timed(method, requests) -> float:
        t = time.perf_counter()
        for request in requests:
            method(request, metadata=metadata, timeout=120)
        return per_thousand_ms(time.perf_counter() - t, len(customers))

    rows_before = REGISTRY.get_sample_value("churn_inference_retention_rows_sum") or 0.0
    runs = {"predict": [], "levers": []}
    for _ in range(args.rounds):  # alternate so drift on a shared machine hits both sides alike
        runs["predict"].append(timed(stub.PredictBatch, predict))
        runs["levers"].append(timed(stub.SuggestRetention, suggest))
    scored = (REGISTRY.get_sample_value("churn_inference_retention_rows_sum") or 0.0) - rows_before
    channel.close()
    inference.stop(0)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"alias": alias, "model": f"{model.name} v{model.version} ({model.flavor})", "runs": runs, "med": med,
            "rows_per_customer": scored / args.rounds / len(customers)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--short", action="store_true", help="2,000 customers, 1 round, production only")
    parser.add_argument("--write", type=pathlib.Path, default=None)
    args = parser.parse_args()
    aliases = ["production"] if args.short else ["production", "staging"]
    if args.short:
        args.rounds = 1

    settings, keys, verifier = bench_settings()
    data = (ROOT / "data" / "telco_churn.csv").read_bytes()
    customers = telco_csv.parse_telco_csv(data, len(data) + 1, 100_000).customers()
    if args.short:
        customers = customers[:2000]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="retention-bench-"))
    results = [bench_alias(settings, verifier, keys, alias, customers, args, tmp) for alias in aliases]

    lines = [
        f"## Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC" + (" (--short)" if args.short
                                                                                       else ""),
        "",
        f"Machine: {os.cpu_count()} cores (shared, noisy), {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end; "
        f"{len(customers):,} Telco customers in batches of {args.batch:,}; "
        f"medians of {args.rounds} alternating round(s); levers with top_k 3 and the default RETENTION_MOVES.",
        "",
        "| alias (model) | PredictBatch ms / 1,000 customers | SuggestRetention ms / 1,000 customers | ratio | "
        "rows scored per customer |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['alias']} ({r['model']}) | {r['med']['predict']:,.1f} | {r['med']['levers']:,.1f} | "
                     f"{r['med']['levers'] / r['med']['predict']:.1f}x | {r['rows_per_customer']:.1f} |")
    lines += ["", "All rounds (ms / 1,000 customers): " + "; ".join(
        f"{r['alias']} {k}: {', '.join(f'{v:,.1f}' for v in vals)}" for r in results for k, vals in r["runs"].items()),
        ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        append_run(args.write, _HEADER, text)
    return 0


_HEADER = """# Retention levers benchmark

`bench/retention_bench.py`: `SuggestRetention` (every allowed single change and every two-change combination of
each customer, all scored in one model call per request, then ranked) vs `PredictBatch` (scoring, outbox commit)
on the same Telco customers in the same batches, through the real gRPC server (token verification, API key), side
by side in one run. Cost per 1,000 customers; "rows scored" counts the customers plus their feasible variants. Not a
timed test: a shared, noisy 2-core machine; compare ratios, not absolutes.

"""

if __name__ == "__main__":
    sys.exit(main())
