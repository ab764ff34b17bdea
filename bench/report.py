"""bench/RESULTS.md from one run's results.json: the single-row table, ratios against each anchor, the issue's
targets side by side (met / not met, and the measured figure that bounds a missed one), batch, Explain, drift,
start-to-SERVING and RSS."""
from __future__ import annotations

SUITE = ("suite gRPC via Envoy", "suite REST via Envoy", "suite gRPC direct")
ANCHORS = ("mlflow models serve", "BentoML", "minimal gRPC + model", "minimal gRPC, no model")
ENVOY, DIRECT, CEILING, MODEL_ANCHOR = SUITE[0], SUITE[2], ANCHORS[3], ANCHORS[2]


def point(results: dict, target: str, concurrency: int) -> dict | None:
    for found in results["single_row"]:
        if found["target"] == target and found["concurrency"] == concurrency:
            return found
    return None


def _rate(results, target, c) -> float | None:
    found = point(results, target, c)
    return found["ok_per_s"] if found else None


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _cpu_bound(results: dict, c: int) -> str:
    """Where the CPU of one OK request through Envoy went, per process (measured during that point)."""
    found = point(results, ENVOY, c)
    if not found or not found.get("cpu_us_per_ok"):
        return ""
    parts = ", ".join(f"{name} {us:,.0f} µs" for name, us in sorted(found["cpu_us_per_ok"].items(),
                                                                      key=lambda kv: -kv[1]))
    return f"CPU per OK call at c={c}: {parts} (2 cores = {2e6 / max(found['ok_per_s'], 1):,.0f} µs available/call)"


def batch_bound(b: dict) -> str:
    """What the same rows cost elsewhere: a minimal Python gRPC server, and the steps every server must take."""
    bounds = dict(b["bounds_ms"])
    minimal = bounds.pop("minimal_grpc_server_same_request", None)
    steps = ", ".join(f"{k.replace('_', ' ')} {v:.1f} ms" for k, v in bounds.items())
    head = (f"a minimal Python gRPC server with the same booster answers the same request in {minimal:.1f} ms "
            f"({minimal / b['bare_ms']:.1f}× bare); " if minimal is not None else "")
    cpu = ", ".join(f"{k} {v:.1f} ms" for k, v in b.get("cpu_ms_per_call", {}).items())
    return head + f"in-process steps on these rows: {steps}" + (f"; suite CPU per call: {cpu}" if cpu else "")


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with its measured value, whether it is met (None: not measured) and a bound."""
    out = []

    def add(goal: str, value, op: str, limit: float, bound: str = "", unit: str = "×"):
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out.append({"target": goal, "value": value, "goal": f"{op} {limit:g}{unit}", "met": met,
                    "bound": bound if met is False else ""})

    ceiling_bound = {c: (f"minimal gRPC + model (no auth, no log, no Envoy) reached "
                         f"{_rate(results, MODEL_ANCHOR, c) or 0:,.0f}/s = "
                         f"{(_ratio(_rate(results, MODEL_ANCHOR, c), _rate(results, CEILING, c)) or 0):.0%} "
                         f"of the ceiling; suite direct {_rate(results, DIRECT, c) or 0:,.0f}/s. "
                         + _cpu_bound(results, c)) for c in (1, 8, 32)}
    for c, goals in ((32, (("mlflow models serve", 30), ("BentoML", 5))), (1, (("mlflow models serve", 15),
                                                                                ("BentoML", 3)))):
        for anchor, limit in goals:
            add(f"gRPC via Envoy c={c} vs {anchor}", _ratio(_rate(results, ENVOY, c), _rate(results, anchor, c)),
                ">=", limit, ceiling_bound[c])
    add("gRPC via Envoy c=32 vs the no-model ceiling", _ratio(_rate(results, ENVOY, 32), _rate(results, CEILING, 32)),
        ">=", 0.5, ceiling_bound[32], unit="")
    envoy32, mlflow32 = point(results, ENVOY, 32), point(results, "mlflow models serve", 32)
    add("p99 at c=32: mlflow's p99 / ours (≥ 20 = ours ≤ 1/20)",
        _ratio(mlflow32 and mlflow32["p99_ms"], envoy32 and envoy32["p99_ms"]), ">=", 20, ceiling_bound[32])
    for c in (8, 32):
        add(f"through Envoy / direct, gRPC c={c}", _ratio(_rate(results, ENVOY, c), _rate(results, DIRECT, c)),
            ">=", 0.85, _cpu_bound(results, c), unit="")
    e1, d1 = point(results, ENVOY, 1), point(results, DIRECT, 1)
    add("p50 added by Envoy at c=1 (ms)", e1["p50_ms"] - d1["p50_ms"] if e1 and d1 else None, "<=", 0.3,
        _cpu_bound(results, 1), unit=" ms")
    batches = {b["rows"]: b for b in results.get("batch", [])}
    if 1000 in batches:
        b = batches[1000]
        add("PredictBatch 1,000 rows / bare model", b["ratio"], "<=", 2, batch_bound(b))
        add("mlflow's 1,000-row request / PredictBatch 1,000", _ratio(results.get("mlflow_rows_1000_ms"),
                                                                      b["served_ms"]), ">=", 10,
            f"PredictBatch 1,000 took {b['served_ms']:.1f} ms; " + batch_bound(b))
    explain = results.get("explain")
    add("Explain 1,000 rows / bare pred_contribs", explain and explain["ratio"], "<=", 1.3,
        explain and f"response {explain['bounds_ms']['response_bytes']:,} bytes, serialized in "
                    f"{explain['bounds_ms']['serialize_response']:.1f} ms")
    return out


def _f(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks: `make bench`", "",
        f"One run, {results['started_at']} UTC, mode **{results['mode']}**, `{results['command']}` "
        f"(`make bench`) on commit {results.get('commit', 'not recorded')}.  ",
        f"Machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}, load average {m['loadavg_start']} at the "
        f"start and {m['loadavg_end']} at the end. **Shared machine**: other engineers ran tests on the same "
        "2 cores during the run, and the load generators (h2load, wrk) and every server share them too; compare "
        "ratios from one run, not absolutes.  ",
        f"Model: {results['model']['name']} v{results['model']['version']} ({results['model']['flavor']}); "
        f"one Telco row; {results['seconds_per_point']} s per point after a warm-up; successes counted from the "
        "servers' own `churn_grpc_requests_total{code=\"OK\"}` (wrk's 2xx for the HTTP-only anchors).", ""]
    for name, why in results.get("skipped", {}).items():
        lines.append(f"- **{name} skipped**: {why}")
    lines += ["", "## Single row", "", "| path | loader | req/s c=1 | c=8 | c=32 | p50 c=1 (ms) | p99 c=32 (ms) | "
              "OK / answers |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for target in (*ANCHORS, *SUITE):
        points = [point(results, target, c) for c in (1, 8, 32)]
        if not any(points):
            continue
        first = next(p for p in points if p)
        ok = sum(p["ok"] for p in points if p)
        answered = sum(p["requests"] for p in points if p)
        lines.append(f"| {target} | {first['loader']} | " + " | ".join(_f(p and p["ok_per_s"]) for p in points)
                     + f" | {_f(points[0] and points[0]['p50_ms'], 2)} | {_f(points[2] and points[2]['p99_ms'], 1)}"
                     f" | {ok:,} / {answered:,} |")
    lines += ["", "## Ratios (suite req/s ÷ anchor req/s, same concurrency)", "",
              "| suite path | vs | c=1 | c=8 | c=32 |", "|---|---|---:|---:|---:|"]
    for target in SUITE:
        for anchor in ANCHORS:
            ratios = [_ratio(_rate(results, target, c), _rate(results, anchor, c)) for c in (1, 8, 32)]
            if any(r is not None for r in ratios):
                lines.append(f"| {target} | {anchor} | " + " | ".join(_f(r, 2) for r in ratios) + " |")
    lines += ["", "## The issue's targets", "", "| target | goal | measured | met | what bounds it (measured) |",
              "|---|---|---:|---|---|"]
    for t in results["targets"]:
        met = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {_f(t['value'], 2)} | {met} | {t['bound']} |")
    lines += ["", "## Batch, Explain, drift (medians, served and bare calls alternated; gRPC direct to production)", "",
              "| workload | served (ms) | bare (ms) | ratio | bare side |", "|---|---:|---:|---:|---|"]
    for b in results.get("batch", []):
        lines.append(f"| PredictBatch {b['rows']:,} rows | {b['served_ms']:.1f} | {b['bare_ms']:.2f} | "
                     f"{b['ratio']:.1f} | xgboost `inplace_predict`, {b['bare_threads']} thread(s) (the faster) |")
    if results.get("mlflow_rows_1000_ms"):
        lines.append(f"| mlflow `/invocations`, 1,000 rows | {results['mlflow_rows_1000_ms']:.1f} | | | |")
    if results.get("explain"):
        e = results["explain"]
        threads = f", {e['bare_threads']} thread(s) (the faster)" if "bare_threads" in e else ""
        lines.append(f"| Explain {e['rows']:,} rows | {e['served_ms']:.1f} | {e['bare_ms']:.1f} | {e['ratio']:.2f} |"
                     f" xgboost `pred_contribs`{threads} |")
    if results.get("drift"):
        d = results["drift"]
        lines.append(f"| GetDriftReport, {d['rows']:,} recorded predictions vs {d['reference_rows']:,} reference "
                     f"rows (json) | {d['served_ms']:.0f} | {d['bare_ms']:.0f} | {d['ratio']:.2f} | "
                     "one Evidently `DataDriftPreset` run + JSON |")
    for b in results.get("batch", []):
        lines += ["", f"PredictBatch {b['rows']:,}: {batch_bound(b)}."]
    lines += ["", "## Start to SERVING and memory", "", "| process | start → SERVING (s) | RSS after the run (MB) |",
              "|---|---:|---:|"]
    for name in sorted(set(results["start_seconds"]) | set(results["rss_mb"])):
        lines.append(f"| {name} | {_f(results['start_seconds'].get(name), 1)} | {_f(results['rss_mb'].get(name))} |")
    lines += ["", "Start → SERVING: process start until gRPC health says SERVING (Envoy: until every upstream is "
              "healthy; HTTP anchors: until their readiness URL answers 200). RSS includes child processes.", ""]
    return "\n".join(lines)
