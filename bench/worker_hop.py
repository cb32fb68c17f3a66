"""The cost of one gateway → worker hop: the echo model behind `kaset serve` forwarding to a
`kaset worker`, against calling that worker directly, in the same run.

Three processes on free 127.0.0.1 ports: a worker serving `echo` (its token is the benchmark
key, so one request shape works for both), and a gateway with no models of its own that finds
the worker through KASET_WORKER_URLS (auth, request log and metrics on). Rounds alternate
between "via gateway" and "direct"; medians over rounds. The hop includes everything the
gateway adds to a forwarded call: authentication, the request log, metrics, and aiohttp's
round trip to the worker over its keep-alive pool.

Target (issue 5): at most 1 ms added p50 at 1 connection.

    .venv/bin/python bench/worker_hop.py [--rounds 3] [--requests 2000] [--duration 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import (
    begin_benchmark,
    free_port,
    kaset_worker,
    median,
    other_load_summary,
    table,
    workers_gateway,
    write_json,
)
from _rounds import Plan, Series, echo_chat, measure_round, require_wrk

POST = echo_chat()
HOP_TARGET_MS = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="latency requests per round")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="wrk seconds per round")
    parser.add_argument("--wrk-warmup", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    wrk = require_wrk()
    if wrk is None:
        return 2
    info = begin_benchmark()
    plan = Plan.of(args)
    results = {"gateway": Series(), "direct": Series()}
    with tempfile.TemporaryDirectory(prefix="kaset-bench-") as tmp:
        tmpdir = Path(tmp)
        script = POST.wrk_script(tmpdir / "post.lua")
        worker = kaset_worker("worker", free_port(), tmpdir / "worker", "echo")
        gateway = workers_gateway("gateway", free_port(), tmpdir / "gateway", [worker])
        servers = {"gateway": gateway, "direct": worker}
        try:
            worker.start()
            gateway.start()
            for round_no in range(1, args.rounds + 1):
                for name in (["gateway", "direct"] if round_no % 2 else ["direct", "gateway"]):
                    res = results[name]
                    # The worker's CPU, plus the gateway's on the gateway side.
                    pids = [worker.pid] + ([gateway.pid] if name == "gateway" else [])
                    measure_round(wrk, script, servers[name].port, POST, pids, plan, res)
                    print(f"round {round_no} {name:7}: p50 {res.p50_ms[-1]:.3f} ms  p99 {res.p99_ms[-1]:.3f} ms  "
                          f"{res.rps[-1]:.0f} req/s  CPU {res.cpu_us_per_request[-1]:.0f} µs/req  other load "
                          f"{res.other_load_latency[-1]:.2f}/{res.other_load_wrk[-1]:.2f} cores", flush=True)
        finally:
            gateway.stop()
            worker.stop()
    g, d = results["gateway"], results["direct"]
    added = median(g.p50_ms) - median(d.p50_ms)
    print()
    print(table(
        ["metric", "via gateway", "worker direct", "added / ratio", "target", "met"],
        [["p50 latency, 1 conn", f"{median(g.p50_ms):.3f} ms", f"{median(d.p50_ms):.3f} ms", f"+{added:.3f} ms",
          f"≤ +{HOP_TARGET_MS:.1f} ms", "yes" if added <= HOP_TARGET_MS else "NO"],
         ["p99 latency, 1 conn", f"{median(g.p99_ms):.3f} ms", f"{median(d.p99_ms):.3f} ms",
          f"+{median(g.p99_ms) - median(d.p99_ms):.3f} ms", "", ""],
         [f"req/s, {args.connections} conn", f"{median(g.rps):.0f}", f"{median(d.rps):.0f}",
          f"{median(g.rps) / median(d.rps):.0%}", "", ""],
         ["CPU per request (gateway + worker)", f"{median(g.cpu_us_per_request):.0f} µs",
          f"{median(d.cpu_us_per_request):.0f} µs", "", "", ""]]))
    print(other_load_summary(g.other_load_latency + g.other_load_wrk + d.other_load_latency + d.other_load_wrk))
    write_json(args.json, {"machine": info, "gateway": vars(g), "direct": vars(d), "added_p50_ms": added})
    return 0


if __name__ == "__main__":
    sys.exit(main())
