"""Helpers shared by the benchmarks: machine facts, free ports, server subprocesses, statistics.

Every server is started in its own session (so a Ctrl-C in the terminal reaches only the
benchmark) and is stopped by the benchmark itself: on normal exit, on an exception, on
Ctrl-C, on SIGTERM and, as a last resort, at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from kaset.config import Settings

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
PYTHON = sys.executable
# Where `make models` (kaset models install --default) puts them, unless KASET_MODELS_DIR says.
DEFAULT_MODELS_DIR = Settings().resolved_models_dir
BENCH_KEY = "ksk-bench-" + "0123456789abcdef" * 2
# Every request to a server started here carries it (auth on; a worker's token is the same key).
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}

_servers: list[Server] = []


# --- process hygiene ----------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so `finally` blocks stop our servers."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_sigterm)


@atexit.register
def _stop_all() -> None:
    for server in list(_servers):
        server.stop()


def begin_benchmark() -> dict[str, Any]:
    """Signals handled so our servers stop; the machine's facts, printed and returned."""
    install_signal_handlers()
    info = machine()
    print_machine(info)
    return info


def run_main(main: Callable[[], int]) -> None:
    """Exit with main()'s status; on Ctrl-C or SIGTERM (the servers are stopped by then) with 130."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server subprocess on 127.0.0.1, ready once `ready_path` answers 200."""

    def __init__(self, name: str, argv: Sequence[str], port: int, ready_path: str,
                 env: Mapping[str, str] | None = None, cwd: Path = REPO,
                 ready: Callable[[int, bytes], bool] | None = None) -> None:
        self.name = name
        self.ready = ready or (lambda status, body: status == 200)
        self.argv = list(argv)
        self.port = port
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 180.0) -> Server:
        fd, log_name = tempfile.mkstemp(prefix=f"kaset-bench-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _servers.append(self)
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            status, body = http_get(url)
            if self.ready(status, body):
                return self
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # The whole session: the server and anything it started (espeak-ng, apertium).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
        if self in _servers:
            _servers.remove(self)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_states(body: bytes) -> dict[str, str]:
    """The per-model states in a /health/ready reply."""
    try:
        states = json.loads(body).get("models", {})
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in states.items()} if isinstance(states, dict) else {}


def _settled(status: int, body: bytes) -> bool:
    """Ready, or done trying: every start-up model is loaded or has failed."""
    if status == 200:
        return True
    states = model_states(body)
    return status == 503 and bool(states) and all(v in ("loaded", "failed") for v in states.values())


def served_model_states(port: int) -> dict[str, str]:
    """The per-model states a `kaset serve` on this port reports now."""
    _, body = http_get(f"http://127.0.0.1:{port}/health/ready")
    return model_states(body)


def require_loaded(server: Server, models: Iterable[str] | None = None) -> dict[str, str]:
    """The server's model states, once it is certain that `models` (None: every model it started
    with) are loaded; else RuntimeError with the states and the server's log."""
    states = served_model_states(server.port)
    wanted = list(states) if models is None else list(models)
    missing = [m for m in wanted if states.get(m) != "loaded"]
    if missing:
        raise RuntimeError(f"the gateway did not load {', '.join(missing)}: {states}\n{server.log_tail()}")
    return states


@contextlib.contextmanager
def kaset_serving(name: str, models: str | None, models_dir: Path,
                  must_load: Iterable[str] | None = None) -> Iterator[Server]:
    """A started `kaset serve` (see kaset_server) in a fresh data folder, with `must_load` (None:
    every start-up model) loaded; stopped on leaving."""
    with tempfile.TemporaryDirectory(prefix=f"kaset-bench-{name}-") as tmp:
        server = kaset_server(name, free_port(), Path(tmp) / "data", models=models, models_dir=models_dir,
                              allow_failed=True)
        with server:
            require_loaded(server, must_load)
            yield server


def kaset_server(name: str, port: int, data_dir: Path, models: str | None, models_dir: Path = DEFAULT_MODELS_DIR,
                 extra_env: Mapping[str, str] | None = None, allow_failed: bool = False) -> Server:
    """`python -m kaset serve` with auth on and the benchmark's admin key preset.

    models=None loads the installed default pack; "" loads nothing. The server counts as
    started once /health/ready says ready, or (allow_failed) once no model is still loading.
    """
    argv = [PYTHON, "-m", "kaset", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if models is not None:
        argv += ["--models", models]
    env = {"KASET_DATA_DIR": str(data_dir), "KASET_MODELS_DIR": str(models_dir), "KASET_AUTH_ENABLED": "true",
           "KASET_BOOTSTRAP_KEY": BENCH_KEY, **(extra_env or {})}
    return Server(name, argv, port, "/health/ready", env=env, ready=_settled if allow_failed else None)


def kaset_worker(name: str, port: int, data_dir: Path, models: str, models_dir: Path = DEFAULT_MODELS_DIR,
                 extra_env: Mapping[str, str] | None = None) -> Server:
    """`python -m kaset worker` whose token is the benchmark key, so AUTH fits it and its gateway."""
    argv = [PYTHON, "-m", "kaset", "worker", "--models", models, "--host", "127.0.0.1", "--port", str(port)]
    env = {"KASET_DATA_DIR": str(data_dir), "KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_TOKEN": BENCH_KEY,
           **(extra_env or {})}
    return Server(name, argv, port, "/health/ready", env=env)


def workers_gateway(name: str, port: int, data_dir: Path, workers: Iterable[Server],
                    models_dir: Path = DEFAULT_MODELS_DIR, extra_env: Mapping[str, str] | None = None) -> Server:
    """`kaset serve` with no models of its own, finding these workers through KASET_WORKER_URLS."""
    urls = ",".join(f"http://127.0.0.1:{w.port}" for w in workers)
    return kaset_server(name, port, data_dir, models="", models_dir=models_dir, extra_env={
        "KASET_WORKER_URLS": urls, "KASET_WORKER_TOKEN": BENCH_KEY, "KASET_MODELS": "[]", **(extra_env or {})})


# --- noise from other work on the machine -------------------------------------------------


class OtherLoad:
    """CPU used by processes other than ours while a measurement ran, in cores.

    System-wide busy time minus the CPU time of this process and all its descendants (the
    servers, wrk; finished children count through the waited-for children times). Around 0
    on a quiet machine; on a 2-core box 1.0 means other jobs took half the machine.
    """

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._start = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float]:
        import psutil

        sys_times = psutil.cpu_times()
        busy = sum(sys_times) - sys_times.idle - getattr(sys_times, "iowait", 0.0)
        t = self._me.cpu_times()
        own = t.user + t.system + t.children_user + t.children_system
        for child in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                own += ct.user + ct.system
        return time.monotonic(), busy, own

    def cores(self) -> float:
        """Other processes' CPU since construction, in cores (clamped at 0)."""
        t0, busy0, own0 = self._start
        t1, busy1, own1 = self._snapshot()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9))


# --- facts and numbers --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(ram_gib, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def print_machine(info: Mapping[str, Any]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def percentile_ms(seconds: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of durations in seconds, in milliseconds."""
    return percentile(seconds, pct) * 1000


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def other_load_summary(loads: Sequence[float], nproc: int | None = None) -> str:
    """The closing line on other processes' CPU (OtherLoad) over all measurements."""
    return (f"other processes' CPU during the measurements: median {median(loads):.2f}, max {max(loads):.2f} cores"
            + (f" of {nproc}" if nproc is not None else ""))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def write_json(path: Path | None, payload: Mapping[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}")


# --- HTTP clients: one request at a time, and wrk ----------------------------------------


def post_bytes(port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
    """A whole keep-alive HTTP/1.1 POST, ready to send again and again."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def latency_post(port: int, path: str, body: bytes, headers: Mapping[str, str] | None, expect: bytes,
                 requests: int, warmup: int, overhead_ms: list[float] | None = None) -> tuple[list[float], float]:
    """Seconds per request and the wall seconds of the measured ones: one keep-alive connection,
    one request at a time, GC off (the client's pauses are not the server's). Every reply must be
    200 with a Content-Length and contain `expect`, so a broken path cannot look fast. The
    x-kaset-overhead-ms values of the measured replies go into `overhead_ms` when given."""
    payload = post_bytes(port, path, body, headers)
    latencies: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        gc_was_enabled = gc.isenabled()
        gc.disable()
        measured_from = time.perf_counter()
        try:
            for i in range(warmup + requests):
                if i == warmup:
                    measured_from = time.perf_counter()
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
                if length < 0:
                    raise RuntimeError(f"no Content-Length from port {port}{path}: {status!r}")
                reply = reader.read(length)
                elapsed = time.perf_counter() - started
                if not status.startswith(b"HTTP/1.1 200") or expect not in reply:
                    raise RuntimeError(f"unexpected reply from port {port}{path}: {status!r} {reply[:300]!r}")
                if i >= warmup:
                    latencies.append(elapsed)
                    if overhead_ms is not None and overhead is not None:
                        overhead_ms.append(overhead)
        finally:
            if gc_was_enabled:
                gc.enable()
    return latencies, time.perf_counter() - measured_from


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def wrk_post_script(path: Path, body: bytes, headers: Mapping[str, str] | None = None) -> Path:
    """A wrk Lua script: POST `body` with `headers`; its summary printed as one WRKJSON line."""
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in {"Content-Type": "application/json",
                                                       **(headers or {})}.items()]
    path.write_text(f"""
wrk.method = "POST"
wrk.body = {lua_string(body)}
{chr(10).join(lines)}

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""")
    return path


def wrk_post(wrk: str, script: Path, port: int, path: str, connections: int, seconds: float) -> dict[str, float]:
    """`wrk -t1` for `seconds`; the WRKJSON summary plus req/s. Any error (a non-2xx, a timeout) fails."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary from wrk:\n{out}")
    stats: dict[str, float] = json.loads(match.group(1))
    errors = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    if errors:
        raise RuntimeError(f"wrk saw {errors:.0f} errors against port {port}{path}: {stats}")
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes, all their threads included."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def bench_tool(command: str, package: str) -> Path | None:
    """A command-line tool the benchmarks need but Kaset does not: from PATH, else from the
    benchmark-only venv `var/bench-venv/` (never `.venv`), installed there with pip if missing.
    None, with the reason printed, when that fails."""
    import shutil

    found = shutil.which(command)
    if found:
        return Path(found)
    venv = REPO / "var" / "bench-venv"
    path = venv / "bin" / command
    if path.exists():
        return path
    print(f"installing {package} into {venv} (once)", flush=True)
    try:
        if not (venv / "bin" / "python").exists():
            base = getattr(sys, "_base_executable", None) or sys.executable
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True, timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", package],
                       check=True, capture_output=True, text=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        print(f"{package} could not be installed: {str(detail).strip()[-800:]}", flush=True)
        return None
    return path if path.exists() else None
