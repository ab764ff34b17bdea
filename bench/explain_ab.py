"""Explain of 1,000 Telco rows served by two source trees (before and after a change) next to the bare xgboost
`pred_contribs` built the way `make bench` builds it (bench/workloads.py: the faster of one thread and every core),
alternated call by call; medians (not a test).

    .venv/bin/python bench/explain_ab.py --before <commit> [--rounds 21] [--workers 2]

Each side is an inference server in a process of its own running that tree's code (`--before`: `git archive` of
the commit into a temporary folder, stubs generated there), on port 0 with a throwaway token key, given the xgboost
threads one worker of a `--workers` pool gets (`make bench` runs one worker per core), over DATA_DIR's registry
(trained when empty). The answers of both sides are compared before anything is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]


def serve(out: pathlib.Path, workers: int) -> None:
    """One side: the tree on PYTHONPATH serves production until killed; port, token and key go to `out`."""
    import dataclasses

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from services.common.identity import TokenVerifier
    from services.common.settings import Settings
    from services.inference import app

    class Keys:
        kid = "bench"
        private = ec.generate_private_key(ec.SECP256R1())

        def key_for(self, kid):
            return self.private.public_key() if kid == self.kid else None

    settings = dataclasses.replace(Settings.from_env(os.environ), inference_workers=workers, compile_models=False)
    parts = dataclasses.replace(app.build_parts(settings, "production", ship=False), port=0, http_port=0,
                                outbox_file=out.with_suffix(".outbox.db"))
    inference = app.start(settings, TokenVerifier(Keys(), settings.jwt_issuer, settings.jwt_audience), parts)
    if not inference.wait_loaded(300):
        raise SystemExit("the model did not load")
    now = int(time.time())
    token = jwt.encode({"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "bench", "role": "admin",
                        "iat": now, "exp": now + 7200, "jti": uuid.uuid4().hex}, Keys.private, algorithm="ES256",
                       headers={"kid": Keys.kid})
    out.write_text(json.dumps({"port": inference.port, "token": token, "api_key": settings.api_key}))
    while True:
        time.sleep(3600)


def tree_of(commit: str, tmp: pathlib.Path) -> pathlib.Path:
    tree = tmp / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    subprocess.run([sys.executable, "tools/codegen.py"], cwd=tree, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'gen'}"))
    return tree


def start_side(tree: pathlib.Path, out: pathlib.Path, env: dict, workers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), "--serve", str(out),
                             "--workers", str(workers)], cwd=tree, stdout=subprocess.DEVNULL,
                            env=dict(env, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'gen'}", TQDM_DISABLE="1"))


def wait_file(path: pathlib.Path, process: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server for {path.name} did not start")
        time.sleep(0.5)
    return json.loads(path.read_text())


def measure(args, sides: dict[str, dict], tmp: pathlib.Path) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
    import grpc
    import xgboost
    from churn.v1 import inference_pb2, inference_pb2_grpc

    from bench import workloads
    from services.common import features as F
    from services.common import mlflow_config
    from services.common import model_registry as R
    from services.common import telco_csv
    from services.common.settings import Settings

    settings = Settings.from_env(os.environ)
    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    model_json = registry.download(registry.version_for("production"), tmp / "model", R.NATIVE_MODEL["xgboost"])
    customers = telco_csv.parse_telco_csv((ROOT / "data" / "telco_churn.csv").read_bytes(), None, 100_000).customers()
    rows = workloads.rows_of(customers, args.rows)
    request = inference_pb2.ExplainRequest(customers=rows)
    X = F.encode_customers(rows)
    calls, replies = {}, {}
    for name, info in sides.items():
        channel = grpc.insecure_channel(f"127.0.0.1:{info['port']}", options=settings.grpc_options())
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        metadata = [("authorization", f"Bearer {info['token']}"), ("x-api-key", info["api_key"])]
        calls[name] = lambda stub=stub, metadata=metadata: stub.Explain(request, metadata=metadata, timeout=300)
        replies[name] = calls[name]()
    same = replies["before"].explanations == replies["after"].explanations
    worst = max(abs(a.probability - b.probability)
                for a, b in zip(replies["before"].explanations, replies["after"].explanations))
    for threads, booster in workloads.bare_boosters(str(model_json)).items():
        calls[f"bare {threads}t"] = lambda booster=booster: booster.predict(xgboost.DMatrix(X), pred_contribs=True)
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - began) * 1e3)
    load.append(os.getloadavg()[0])
    median = {name: statistics.median(found) for name, found in times.items()}
    bare = min(value for name, value in median.items() if name.startswith("bare"))
    print(f"Explain {args.rows:,} rows, {args.rounds} alternated rounds, before = {args.before}, after = the working "
          f"tree; {os.cpu_count()} cores, load average {load[0]:.1f} at the start, {load[1]:.1f} at the end; "
          f"served threads as one of {args.workers} workers. Answers identical: {same} (largest probability "
          f"difference {worst:.2g}).\n")
    print("| call | median (ms) | ÷ the faster bare |\n|---|---:|---:|")
    for name in calls:
        print(f"| {name} | {median[name]:.1f} | {median[name] / bare:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="main")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--serve", type=pathlib.Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.workers)
        return 0
    env = dict(os.environ, API_KEY=os.environ.get("API_KEY") or "bench-key", OPS_API_KEY="bench-ops",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]))
    os.environ.update(env)
    subprocess.run([sys.executable, "-m", "training", "--if-missing"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    with tempfile.TemporaryDirectory(prefix="explain-ab-") as folder:
        tmp = pathlib.Path(folder)
        trees = {"before": tree_of(args.before, tmp), "after": ROOT}
        processes = {name: start_side(tree, tmp / f"{name}.json", env, args.workers) for name, tree in trees.items()}
        try:
            sides = {name: wait_file(tmp / f"{name}.json", process) for name, process in processes.items()}
            measure(args, sides, tmp)
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
