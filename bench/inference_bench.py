"""Micro-benchmark (not a test): rows/s for batch 1 and batch 1,000 through the real inference gRPC server
(interceptor with token + API key, encoding, xgboost, outbox commit) against a bare in-process
`booster.inplace_predict` on the same encoded rows, measured side by side in one run (alternating rounds, median).

    .venv/bin/python bench/inference_bench.py [--rounds 3] [--write bench/results/inference.md]

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
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent import futures

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
import jwt  # noqa: E402
import pandas as pd  # noqa: E402
from churn.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from services.common import features as F  # noqa: E402
from services.common import telco_csv  # noqa: E402
from services.common.identity import TokenVerifier  # noqa: E402
from services.common.settings import Settings  # noqa: E402
from services.inference import app  # noqa: E402


class BenchKeys:
    """A throwaway ES256 key so the bench needs no auth service (the interceptor still verifies every token)."""

    kid = "bench"

    def __init__(self):
        self.private = ec.generate_private_key(ec.SECP256R1())

    def key_for(self, kid):
        return self.private.public_key() if kid == self.kid else None

    def token(self, settings: Settings) -> str:
        now = int(time.time())
        return jwt.encode({"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "bench", "role": "service",
                           "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex}, self.private, algorithm="ES256",
                          headers={"kid": self.kid})


def rate(rows: int, seconds: float) -> float:
    return rows / seconds


def append_run(path: pathlib.Path, header: str, text: str) -> None:
    """Append one run's section to a results file, with the file's header when it is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(("" if out.tell() else header) + text + "\n")


def bench_settings() -> tuple[Settings, "BenchKeys", TokenVerifier]:
    """DATA_DIR's registry (trained when empty), settings with throwaway API keys, and a local token signer."""
    env = dict(os.environ, API_KEY=os.environ.get("API_KEY") or "bench-key", OPS_API_KEY="bench-ops",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]))
    subprocess.run([sys.executable, "-m", "training", "--if-missing"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    settings = Settings.from_env(env)
    keys = BenchKeys()
    return settings, keys, TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single-calls", type=int, default=2000)
    parser.add_argument("--batch-calls", type=int, default=20)
    parser.add_argument("--write", type=pathlib.Path, default=None)
    args = parser.parse_args()

    settings, keys, verifier = bench_settings()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="inference-bench-"))
    parts = dataclasses.replace(app.build_parts(settings, "production", ship=False), port=0, http_port=0,
                                outbox_file=tmp / "outbox.db")
    inference = app.start(settings, verifier, parts)
    assert inference.wait_loaded(120), "model did not load"
    model = inference.holder.current
    # xgboost's own boosters behind the served model, each at its best thread count (1 thread for single rows,
    # all cores for 1,000): the bare side is the strongest in-process baseline without compiled trees.
    xgb = getattr(model.native, "native", model.native)
    single_booster, batch_booster = xgb._single, xgb.booster

    frame = pd.read_csv(ROOT / "data" / "telco_churn.csv", nrows=1000)
    frame["TotalCharges"] = pd.to_numeric(frame.TotalCharges, errors="coerce")
    customers = telco_csv.frame_to_customers(frame)
    X = F.encode_customers(customers)
    channel = grpc.insecure_channel(f"127.0.0.1:{inference.port}", options=settings.grpc_options())
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    metadata = (("authorization", f"Bearer {keys.token(settings)}"), ("x-api-key", settings.api_key))
    singles = [inference_pb2.PredictRequest(customer=c) for c in customers]
    batch = inference_pb2.PredictBatchRequest(customers=customers)
    stub.PredictBatch(batch, metadata=metadata)  # warm up

    def bare_single():
        n = args.single_calls
        t = time.perf_counter()
        for i in range(n):
            single_booster.inplace_predict(X[i % 1000:i % 1000 + 1])
        return rate(n, time.perf_counter() - t)

    def bare_batch():
        t = time.perf_counter()
        for _ in range(args.batch_calls):
            batch_booster.inplace_predict(X)
        return rate(1000 * args.batch_calls, time.perf_counter() - t)

    def grpc_single():
        n = args.single_calls
        t = time.perf_counter()
        for i in range(n):
            stub.Predict(singles[i % 1000], metadata=metadata)
        return rate(n, time.perf_counter() - t)

    def grpc_single_concurrent(clients=8):
        n = args.single_calls
        with futures.ThreadPoolExecutor(clients) as pool:
            t = time.perf_counter()
            list(pool.map(lambda i: stub.Predict(singles[i % 1000], metadata=metadata), range(n)))
            return rate(n, time.perf_counter() - t)

    def grpc_batch():
        t = time.perf_counter()
        for _ in range(args.batch_calls):
            stub.PredictBatch(batch, metadata=metadata)
        return rate(1000 * args.batch_calls, time.perf_counter() - t)

    runs = {name: [] for name in ("bare_single", "grpc_single", "grpc_single_x8", "bare_batch", "grpc_batch")}
    for _ in range(args.rounds):  # alternate so drift on a shared machine hits both sides alike
        runs["bare_single"].append(bare_single())
        runs["grpc_single"].append(grpc_single())
        runs["grpc_single_x8"].append(grpc_single_concurrent())
        runs["bare_batch"].append(bare_batch())
        runs["grpc_batch"].append(grpc_batch())
    med = {name: statistics.median(values) for name, values in runs.items()}
    channel.close()
    inference.stop(0)

    lines = [
        f"## Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {os.cpu_count()} cores (shared, noisy), {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; model {model.name} v{model.version} ({model.flavor}); "
        f"medians of {args.rounds} alternating rounds; {args.single_calls} single calls, "
        f"{args.batch_calls} × 1,000-row batches per round.",
        "",
        "| path | rows/s | ratio vs bare |",
        "|---|---:|---:|",
        f"| bare `inplace_predict`, batch 1 | {med['bare_single']:,.0f} | 1 |",
        f"| gRPC `Predict`, batch 1, 1 client | {med['grpc_single']:,.0f} | "
        f"{med['grpc_single'] / med['bare_single']:.3f} |",
        f"| gRPC `Predict`, batch 1, 8 client threads | {med['grpc_single_x8']:,.0f} | "
        f"{med['grpc_single_x8'] / med['bare_single']:.3f} |",
        f"| bare `inplace_predict`, batch 1,000 | {med['bare_batch']:,.0f} | 1 |",
        f"| gRPC `PredictBatch`, batch 1,000 | {med['grpc_batch']:,.0f} | {med['grpc_batch'] / med['bare_batch']:.3f} |",
        "",
        "All rounds (rows/s): " + "; ".join(f"{k}: {', '.join(f'{v:,.0f}' for v in vals)}" for k, vals in runs.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        append_run(args.write, _HEADER, text)
    return 0


_HEADER = """# Inference micro-benchmark

`bench/inference_bench.py`: rows/s through the real gRPC server (token verification, API key, encoding straight to
numpy, xgboost on the calling thread, outbox commit before answering) vs a bare in-process `booster.inplace_predict`
on the same encoded float32 rows, side by side in one run. The client runs in the same process and competes for the
same 2 cores, so the gRPC figures include the client's own cost. Not a timed test: numbers from a shared, noisy
2-core machine; compare ratios, not absolutes.

"""

if __name__ == "__main__":
    sys.exit(main())
