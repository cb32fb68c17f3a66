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
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    BENCH_KEY,
    DEFAULT_MODELS_DIR,
    PYTHON,
    OtherLoad,
    Server,
    free_port,
    install_signal_handlers,
    kaset_server,
    machine,
    median,
    percentile,
    print_machine,
    table,
    write_json,
)
from gateway_overhead import Results, _cpu_seconds, latency_run, wrk_run, wrk_script

HOP_TARGET_MS = 1.0


def worker_server(port: int, data_dir: Path) -> Server:
    argv = [PYTHON, "-m", "kaset", "worker", "--models", "echo", "--host", "127.0.0.1", "--port", str(port)]
    env = {"KASET_DATA_DIR": str(data_dir), "KASET_MODELS_DIR": str(DEFAULT_MODELS_DIR),
           "KASET_WORKER_TOKEN": BENCH_KEY}
    return Server("worker", argv, port, "/health/ready", env=env)


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
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found; install it with: apt-get install -y wrk", file=sys.stderr)
        return 2
    install_signal_handlers()
    info = machine()
    print_machine(info)
    results = {"gateway": Results(), "direct": Results()}
    with tempfile.TemporaryDirectory(prefix="kaset-bench-") as tmp:
        tmpdir = Path(tmp)
        script = wrk_script(tmpdir)
        worker = worker_server(free_port(), tmpdir / "worker")
        gateway = kaset_server("gateway", free_port(), tmpdir / "gateway", models="", extra_env={
            "KASET_WORKER_URLS": f"http://127.0.0.1:{worker.port}", "KASET_WORKER_TOKEN": BENCH_KEY,
            "KASET_MODELS": "[]"})
        ports = {"gateway": gateway.port, "direct": worker.port}
        pids = {}
        try:
            worker.start()
            gateway.start()
            pids = {"gateway": gateway.pid, "direct": worker.pid}
            for round_no in range(1, args.rounds + 1):
                for name in (["gateway", "direct"] if round_no % 2 else ["direct", "gateway"]):
                    res = results[name]
                    load = OtherLoad()
                    lat, _ = latency_run(ports[name], args.requests, args.warmup)
                    res.other_load_latency.append(load.cores())
                    res.p50_ms.append(percentile(lat, 50) * 1000)
                    res.p99_ms.append(percentile(lat, 99) * 1000)
                    wrk_run(wrk, script, ports[name], args.connections, args.wrk_warmup)
                    cpu = _cpu_seconds(pids["direct"]) + (_cpu_seconds(pids["gateway"]) if name == "gateway" else 0)
                    load = OtherLoad()
                    stats = wrk_run(wrk, script, ports[name], args.connections, args.duration)
                    res.other_load_wrk.append(load.cores())
                    after = _cpu_seconds(pids["direct"]) + (_cpu_seconds(pids["gateway"]) if name == "gateway" else 0)
                    res.cpu_us_per_request.append((after - cpu) / stats["requests"] * 1e6)
                    res.rps.append(stats["rps"])
                    res.wrk_p50_ms.append(stats["p50_us"] / 1000)
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
    other = g.other_load_latency + g.other_load_wrk + d.other_load_latency + d.other_load_wrk
    print(f"other processes' CPU during the measurements: median {median(other):.2f}, max {max(other):.2f} cores")
    write_json(args.json, {"machine": info, "gateway": vars(g), "direct": vars(d), "added_p50_ms": added})
    return 0


if __name__ == "__main__":
    sys.exit(main())
