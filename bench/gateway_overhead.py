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
import gc
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from _common import (
    BENCH_DIR,
    BENCH_KEY,
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

PATH = "/v1/chat/completions"
MESSAGE = "The farmer plants rice in the wet season."
BODY = json.dumps({"model": "echo", "messages": [{"role": "user", "content": MESSAGE}]}).encode()
LATENCY_TARGET_MS = 1.0
THROUGHPUT_TARGET = 0.5


@dataclass
class Results:
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    wrk_p50_ms: list[float] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)
    # Other processes' CPU (cores) during the latency run and during the wrk run.
    other_load_latency: list[float] = field(default_factory=list)
    other_load_wrk: list[float] = field(default_factory=list)
    overhead_header_ms: list[float] = field(default_factory=list)


# --- latency: one connection, one request at a time -------------------------------------------


def _request_bytes(port: int) -> bytes:
    head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {BENCH_KEY}\r\nContent-Length: {len(BODY)}\r\n\r\n")
    return head.encode() + BODY


def latency_run(port: int, requests: int, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per request, and the x-kaset-overhead-ms values seen (empty for the bare app)."""
    payload = _request_bytes(port)
    expected = json.dumps(MESSAGE).encode()
    latencies: list[float] = []
    overheads: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for i in range(warmup + requests):
                started = time.perf_counter()
                sock.sendall(payload)
                status = reader.readline()
                length = -1
                overhead = None
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"x-kaset-overhead-ms":
                        overhead = float(value)
                body = reader.read(length)
                elapsed = time.perf_counter() - started
                if not status.startswith(b"HTTP/1.1 200") or expected not in body:
                    raise RuntimeError(f"unexpected reply from port {port}: {status!r} {body[:300]!r}")
                if i >= warmup:
                    latencies.append(elapsed)
                    if overhead is not None:
                        overheads.append(overhead)
        finally:
            if gc_was_enabled:
                gc.enable()
    return latencies, overheads


# --- throughput: wrk ------------------------------------------------------------------------


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def wrk_script(directory: Path) -> Path:
    script = directory / "post.lua"
    script.write_text(f"""
wrk.method = "POST"
wrk.body = {_lua_string(BODY)}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {BENCH_KEY}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""")
    return script


def wrk_run(wrk: str, script: Path, port: int, connections: int, seconds: float) -> dict[str, float]:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary from wrk:\n{out}")
    stats: dict[str, float] = json.loads(match.group(1))
    errors = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    if errors:
        raise RuntimeError(f"wrk saw {errors:.0f} errors against port {port}: {stats}")
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


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

    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found; install it with: apt-get install -y wrk", file=sys.stderr)
        return 2
    install_signal_handlers()
    info = machine()
    print_machine(info)
    print("server and client share this machine; nothing is pinned")

    results = {"kaset": Results(), "bare": Results()}
    with tempfile.TemporaryDirectory(prefix="kaset-bench-") as tmp:
        tmpdir = Path(tmp)
        script = wrk_script(tmpdir)
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
                    port = servers[name].port
                    res = results[name]
                    load = OtherLoad()
                    lat, overheads = latency_run(port, args.requests, args.warmup)
                    res.other_load_latency.append(load.cores())
                    res.p50_ms.append(percentile(lat, 50) * 1000)
                    res.p99_ms.append(percentile(lat, 99) * 1000)
                    if overheads:
                        res.overhead_header_ms.append(median(overheads))
                    wrk_run(wrk, script, port, args.connections, args.wrk_warmup)
                    cpu_before = _cpu_seconds(servers[name].pid)
                    load = OtherLoad()
                    stats = wrk_run(wrk, script, port, args.connections, args.duration)
                    res.other_load_wrk.append(load.cores())
                    res.cpu_us_per_request.append((_cpu_seconds(servers[name].pid) - cpu_before)
                                                  / stats["requests"] * 1e6)
                    res.rps.append(stats["rps"])
                    res.wrk_p50_ms.append(stats["p50_us"] / 1000)
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
    print(f"other processes' CPU during the measurements: median {median(loads):.2f}, max {max(loads):.2f} cores "
          f"of {info['nproc']}")
    write_json(args.json, {"machine": info, "args": vars(args),
                           "rounds": {name: vars(res) for name, res in results.items()},
                           "added_p50_ms": added_p50, "added_p99_ms": added_p99, "rps_ratio": ratio})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
