"""bench/report.py's "what bounds it" texts from a synthetic run: each missed target's requirement and the run's own
floors (CPU per call, p50s, Envoy's floor, the minimal server and the bare model), computed from the input."""
from __future__ import annotations

import copy
import json

from bench import report

FLOOR, ENVOY, DIRECT = report.FLOOR, report.ENVOY, report.DIRECT


def _point(target: str, c: int, rate: float, p50: float, p99: float, cpu: dict | None = None) -> dict:
    return {"target": target, "concurrency": c, "loader": "h2load", "ok_per_s": rate, "ok": int(rate * 10),
            "requests": int(rate * 10), "seconds": 10.0, "p50_ms": p50, "p99_ms": p99, "cpu_us_per_ok": cpu or {}}


def _results() -> dict:
    suite_cpu = {"production": 500.0, "envoy": 200.0, "monitoring": 100.0, "load generator": 50.0}
    points = []
    for c in (1, 8, 32):
        points += [_point("mlflow models serve", c, 50 if c == 1 else 100, 20.0, 900.0),
                   _point("BentoML", c, 400 if c == 1 else 500, 2.0, 200.0),
                   _point("minimal gRPC, no model", c, 2000 if c == 1 else 4000, 0.5, 10.0),
                   _point(DIRECT, c, 1500 if c == 1 else 2000, 0.6, 20.0, {"production": 600.0}),
                   _point(FLOOR, c, 1000 if c == 1 else 1600, 1.0, 25.0, {"envoy": 150.0, "production": 600.0}),
                   _point(ENVOY, c, 600 if c == 1 else 1400, 1.6, 30.0, suite_cpu)]
    return {"machine": {"cores": 2}, "single_row": points, "mlflow_rows_1000_ms": 50.0,
            "batch": [{"rows": 1000, "served_ms": 20.0, "bare_ms": 4.0, "ratio": 5.0, "bare_threads": 2,
                       "bounds_ms": {"minimal_grpc_server_same_request": 10.0, "encode_rows": 3.0}}],
            "explain": {"rows": 1000, "served_ms": 11.0, "bare_ms": 10.0, "ratio": 1.1,
                        "bounds_ms": {"response_bytes": 1000, "serialize_response": 0.5}}}


def _bounds(results: dict) -> dict[str, str]:
    return {t["target"]: t["bound"] for t in report.targets(results)}


def test_throughput_targets_say_the_cpu_per_call_the_goal_leaves_and_what_must_go():
    bounds = _bounds(_results())
    # 30 × 100/s = 3,000/s → 2 cores leave 667 µs a call; the suite spent 800 + 50 (loader): 183 µs must go
    text = bounds["gRPC via Envoy c=32 vs mlflow models serve"]
    assert "3,000 OK/s" in text and "667 µs of 2 cores" in text and "cost 800 µs" in text
    assert "production 500, envoy 200, monitoring 100" in text and "183 µs per call must go" in text
    # 0.5 × 4,000/s = 2,000/s → 1,000 µs available > 850 spent: not CPU-bound
    text = bounds["gRPC via Envoy c=32 vs the no-model ceiling"]
    assert "150 µs under" in text and "kept 1.19 of 2 cores busy" in text  # 1,400/s × 850 µs


def test_c1_targets_compare_the_call_time_needed_with_the_measured_p50s():
    bounds = _bounds(_results())
    # 15 × 50/s = 750/s → 1.33 ms; no-model 0.50 + floor 1.00 − 0.60 = 0.90 fits: the suite's share must go
    text = bounds["gRPC via Envoy c=1 vs mlflow models serve"]
    assert "1.33 ms per call" in text and "Envoy's floor adds 0.40" in text and "0.27 ms must go" in text
    assert "0.10 ms over the no-model server" in text and "its Envoy 0.60 ms over the floor" in text
    # 3 × 400/s = 1,200/s → 0.83 ms < 0.90: out of reach behind any Envoy
    text = bounds["gRPC via Envoy c=1 vs BentoML"]
    assert "0.83 ms per call" in text and "no-model + floor (0.90 ms)" in text and "out of reach" in text


def test_envoy_targets_report_the_floor_from_the_same_run():
    bounds = _bounds(_results())
    text = bounds["through Envoy / direct, gRPC c=32"]
    assert "1,700 OK/s" in text and "1,600/s = 0.80 of direct" in text and "the floor's 150 µs" in text
    assert "even the floor misses it" in text
    text = bounds["p50 added by Envoy at c=1 (ms)"]
    assert "adds 0.40 ms p50" in text and "0.60 ms more" in text and "even the floor misses it" in text


def test_batch_targets_compare_mlflow_with_the_minimal_server_and_the_bare_model():
    bounds = _bounds(_results())
    text = bounds["mlflow's 1,000-row request / PredictBatch 1,000"]
    assert "≤ 5.0 ms" in text and "5.0× a minimal Python gRPC server's 10.0 ms" in text
    assert "12.5× the bare model's 4.0 ms" in text and "out of reach of any Python gRPC server" in text
    text = bounds["PredictBatch 1,000 rows / bare model"]
    assert "≤ 8.0 ms" in text and "(2.5× bare)" in text and "even the minimal server misses it" in text
    assert bounds["Explain 1,000 rows / bare pred_contribs"] == ""  # met: nothing bounds it


def test_a_run_without_the_floor_says_it_was_not_measured():
    results = copy.deepcopy(_results())
    results["single_row"] = [p for p in results["single_row"] if p["target"] != FLOOR]
    bounds = _bounds(results)
    for target in ("through Envoy / direct, gRPC c=8", "p50 added by Envoy at c=1 (ms)",
                   "gRPC via Envoy c=1 vs BentoML"):
        assert "floor was not measured" in bounds[target], target
    assert "Envoy CPU 200 µs per OK call" in bounds["p50 added by Envoy at c=1 (ms)"]


def test_the_floor_appears_in_the_single_row_table():
    results = dict(_results(), mode="full", started_at="now", command="python -m bench.run", seconds_per_point=10,
                   model={"name": "m", "version": "1", "flavor": "xgboost"}, start_seconds={}, rss_mb={},
                   machine={"cores": 2, "cpu": "x", "python": "3", "loadavg_start": "0", "loadavg_end": "0"})
    results["targets"] = report.targets(results)
    assert f"| {FLOOR} | h2load | 1,000 | 1,600 | 1,600 | 1.00 | 25.0 |" in report.render(results)


def test_a_missed_explain_target_names_the_one_thread_bare_call_each_worker_has():
    results = _results()
    results["explain"] = {"rows": 1000, "served_ms": 150.0, "bare_ms": 100.0, "ratio": 1.5, "bare_threads": 2,
                          "bounds_ms": {"response_bytes": 669_704, "serialize_response": 0.6,
                                        "bare_one_thread": 120.0}}
    text = _bounds(results)["Explain 1,000 rows / bare pred_contribs"]
    assert "needs ≤ 130.0 ms (1.3 × bare 100.0 ms on 2 thread(s)), served 150.0 ms" in text
    assert "on one thread, what each of the suite's workers has, takes 120.0 ms (served = 1.25× that)" in text
    assert "669,704 bytes" in text


def _with_steps(server_us: float) -> dict:
    """The run with the no-model server's CPU per call and a single Predict's in-process steps measured."""
    results = copy.deepcopy(_results())
    for found in results["single_row"]:
        if found["target"] == "minimal gRPC, no model":
            found["cpu_us_per_ok"] = {"server": server_us, "load generator": 30.0}
    results["single_row_steps_us"] = {"parse_request": 1.0, "encode_row": 15.0, "model": 20.0,
                                      "outbox_commit": 100.0, "servicer_call": 250.0, "intercepted_call": 300.0}
    return results


def test_a_cpu_bound_target_names_the_least_any_server_behind_envoy_spends_and_the_suites_own_steps():
    bounds = _bounds(_with_steps(300.0))
    # 667 µs available; no-model 300 + floor's Envoy 150 + model 20 = 470, + loader 50 = 520: 147 µs to spare
    text = bounds["gRPC via Envoy c=32 vs mlflow models serve"]
    assert "183 µs per call must go" in text
    assert "no-model server's 300 µs + Envoy's floor's 150 + the model's 20 = 470 µs per call" in text
    assert "147 µs under the budget" in text and "the suite's own work" in text
    assert "own work (production's model, no gRPC) is 250 µs, 300 µs through the interceptor" in text
    assert "outbox commit that makes its row durable before the answer 100 µs" in text
    # the c=1 bound carries the same steps
    assert "is 250 µs" in bounds["gRPC via Envoy c=1 vs mlflow models serve"]
    # a no-model server at 600 µs: 600 + 150 + 20 + 50 = 820 > 667
    text = _bounds(_with_steps(600.0))["gRPC via Envoy c=32 vs mlflow models serve"]
    assert "= 770 µs per call" in text and "out of reach here, measured" in text and "own work" not in text


def test_without_the_steps_the_cpu_bound_stays_as_measured():
    text = _bounds(_results())["gRPC via Envoy c=32 vs mlflow models serve"]
    assert text.endswith("183 µs per call must go.")


def test_the_steps_appear_under_the_single_row_table():
    results = dict(_with_steps(300.0), mode="full", started_at="now", command="python -m bench.run",
                   seconds_per_point=10, model={"name": "m", "version": "1", "flavor": "xgboost"}, start_seconds={},
                   rss_mb={}, machine={"cores": 2, "cpu": "x", "python": "3", "loadavg_start": "0",
                                       "loadavg_end": "0"})
    results["targets"] = report.targets(results)
    assert "Where a single Predict's time goes in the server: in-process" in report.render(results)


def test_rerender_computes_the_targets_again_from_a_runs_measurements(tmp_path):
    results = dict(_with_steps(300.0), mode="full", started_at="now", command="python -m bench.run",
                   seconds_per_point=10, model={"name": "m", "version": "1", "flavor": "xgboost"}, start_seconds={},
                   rss_mb={}, machine={"cores": 2, "cpu": "x", "python": "3", "loadavg_start": "0",
                                       "loadavg_end": "0"}, targets=[])
    (tmp_path / "results.json").write_text(json.dumps(results))
    written = report.rerender(tmp_path / "results.json")
    assert written == tmp_path / "RESULTS.md" and "183 µs per call must go" in written.read_text()
    assert json.loads((tmp_path / "results.json").read_text())["targets"] == report.targets(results)


def test_a_hop_target_the_floor_meets_names_what_the_suites_envoy_adds():
    results = copy.deepcopy(_results())
    for found in results["single_row"]:
        if found["target"] == FLOOR and found["concurrency"] == 32:
            found["ok_per_s"] = 1800.0  # 0.90 of direct's 2,000/s
    text = _bounds(results)["through Envoy / direct, gRPC c=32"]
    assert "1,800/s = 0.90 of direct" in text and "the floor meets it" in text and "50 µs more CPU per call" in text
