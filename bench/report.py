"""bench/RESULTS.md from one run's results.json: the single-row table, ratios against each anchor, the issue's
targets side by side (met / not met, and the measured figure that bounds a missed one), batch, Explain, drift,
start-to-SERVING and RSS. `python -m bench.report [bench/results.json]` writes it again from a run's measurements
(after a change to the texts here)."""
from __future__ import annotations

import json
import pathlib
import sys

SUITE = ("suite gRPC via Envoy", "suite REST via Envoy", "suite gRPC direct")
ANCHORS = ("mlflow models serve", "BentoML", "minimal gRPC + model", "minimal gRPC, no model")
ENVOY, DIRECT, CEILING = SUITE[0], SUITE[2], ANCHORS[3]
FLOOR = "Envoy floor (router only) → direct"  # a second Envoy, only the router, in front of production


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


def _cpu(found: dict) -> tuple[float, float, str]:
    """A point's CPU per OK call: the servers' sum, the load generator's, and the servers by process."""
    cpu = dict(found.get("cpu_us_per_ok", {}))
    loader = cpu.pop("load generator", 0.0)
    parts = ", ".join(f"{name} {us:,.0f}" for name, us in sorted(cpu.items(), key=lambda kv: -kv[1]))
    return sum(cpu.values()), loader, parts


def _floor_added(results: dict, c: int) -> float | None:
    """Envoy's floor (router only) p50 minus direct's, same run, same concurrency."""
    floor, direct = point(results, FLOOR, c), point(results, DIRECT, c)
    return floor["p50_ms"] - direct["p50_ms"] if floor and direct else None


NO_FLOOR = "Envoy's floor was not measured in this run."


def steps_text(results: dict) -> str:
    """Where a single Predict's time goes in the server, timed in-process (bench/steps.py); "" if not measured."""
    s = results.get("single_row_steps_us")
    if not s:
        return ""
    through = (f", {s['intercepted_call']:,.0f} µs through the interceptor (API key, token, request id, metrics)"
               if "intercepted_call" in s else "")
    return (f"in-process, a Predict's own work (production's model, no gRPC) is {s['servicer_call']:,.0f} µs"
            f"{through}: the outbox commit that makes its row durable before the answer {s['outbox_commit']:,.0f} µs "
            f"(alone; under load callers share a commit), encoding the row {s['encode_row']:,.0f}, the model "
            f"{s['model']:,.0f}, parsing {s['parse_request']:,.0f}")


def _least_cpu(results: dict, c: int, available: float, loader: float) -> str:
    """The least any Python gRPC server behind Envoy spends per call here (no-model server + Envoy's floor + the
    model), against the goal's budget: what is left is the suite's own work."""
    ceiling, floor, s = point(results, CEILING, c), point(results, FLOOR, c), results.get("single_row_steps_us")
    server = ceiling and ceiling.get("cpu_us_per_ok", {}).get("server")
    hop = floor and floor.get("cpu_us_per_ok", {}).get("envoy")
    if not (server and hop and s):
        return ""
    least = server + hop + s["model"]
    head = (f" The least a Python gRPC server behind Envoy spends here: the no-model server's {server:,.0f} µs + "
            f"Envoy's floor's {hop:,.0f} + the model's {s['model']:,.0f} = {least:,.0f} µs per call")
    if least + loader >= available:
        return head + ": with the load generator's share, over the budget: out of reach here, measured."
    return (head + f", {available - least - loader:,.0f} µs under the budget (with the load generator's share): "
                   f"what must go is the suite's own work; {steps_text(results)}.")


def cpu_bound(results: dict, c: int, goal_rate: float, basis: str) -> str:
    """At c=8/32 the 2 cores are the limit: the goal rate leaves cores/R of CPU per call, against what each OK
    call through Envoy cost (servers and load generator share the cores) and the least any server could."""
    cores, found = results["machine"]["cores"], point(results, ENVOY, c)
    available = cores * 1e6 / goal_rate
    spent, loader, parts = _cpu(found)
    head = (f"needs {goal_rate:,.0f} OK/s ({basis}) = {available:,.0f} µs of {cores} cores per call; each OK call "
            f"through Envoy cost {spent:,.0f} µs ({parts}) + {loader:,.0f} µs of the load generator")
    over = spent + loader - available
    if over <= 0:
        busy = found["ok_per_s"] * (spent + loader) / 1e6
        return head + (f", {-over:,.0f} µs under: the CPU is not what bounds it at c={c}; at the measured rate the "
                       f"processes kept {busy:.2f} of {cores} cores busy: what bounds it is the time calls wait between "
                       "processes (the cores idle meanwhile), not CPU time.")
    return head + f": {over:,.0f} µs per call must go." + _least_cpu(results, c, available, loader)


def latency_bound(results: dict, goal_rate: float, basis: str) -> str:
    """At c=1 a call's latency is the limit: the goal rate leaves 1/R per call, against the measured p50 of the
    suite, the no-model gRPC server and Envoy's floor."""
    need = 1000 / goal_rate
    envoy, direct, nomodel = (point(results, t, 1)["p50_ms"] for t in (ENVOY, DIRECT, CEILING))
    floor = _floor_added(results, 1)
    head = (f"needs {goal_rate:,.0f} OK/s ({basis}) = {need:.2f} ms per call at c=1; p50 through Envoy "
            f"{envoy:.2f} ms, suite direct {direct:.2f}, no-model gRPC {nomodel:.2f}")
    if nomodel >= need:
        return head + ". Even the no-model gRPC server alone exceeds it: out of reach of any Python gRPC server here."
    if floor is None:
        return f"{head}. {NO_FLOOR}"
    head += f", Envoy's floor adds {floor:.2f}"
    if nomodel + floor >= need:
        return (head + f". Even no-model + floor ({nomodel + floor:.2f} ms) exceeds it: out of reach of any Python "
                       "gRPC server behind Envoy here, measured.")
    steps = steps_text(results)
    return (head + f". {envoy - need:.2f} ms must go: the suite's path costs {direct - nomodel:.2f} ms over the "
                   f"no-model server, its Envoy {envoy - direct - floor:.2f} ms over the floor"
            + (f"; {steps}." if steps else "."))


def p99_bound(results: dict) -> str:
    found = {t: point(results, t, 32) for t in (ENVOY, DIRECT, FLOOR, CEILING)}
    mlflow = point(results, "mlflow models serve", 32)["p99_ms"]
    measured = ", ".join(f"{name} {p['p99_ms']:.1f}" for name, p in found.items() if p)
    return f"needs p99 ≤ {mlflow / 20:.1f} ms (mlflow's {mlflow:,.1f} ms ÷ 20); p99 at c=32: {measured} ms."


def hop_bound(results: dict, c: int) -> str:
    """Through Envoy / direct: what the floor Envoy keeps of direct's rate, and Envoy's CPU per call."""
    direct, envoy = point(results, DIRECT, c), point(results, ENVOY, c)
    floor = point(results, FLOOR, c)
    envoy_us = envoy["cpu_us_per_ok"].get("envoy", 0.0)
    head = f"needs {0.85 * direct['ok_per_s']:,.0f} OK/s (0.85 × direct's {direct['ok_per_s']:,.0f}/s); "
    if floor is None:
        return head + f"Envoy CPU {envoy_us:,.0f} µs per OK call. {NO_FLOOR}"
    share, floor_us = floor["ok_per_s"] / direct["ok_per_s"], floor["cpu_us_per_ok"].get("envoy", 0.0)
    return (head + f"Envoy's floor (router only) reached {floor['ok_per_s']:,.0f}/s = {share:.2f} of direct; Envoy "
            f"CPU per OK call {envoy_us:,.0f} µs, the floor's {floor_us:,.0f} µs"
            + (": even the floor misses it, measured." if share < 0.85 else
               f": the floor meets it; what the suite's Envoy adds to it ({envoy_us - floor_us:,.0f} µs more CPU per "
               "call: its filters, the canary's routes and clusters, the access log) is what bounds it, measured."))


def added_bound(results: dict) -> str:
    envoy = point(results, ENVOY, 1)
    floor, added = point(results, FLOOR, 1), envoy["p50_ms"] - point(results, DIRECT, 1)["p50_ms"]
    envoy_us = envoy["cpu_us_per_ok"].get("envoy", 0.0)
    if floor is None:
        return f"Envoy CPU {envoy_us:,.0f} µs per OK call. {NO_FLOOR}"
    floor_added = _floor_added(results, 1)
    return (f"Envoy's floor (router only) adds {floor_added:.2f} ms p50 at c=1 in this run, the suite's Envoy "
            f"{added - floor_added:.2f} ms more; Envoy CPU per OK call {envoy_us:,.0f} µs, the floor's "
            f"{floor['cpu_us_per_ok'].get('envoy', 0.0):,.0f} µs" + (": even the floor misses it, measured."
                                                                     if floor_added > 0.3 else "."))


def batch_bound(b: dict) -> str:
    """What the same rows cost elsewhere: a minimal Python gRPC server, and the steps every server must take."""
    bounds = dict(b["bounds_ms"])
    minimal = bounds.pop("minimal_grpc_server_same_request", None)
    steps = ", ".join(f"{k.replace('_', ' ')} {v:.1f} ms" for k, v in bounds.items())
    head = (f"a minimal Python gRPC server with the same booster answers the same request in {minimal:.1f} ms "
            f"({minimal / b['bare_ms']:.1f}× bare); " if minimal is not None else "")
    cpu = ", ".join(f"{k} {v:.1f} ms" for k, v in b.get("cpu_ms_per_call", {}).items())
    return head + f"in-process steps on these rows: {steps}" + (f"; suite CPU per call: {cpu}" if cpu else "")


def batch_vs_bare_bound(b: dict) -> str:
    minimal = b["bounds_ms"].get("minimal_grpc_server_same_request")
    verdict = ("; even the minimal server misses it" if minimal is not None and minimal > 2 * b["bare_ms"] else "")
    return (f"needs ≤ {2 * b['bare_ms']:.1f} ms (2 × bare {b['bare_ms']:.2f} ms), served {b['served_ms']:.1f} ms; "
            + batch_bound(b) + verdict + ".")


def batch_vs_mlflow_bound(b: dict, mlflow_ms: float) -> str:
    """mlflow's own 1,000-row time against the fastest a server can be: a minimal gRPC server, the bare model."""
    minimal = b["bounds_ms"].get("minimal_grpc_server_same_request")
    head = f"needs ≤ {mlflow_ms / 10:.1f} ms (mlflow's {mlflow_ms:.1f} ms ÷ 10), served {b['served_ms']:.1f} ms. "
    against = [(f"a minimal Python gRPC server's {minimal:.1f} ms on the same request", mlflow_ms / minimal)
               ] if minimal else []
    against.append((f"the bare model's {b['bare_ms']:.1f} ms", mlflow_ms / b["bare_ms"]))
    head += "mlflow's time is " + " and ".join(f"{ratio:.1f}× {what}" for what, ratio in against)
    if against[-1][1] < 10:
        return head + ": out of reach even of the bare model in-process, measured."
    if minimal and against[0][1] < 10:
        return head + ": out of reach of any Python gRPC server here, measured."
    return head + "."


def explain_bound(explain: dict) -> str:
    """The served side computes contributions in one worker (its share of the cores), the bare side on whichever
    thread count was faster."""
    bounds = explain["bounds_ms"]
    head = f"needs ≤ {1.3 * explain['bare_ms']:.1f} ms (1.3 × bare {explain['bare_ms']:.1f} ms on " \
           f"{explain['bare_threads']} thread(s)), served {explain['served_ms']:.1f} ms"
    one = bounds.get("bare_one_thread")
    if one is not None and explain["bare_threads"] != 1:
        head += (f"; the bare call on one thread, what each of the suite's workers has, takes {one:.1f} ms "
                 f"(served = {explain['served_ms'] / one:.2f}× that)")
    return head + (f"; the response is {bounds['response_bytes']:,} bytes, serialized in "
                   f"{bounds['serialize_response']:.1f} ms.")


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with its measured value, whether it is met (None: not measured) and, for a missed
    one, what bounds it: the goal's requirement against this run's own floors."""
    out = []

    def add(goal: str, value, op: str, limit: float, bound=lambda: "", unit: str = "×"):
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out.append({"target": goal, "value": value, "goal": f"{op} {limit:g}{unit}", "met": met,
                    "bound": bound() if met is False else ""})

    for c, goals in ((32, (("mlflow models serve", 30), ("BentoML", 5))), (1, (("mlflow models serve", 15),
                                                                                ("BentoML", 3)))):
        for anchor, limit in goals:
            rate = _rate(results, anchor, c)
            basis = (f"{limit:g} × {anchor}'s {rate or 0:,.0f}/s", limit * (rate or 0))
            add(f"gRPC via Envoy c={c} vs {anchor}", _ratio(_rate(results, ENVOY, c), rate), ">=", limit,
                (lambda c=c, b=basis: cpu_bound(results, c, b[1], b[0])) if c > 1 else
                (lambda b=basis: latency_bound(results, b[1], b[0])))
    ceiling = _rate(results, CEILING, 32)
    add("gRPC via Envoy c=32 vs the no-model ceiling", _ratio(_rate(results, ENVOY, 32), ceiling), ">=", 0.5,
        lambda: cpu_bound(results, 32, 0.5 * ceiling, f"0.5 × the no-model ceiling's {ceiling:,.0f}/s"), unit="")
    envoy32, mlflow32 = point(results, ENVOY, 32), point(results, "mlflow models serve", 32)
    add("p99 at c=32: mlflow's p99 / ours (≥ 20 = ours ≤ 1/20)",
        _ratio(mlflow32 and mlflow32["p99_ms"], envoy32 and envoy32["p99_ms"]), ">=", 20, lambda: p99_bound(results))
    for c in (8, 32):
        add(f"through Envoy / direct, gRPC c={c}", _ratio(_rate(results, ENVOY, c), _rate(results, DIRECT, c)),
            ">=", 0.85, lambda c=c: hop_bound(results, c), unit="")
    e1, d1 = point(results, ENVOY, 1), point(results, DIRECT, 1)
    add("p50 added by Envoy at c=1 (ms)", e1["p50_ms"] - d1["p50_ms"] if e1 and d1 else None, "<=", 0.3,
        lambda: added_bound(results), unit=" ms")
    batches = {b["rows"]: b for b in results.get("batch", [])}
    if 1000 in batches:
        b, mlflow_ms = batches[1000], results.get("mlflow_rows_1000_ms")
        add("PredictBatch 1,000 rows / bare model", b["ratio"], "<=", 2, lambda: batch_vs_bare_bound(b))
        add("mlflow's 1,000-row request / PredictBatch 1,000", _ratio(mlflow_ms, b["served_ms"]), ">=", 10,
            lambda: batch_vs_mlflow_bound(b, mlflow_ms))
    explain = results.get("explain")
    add("Explain 1,000 rows / bare pred_contribs", explain and explain["ratio"], "<=", 1.3,
        lambda: explain_bound(explain))
    return out


def rerender(results_json: pathlib.Path) -> pathlib.Path:
    """RESULTS.md beside a results.json, its targets and bounds computed again by this module (after a change to
    the texts: the measurements stay those of the run)."""
    results = json.loads(results_json.read_text())
    results["targets"] = targets(results)
    results_json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    out = results_json.with_name("RESULTS.md")
    out.write_text(render(results))
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
    for target in (*ANCHORS, *SUITE, FLOOR):
        points = [point(results, target, c) for c in (1, 8, 32)]
        if not any(points):
            continue
        first = next(p for p in points if p)
        ok = sum(p["ok"] for p in points if p)
        answered = sum(p["requests"] for p in points if p)
        lines.append(f"| {target} | {first['loader']} | " + " | ".join(_f(p and p["ok_per_s"]) for p in points)
                     + f" | {_f(points[0] and points[0]['p50_ms'], 2)} | {_f(points[2] and points[2]['p99_ms'], 1)}"
                     f" | {ok:,} / {answered:,} |")
    steps = results.get("single_row_steps_us")
    if steps:
        lines += ["", f"Where a single Predict's time goes in the server: {steps_text(results)} (means over many "
                  "calls, bench/steps.py; the rest of the servicer call builds the logged record and the answer, "
                  "and counts the prediction)."]
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


if __name__ == "__main__":  # python -m bench.report [bench/results.json]
    print(f"wrote {rerender(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else 'bench/results.json'))}")
