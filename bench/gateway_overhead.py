"""The gateway's own cost: `kaset serve --models echo` (auth on) against a bare FastAPI app.

Both servers run as subprocesses on free 127.0.0.1 ports, on the same machine as the
client (nothing is pinned). Rounds alternate between the two servers so that noise from
other work on the machine hits both alike; the reported figure is the median over rounds.

* Latency, 1 connection: a minimal blocking keep-alive HTTP/1.1 client (raw socket, GC off)
  sends N requests after a warmup, one at a time; p50/p99 per round. It also reads the
  gateway's `x-kaset-overhead-ms` header.
* Throughput, 16 connections: `wrk -t1 -c16` with a Lua script (POST body + Authorization)
  for D seconds after a warmup; requests/s per round. Install wrk with `apt-get install wrk`.

Targets: at most 1 ms added p50 latency; at least 50% of the bare app's requests/s.

    .venv/bin/python bench/gateway_overhead.py [--rounds 3] [--requests 2000] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import (
    BENCH_DIR,
    PYTHON,
    Server,
    begin_benchmark,
    free_port,
    kaset_server,
    lua_string,
    median,
    other_load_summary,
    run_main,
    table,
    write_json,
    wrk_post,
)
from _rounds import Plan, Series, echo_chat, measure_round, require_wrk

POST = echo_chat()
LATENCY_TARGET_MS = 1.0
THROUGHPUT_TARGET = 0.5

# peer_gateways.py (another script) still imports these two from here; they can go once it uses
# _common.wrk_post_script and wrk_post itself.
PATH = POST.path
_lua_string = lua_string


def wrk_run(wrk: str, script: Path, port: int, connections: int, seconds: float) -> dict[str, float]:
    return wrk_post(wrk, script, port, PATH, connections, seconds)


# --- limits ---------------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/0"
# A per-minute limit no run reaches and a concurrency limit above wrk's connections: every
# request pays for the checks (a concurrency slot taken and given back, a moving-window hit,
# the window read for the x-ratelimit-* headers) and none is refused.
BENCH_LIMITS = {"requests_per_minute": 10_000_000, "concurrent_requests": 1000}


def limits_env(mode: str) -> dict[str, str]:
    if mode == "off":
        return {}
    env = {"KASET_DEFAULT_KEY_LIMITS": json.dumps(BENCH_LIMITS)}
    if mode.startswith("redis"):
        env |= {"KASET_LIMITS_STORAGE_URL": REDIS_URL, "KASET_REDIS_PREFIX": f"kaset-bench-{time.time_ns()}:"}
    if mode == "redis-rpm":
        env |= {"KASET_DEFAULT_KEY_LIMITS": json.dumps({"requests_per_minute": BENCH_LIMITS["requests_per_minute"]}),
                "KASET_LIMITS_HEADERS": "false"}
    return env


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server (default 3)")
    parser.add_argument("--requests", type=int, default=2000, help="latency requests per round (default 2000)")
    parser.add_argument("--warmup", type=int, default=300, help="latency warmup requests per round (default 300)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--duration", type=float, default=10.0, help="wrk seconds per round (default 10)")
    parser.add_argument("--wrk-warmup", type=float, default=2.0, help="wrk warmup seconds per round (default 2)")
    parser.add_argument("--limits", choices=["off", "memory", "redis", "redis-rpm"], default="off",
                        help="give every key a requests-per-minute and a concurrency limit, with x-ratelimit-* "
                             "headers on every response (too high to refuse anything: the cost of checking them "
                             f"is measured), counted in memory or in Redis at {REDIS_URL}; redis-rpm: only the "
                             "per-minute limit and no headers on success, one Redis call per request (default off)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    wrk = require_wrk()
    if wrk is None:
        return 2
    info = begin_benchmark()
    print("server and client share this machine; nothing is pinned")

    plan = Plan.of(args)
    results = {"kaset": Series(), "bare": Series()}
    with tempfile.TemporaryDirectory(prefix="kaset-bench-") as tmp:
        tmpdir = Path(tmp)
        script = POST.wrk_script(tmpdir / "post.lua")
        bare_port = free_port()
        servers = {
            "kaset": kaset_server("kaset", free_port(), tmpdir / "data", models="echo",
                                  extra_env=limits_env(args.limits)),
            "bare": Server("bare", [PYTHON, str(BENCH_DIR / "bare_app.py"), "--port", str(bare_port)], bare_port,
                           "/health/live"),
        }
        try:
            for server in servers.values():
                server.start()
                print(f"started {server.name} (pid {server.pid}) on 127.0.0.1:{server.port}")
            for round_no in range(1, args.rounds + 1):
                order = ["kaset", "bare"] if round_no % 2 else ["bare", "kaset"]
                for name in order:
                    res = results[name]
                    measure_round(wrk, script, servers[name].port, POST, [servers[name].pid], plan, res)
                    overheads = name == "kaset" and bool(res.overhead_header_ms)  # bare_app.py sends none
                    print(f"round {round_no} {name:5}: p50 {res.p50_ms[-1]:.3f} ms  p99 {res.p99_ms[-1]:.3f} ms  "
                          f"{args.connections} conn {res.rps[-1]:.0f} req/s, server CPU "
                          f"{res.cpu_us_per_request[-1]:.0f} µs/req"
                          + (f"  x-kaset-overhead-ms median {res.overhead_header_ms[-1]:.3f}" if overheads else "")
                          + f"  other load {res.other_load_latency[-1]:.2f}/{res.other_load_wrk[-1]:.2f} cores",
                          flush=True)
        finally:
            for server in servers.values():
                server.stop()

    k, b = results["kaset"], results["bare"]
    added_p50 = median(k.p50_ms) - median(b.p50_ms)
    added_p99 = median(k.p99_ms) - median(b.p99_ms)
    ratio = median(k.rps) / median(b.rps)
    print()
    print(f"medians over {args.rounds} rounds; latency: {args.requests} requests/round at 1 connection after "
          f"{args.warmup} warmup; throughput: wrk {args.connections} connections, {args.duration:.0f} s/round "
          f"after {args.wrk_warmup:.0f} s warmup")
    print(table(
        ["metric", "kaset (echo, auth on)", "bare FastAPI", "added / ratio", "target", "met"],
        [
            ["p50 latency, 1 conn", f"{median(k.p50_ms):.3f} ms", f"{median(b.p50_ms):.3f} ms",
             f"+{added_p50:.3f} ms", f"≤ +{LATENCY_TARGET_MS:.1f} ms",
             "yes" if added_p50 <= LATENCY_TARGET_MS else "NO"],
            ["p99 latency, 1 conn", f"{median(k.p99_ms):.3f} ms", f"{median(b.p99_ms):.3f} ms",
             f"+{added_p99:.3f} ms", "", ""],
            [f"req/s, {args.connections} conn", f"{median(k.rps):.0f}", f"{median(b.rps):.0f}",
             f"{ratio:.0%}", f"≥ {THROUGHPUT_TARGET:.0%}", "yes" if ratio >= THROUGHPUT_TARGET else "NO"],
            [f"server CPU per request, {args.connections} conn", f"{median(k.cpu_us_per_request):.0f} µs",
             f"{median(b.cpu_us_per_request):.0f} µs",
             f"+{median(k.cpu_us_per_request) - median(b.cpu_us_per_request):.0f} µs", "", ""],
            [f"wrk p50, {args.connections} conn", f"{median(k.wrk_p50_ms):.2f} ms", f"{median(b.wrk_p50_ms):.2f} ms",
             "", "", ""],
            ["x-kaset-overhead-ms (median)", f"{median(k.overhead_header_ms):.3f} ms", "", "", "", ""],
        ],
    ))
    loads = k.other_load_latency + k.other_load_wrk + b.other_load_latency + b.other_load_wrk
    print(other_load_summary(loads, info["nproc"]))
    write_json(args.json, {"machine": info, "args": vars(args),
                           "rounds": {name: vars(res) for name, res in results.items()},
                           "added_p50_ms": added_p50, "added_p99_ms": added_p99, "rps_ratio": ratio})
    return 0


if __name__ == "__main__":
    run_main(main)
