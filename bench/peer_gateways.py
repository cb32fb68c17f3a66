"""One upstream, three ways: directly, through LiteLLM's proxy, and through Kaset's gateway.

The upstream is `bench/bare_app.py` (FastAPI under uvicorn with uvloop and httptools, in its own
process): POST /v1/chat/completions returns a small, fixed chat.completion for the fixed request
body sent here. It is measured

(a) directly;
(b) through LiteLLM's proxy (`litellm --config ... --num_workers 1`), model `bench` pointing at the
    upstream as an OpenAI-compatible `api_base`. LiteLLM is installed with `pip install
    'litellm[proxy]'` into a benchmark-only venv, `var/bench-venv/` (created if missing; never into
    `.venv`). If that fails, the script says so and measures (a) and (c);
(c) through `kaset serve` (one process, auth off, everything else as shipped: request log,
    metrics), with a catalog entry `bench` of runtime `openai-compatible` pointing at the upstream.

Each gateway runs as one process on a free 127.0.0.1 port, on the same two cores as the upstream
and the client (nothing is pinned). Rounds alternate the order of the three; figures are medians
over rounds.

* Latency, 1 connection: a blocking keep-alive HTTP/1.1 client on a raw socket (GC off) sends
  `--requests` POSTs one at a time after `--warmup`; p50/p99 per round.
* Throughput, 16 connections: `wrk -t1 -c16` with a Lua script for the POST body, `--duration`
  seconds after `--wrk-warmup`; requests/s and wrk's p50/p99 per round. `apt-get install -y wrk`.

Targets for Kaset: at most +0.5 ms p50 over direct, at least 40% of direct's requests/s.

`--profile-seconds S`: after the rounds, py-spy (`var/bench-venv/bin/py-spy`, or on PATH) samples
each Kaset gateway's main thread (the event loop) for S seconds under wrk, and the script prints
its CPU per request by stage (aiohttp client, provider runtime, FastAPI, uvicorn, ...) and by
innermost function. Shares of the samples times the main thread's CPU per request (psutil).

    .venv/bin/python bench/peer_gateways.py [--rounds 3] [--requests 1000] [--duration 10] [--skip-litellm]
    .venv/bin/python bench/peer_gateways.py --kaset-src /tmp/before/src --kaset-src src   # two trees, one run
    .venv/bin/python bench/peer_gateways.py --skip-litellm --rounds 1 --profile-seconds 8   # where Kaset's time goes
"""

from __future__ import annotations

import argparse
import gc
import json
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
    PYTHON,
    REPO,
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
from gateway_overhead import _lua_string, wrk_run

PATH = "/v1/chat/completions"
MODEL = "bench"
MESSAGE = "The farmer plants rice in the wet season."
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": MESSAGE}]}).encode()
EXPECTED = json.dumps(MESSAGE).encode()  # the upstream's reply content, passed on by every gateway
BENCH_VENV = REPO / "var" / "bench-venv"
LATENCY_TARGET_MS = 0.5
THROUGHPUT_TARGET = 0.4


@dataclass
class Results:
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    wrk_p50_ms: list[float] = field(default_factory=list)
    wrk_p99_ms: list[float] = field(default_factory=list)
    # CPU of the gateway's process tree per request during wrk (the upstream's for "direct").
    cpu_us_per_request: list[float] = field(default_factory=list)
    other_load: list[float] = field(default_factory=list)


# --- the client sides -------------------------------------------------------------------------


def latency_run(port: int, requests: int, warmup: int) -> list[float]:
    """Seconds per request, one keep-alive connection, one request at a time."""
    payload = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    latencies: list[float] = []
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
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length < 0:
                    raise RuntimeError(f"no Content-Length from port {port}: {status!r}")
                body = reader.read(length)
                elapsed = time.perf_counter() - started
                if not status.startswith(b"HTTP/1.1 200") or EXPECTED not in body:
                    raise RuntimeError(f"unexpected reply from port {port}: {status!r} {body[:300]!r}")
                if i >= warmup:
                    latencies.append(elapsed)
        finally:
            if gc_was_enabled:
                gc.enable()
    return latencies


def wrk_script(directory: Path) -> Path:
    script = directory / "post.lua"
    script.write_text(f"""
wrk.method = "POST"
wrk.body = {_lua_string(BODY)}
wrk.headers["Content-Type"] = "application/json"

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


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


# --- the servers --------------------------------------------------------------------------------


def install_litellm(venv: Path) -> Path | None:
    """The `litellm` command of the bench-only venv, installing it there if missing; None if that fails."""
    command = venv / "bin" / "litellm"
    if command.exists():
        return command
    print(f"installing litellm[proxy] into {venv} (once; takes a few minutes)", flush=True)
    try:
        if not (venv / "bin" / "python").exists():
            base = getattr(sys, "_base_executable", None) or sys.executable
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True, timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "litellm[proxy]"],
                       check=True, capture_output=True, text=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        print(f"LiteLLM could not be installed, so it is not measured: {str(detail).strip()[-800:]}", flush=True)
        return None
    return command if command.exists() else None


def litellm_version(venv: Path) -> str:
    try:
        out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "show", "litellm"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Version:")),
                "unknown")


def litellm_server(command: Path, port: int, upstream: str, directory: Path) -> Server:
    config = directory / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream}/v1
      api_key: none
litellm_settings:
  telemetry: false
  set_verbose: false
""")
    argv = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    # No master key: auth off, as for Kaset (recent LiteLLM refuses to start that way unless told it
    # may, on this 127.0.0.1-only port). The local cost map: no download at start.
    env = {"LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true"}
    return Server("litellm", argv, port, "/health/liveliness", env=env)


def kaset_gateway(name: str, port: int, upstream: str, directory: Path, connections: int,
                  kaset_src: Path | None) -> Server:
    directory.mkdir()
    catalog = directory / "catalog"
    catalog.mkdir()
    (catalog / "bench.yaml").write_text(f"""models:
  - id: {MODEL}
    tasks: [chat]
    runtime: openai-compatible
    license: proprietary
    source: {{kind: builtin}}
    max_concurrent: {connections}
    params: {{base_url: "{upstream}/v1", model: {MODEL}}}
""")
    env = {"KASET_AUTH_ENABLED": "false", "KASET_CATALOG_DIRS": json.dumps([str(catalog)])}
    if kaset_src is not None:
        env["PYTHONPATH"] = str(kaset_src)
    return kaset_server(name, port, directory / "data", models=MODEL, models_dir=directory / "models",
                        extra_env=env)


def kaset_path(kaset_src: Path) -> str:
    """Which way the gateway calls a provider runtime, read from the source it runs."""
    registry = kaset_src / "kaset" / "registry"
    sources = [path.read_text() for path in sorted(registry.glob("*.py"))]
    if any("runtime.achat(" in text or "async_native" in text for text in sources):
        return "async (the model handle awaits the runtime's coroutine on the gateway's loop)"
    return "blocking (model executor thread, then the runtime's loop thread)"


def git_state(directory: Path) -> str:
    """The commit a source tree is at, and whether it has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit or Path(git("rev-parse", "--show-toplevel") or "/").resolve() not in directory.parents:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--", ".")
    return commit + (" + uncommitted changes" if dirty else "")


# --- the profile ------------------------------------------------------------------------------


# Where a sample of the gateway's main thread goes: the first rule matching its frames, searched
# from the innermost frame out (json.dumps called by aiohttp counts as aiohttp's).
STAGES = (("aiohttp/", "aiohttp client: the call to the upstream"),
          ("kaset/runtimes/", "provider runtime (request body, reply)"),
          ("fastapi/dependencies/", "FastAPI dependency solving"),
          ("pydantic", "pydantic: request validation, reply serialisation"),
          ("kaset/api/routers/", "route handler and serving helpers"),
          ("kaset/api/serving/", "route handler and serving helpers"),
          ("kaset/registry/", "router, handle, model manager"),
          ("kaset/metrics", "metrics"), ("prometheus_client/", "metrics"),
          ("kaset/store/", "request log and store"), ("kaset/auth/", "auth"),
          ("kaset/api/", "gateway middleware, telemetry, responses"), ("kaset/", "other Kaset code"),
          ("uvicorn/", "uvicorn: HTTP parsing and sending"), ("httptools", "uvicorn: HTTP parsing and sending"),
          ("starlette/", "Starlette/FastAPI routing and middleware"),
          ("fastapi/", "Starlette/FastAPI routing and middleware"),
          ("asyncio/", "asyncio and uvloop (callbacks, socket I/O)"),
          ("uvloop", "asyncio and uvloop (callbacks, socket I/O)"))


def py_spy_command(bench_venv: Path) -> Path | None:
    found = bench_venv / "bin" / "py-spy"
    if found.exists():
        return found
    on_path = shutil.which("py-spy")
    return Path(on_path) if on_path else None


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (its thread id is the pid): the gateway's event loop."""
    for thread in psutil.Process(pid).threads():
        if thread.id == pid:
            return float(thread.user_time + thread.system_time)
    return 0.0


def profile_gateway(py_spy: Path, wrk: str, script: Path, server: Server, connections: int, seconds: float,
                    out: Path, top: int) -> list[str]:
    """py-spy on a running gateway while wrk drives it; the report's lines."""
    rate = 250
    # Raw stacks, function-level; --nonblocking: the gateway is not paused for each sample.
    spy = subprocess.Popen([str(py_spy), "record", "--nonblocking", "-p", str(server.pid), "-r", str(rate),
                            "-d", str(round(seconds) + 2), "-f", "raw", "--threads", "--nolineno", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attached
    before = main_thread_cpu(server.pid)
    stats = wrk_run(wrk, script, server.port, connections, seconds)
    main_us = (main_thread_cpu(server.pid) - before) / max(stats["requests"], 1) * 1e6
    _, err = spy.communicate(timeout=60)
    if not out.exists():
        return [f"py-spy wrote nothing: {err.decode(errors='replace')[-400:]}"]
    header = (f"{server.name}: py-spy at {rate} Hz, {stats['requests']:.0f} requests under wrk -c{connections} "
              f"({stats['rps']:.0f} req/s while sampled)")
    return [header, *report_profile(out, main_us, top)]


def report_profile(path: Path, main_us: float, top: int) -> list[str]:
    """The main thread's samples by stage and by innermost function, as shares of its CPU per
    request (`main_us`). Shares, because py-spy also counts a thread that is runnable but waiting
    for a core, which on two busy cores is often."""
    stages: dict[str, int] = {}
    own: dict[str, int] = {}
    main = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        thread, _, rest = stack.partition(";")
        if not rest or not count_text.isdigit() or not thread.endswith("MainThread"):
            continue  # other threads (aiosqlite's, the executor's): py-spy counts their queue waits
        count = int(count_text)
        main += count
        frames = [(name, where.rstrip(")")) for name, _, where in (f.partition(" (") for f in rest.split(";"))]
        stage = next((label for _, f in reversed(frames) for marker, label in STAGES if marker in f), "other")
        stages[stage] = stages.get(stage, 0) + count
        leaf = f"{frames[-1][0]} ({frames[-1][1]})"
        own[leaf] = own.get(leaf, 0) + count

    def us(samples: int) -> str:
        share = samples / max(main, 1)
        return f"{share * main_us:7.1f} µs  {share:5.1%}"

    lines = [f"main thread (the event loop): {main_us:.0f} µs of CPU a request (psutil), {main} samples", "by stage:"]
    lines += [f"  {us(n)}  {label}" for label, n in sorted(stages.items(), key=lambda kv: -kv[1])]
    lines.append("innermost Python function:")
    lines += [f"  {us(n)}  {name}" for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    return lines


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the order (default 3)")
    parser.add_argument("--requests", type=int, default=1000, help="latency requests per round (default 1000)")
    parser.add_argument("--warmup", type=int, default=200, help="latency warmup requests per round (default 200)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--duration", type=float, default=10.0, help="wrk seconds per round (default 10)")
    parser.add_argument("--wrk-warmup", type=float, default=2.0, help="wrk warmup seconds per round (default 2)")
    parser.add_argument("--skip-litellm", action="store_true", help="measure only direct and Kaset")
    parser.add_argument("--bench-venv", type=Path, default=BENCH_VENV,
                        help=f"the venv LiteLLM is installed into (default {BENCH_VENV.relative_to(REPO)})")
    parser.add_argument("--kaset-src", type=Path, action="append",
                        help="run Kaset from this src/ directory (an export of another commit, say) instead of "
                             "the installed one; give it twice or more to measure several trees in the same run")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--profile-seconds", type=float, default=0.0,
                        help="after the rounds, py-spy each Kaset gateway for this long under wrk (default 0: no)")
    parser.add_argument("--profile-dir", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--profile-top", type=int, default=25, help="innermost functions listed (default 25)")
    args = parser.parse_args()

    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found; install it with: apt-get install -y wrk", file=sys.stderr)
        return 2
    install_signal_handlers()
    py_spy = py_spy_command(args.bench_venv) if args.profile_seconds > 0 else None
    if args.profile_seconds > 0 and py_spy is None:
        print(f"py-spy not found in {args.bench_venv}/bin or on PATH: pip install py-spy", file=sys.stderr)
        return 2
    litellm = None if args.skip_litellm else install_litellm(args.bench_venv)
    info = machine()
    # name -> the src/ it runs (None: the installed one, this checkout's src/).
    kasets: dict[str, Path | None] = {"kaset": None} if not args.kaset_src else {
        ("kaset" if i == 0 else f"kaset-{i + 1}"): src.resolve() for i, src in enumerate(args.kaset_src)}
    for name, src in kasets.items():
        tree = src or (REPO / "src").resolve()
        info[name] = f"{git_state(tree)} ({tree}); provider calls: {kaset_path(tree)}"
    if litellm is not None:
        info["litellm"] = litellm_version(args.bench_venv)
    print_machine(info)
    print("upstream, gateways and client share this machine; nothing is pinned")

    names = ["direct", *kasets] + (["litellm"] if litellm is not None else [])
    results = {name: Results() for name in names}
    profiles: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="kaset-bench-peers-") as tmp:
        tmpdir = Path(tmp)
        script = wrk_script(tmpdir)
        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        upstream = Server("upstream", [PYTHON, str(BENCH_DIR / "bare_app.py"), "--port", str(up_port)], up_port,
                          "/health/live")
        servers = {"direct": upstream}
        for name, src in kasets.items():
            servers[name] = kaset_gateway(name, free_port(), upstream_url, tmpdir / name, args.connections, src)
        if litellm is not None:
            servers["litellm"] = litellm_server(litellm, free_port(), upstream_url, tmpdir)
        try:
            for server in servers.values():
                server.start()
                print(f"started {server.name} (pid {server.pid}) on 127.0.0.1:{server.port}", flush=True)
            for round_no in range(1, args.rounds + 1):
                order = names[round_no - 1:] + names[:round_no - 1]
                for name in order:
                    server, res = servers[name], results[name]
                    load = OtherLoad()
                    lat = latency_run(server.port, args.requests, args.warmup)
                    res.p50_ms.append(percentile(lat, 50) * 1000)
                    res.p99_ms.append(percentile(lat, 99) * 1000)
                    wrk_run(wrk, script, server.port, args.connections, args.wrk_warmup)
                    cpu_before = tree_cpu_seconds(server.pid)
                    stats = wrk_run(wrk, script, server.port, args.connections, args.duration)
                    res.cpu_us_per_request.append((tree_cpu_seconds(server.pid) - cpu_before) / stats["requests"] * 1e6)
                    res.other_load.append(load.cores())
                    res.rps.append(stats["rps"])
                    res.wrk_p50_ms.append(stats["p50_us"] / 1000)
                    res.wrk_p99_ms.append(stats["p99_us"] / 1000)
                    print(f"round {round_no} {name:8}: 1 conn p50 {res.p50_ms[-1]:.3f} ms p99 {res.p99_ms[-1]:.3f} ms;"
                          f" {args.connections} conn {res.rps[-1]:.0f} req/s, p50 {res.wrk_p50_ms[-1]:.2f} ms"
                          f" p99 {res.wrk_p99_ms[-1]:.2f} ms; CPU {res.cpu_us_per_request[-1]:.0f} µs/req;"
                          f" other load {res.other_load[-1]:.2f} cores", flush=True)
            if py_spy is not None:
                keep = args.profile_dir or tmpdir
                keep.mkdir(parents=True, exist_ok=True)
                for name in kasets:
                    profiles[name] = profile_gateway(py_spy, wrk, script, servers[name], args.connections,
                                                     args.profile_seconds, keep / f"{name}.pyspy.txt",
                                                     args.profile_top)
        finally:
            for server in servers.values():
                server.stop()

    direct = results["direct"]
    d_p50, d_rps = median(direct.p50_ms), median(direct.rps)
    labels = {"direct": "direct (bare FastAPI upstream)",
              "litellm": f"LiteLLM proxy {info.get('litellm', '')}".strip()}
    for name, src in kasets.items():
        path = kaset_path(src or REPO / "src").split(" ")[0]
        labels[name] = f"{name}, openai-compatible, {path} path"
    rows = []
    for name in names:
        res = results[name]
        added = median(res.p50_ms) - d_p50
        share = median(res.rps) / d_rps
        rows.append([labels[name], f"{median(res.p50_ms):.3f} ms", f"{median(res.p99_ms):.3f} ms",
                     f"{median(res.rps):.0f}", f"{median(res.wrk_p50_ms):.2f} / {median(res.wrk_p99_ms):.2f} ms",
                     "" if name == "direct" else f"+{added:.3f} ms",
                     "" if name == "direct" else f"{share:.0%}",
                     f"{median(res.cpu_us_per_request):.0f} µs"])
    print()
    print(f"medians over {args.rounds} rounds; 1 connection: {args.requests} requests/round after {args.warmup} "
          f"warmup; wrk: {args.connections} connections, {args.duration:.0f} s/round after {args.wrk_warmup:.0f} s")
    print(table(["", "p50, 1 conn", "p99, 1 conn", f"req/s, {args.connections} conn",
                 f"wrk p50 / p99, {args.connections} conn", "added p50", "% of direct req/s",
                 "CPU/request (server process)"], rows))
    for name in kasets:
        k = results[name]
        added_kaset, share_kaset = median(k.p50_ms) - d_p50, median(k.rps) / d_rps
        met_latency, met_rps = added_kaset <= LATENCY_TARGET_MS, share_kaset >= THROUGHPUT_TARGET
        print(f"{name} targets: added p50 ≤ +{LATENCY_TARGET_MS} ms: {'met' if met_latency else 'NOT met'}; "
              f"≥ {THROUGHPUT_TARGET:.0%} of direct req/s: {'met' if met_rps else 'NOT met'}")
    if litellm is None:
        print("LiteLLM: not measured" + (" (--skip-litellm)" if args.skip_litellm else " (could not be installed)"))
    loads = [x for res in results.values() for x in res.other_load]
    print(f"other processes' CPU during the measurements: median {median(loads):.2f}, max {max(loads):.2f} cores "
          f"of {info['nproc']}")
    for lines in profiles.values():
        print()
        print("\n".join(lines))
    write_json(args.json, {"machine": info, "args": vars(args),
                           "rounds": {name: vars(res) for name, res in results.items()}, "profiles": profiles})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
