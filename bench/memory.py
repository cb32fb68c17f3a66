"""Resident memory of the `kaset serve` process: with no model, with `echo`, with the default pack.

Each configuration starts a fresh server (auth on, a fresh data dir, models from
--models-dir), waits until its start-up models are loaded (or have failed), then samples
the process's memory every 0.5 s until RSS has moved less than 1 MiB over 3 s (at most
--settle-timeout seconds). It reports RSS, USS (memory only this process holds) and
PSS, the median over rounds. Child processes (espeak-ng, apertium run per request) are
reported separately; an idle server has none.

    .venv/bin/python bench/memory.py [--rounds 3] [--models-dir /tmp/kdata/models]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from _common import (
    DEFAULT_MODELS_DIR,
    begin_benchmark,
    free_port,
    kaset_server,
    median,
    run_main,
    served_model_states,
    table,
    write_json,
)

MIB = 1024 * 1024
# (label, --models value): None means no flag, i.e. the installed default pack.
CONFIGS: list[tuple[str, str | None]] = [
    ("no model (--models '')", ""),
    ("echo (--models echo)", "echo"),
    ("default pack (no --models)", None),
]


@dataclass
class Sample:
    rss: list[float] = field(default_factory=list)
    uss: list[float] = field(default_factory=list)
    pss: list[float] = field(default_factory=list)
    children_rss: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)
    settle_s: list[float] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)


def settle(pid: int, timeout_s: float, window_s: float = 3.0, tolerance: float = 1 * MIB) -> float:
    """Wait until RSS stays within `tolerance` over `window_s`; returns the seconds waited."""
    proc = psutil.Process(pid)
    started = time.monotonic()
    history: list[tuple[float, int]] = []
    while time.monotonic() - started < timeout_s:
        now = time.monotonic()
        history.append((now, proc.memory_info().rss))
        recent = [rss for t, rss in history if t >= now - window_s]
        if now - started >= window_s and max(recent) - min(recent) < tolerance:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def measure(label: str, models: str | None, models_dir: Path, settle_timeout: float, result: Sample) -> None:
    with tempfile.TemporaryDirectory(prefix="kaset-bench-mem-") as tmp:
        port = free_port()
        server = kaset_server("memory", port, Path(tmp) / "data", models=models, models_dir=models_dir,
                              allow_failed=True)
        started = time.monotonic()
        with server:
            result.startup_s.append(time.monotonic() - started)
            result.states = served_model_states(port)
            result.settle_s.append(settle(server.pid, settle_timeout))
            proc = psutil.Process(server.pid)
            full = proc.memory_full_info()
            result.rss.append(full.rss / MIB)
            result.uss.append(full.uss / MIB)
            result.pss.append(full.pss / MIB)
            result.threads.append(proc.num_threads())
            result.children_rss.append(sum(c.memory_info().rss for c in proc.children(recursive=True)) / MIB)
    print(f"{label}: RSS {result.rss[-1]:.0f} MiB, USS {result.uss[-1]:.0f} MiB, PSS {result.pss[-1]:.0f} MiB, "
          f"{result.threads[-1]} threads, started in {result.startup_s[-1]:.1f} s, settled in "
          f"{result.settle_s[-1]:.1f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="fresh servers per configuration (default 3)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help=f"KASET_MODELS_DIR for the servers (default {DEFAULT_MODELS_DIR})")
    parser.add_argument("--settle-timeout", type=float, default=30.0, help="max seconds to wait for RSS to settle")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    info = begin_benchmark()
    results = {label: Sample() for label, _ in CONFIGS}
    for _ in range(args.rounds):
        for label, models in CONFIGS:
            measure(label, models, args.models_dir, args.settle_timeout, results[label])

    rows = []
    for label, _ in CONFIGS:
        r = results[label]
        loaded = sorted(m for m, s in r.states.items() if s == "loaded")
        failed = sorted(m for m, s in r.states.items() if s != "loaded")
        rows.append([label, f"{median(r.rss):.0f}", f"{median(r.uss):.0f}", f"{median(r.pss):.0f}",
                     f"{median(r.children_rss):.0f}", f"{median(r.startup_s):.1f}",
                     ", ".join(loaded) or "-", ", ".join(f"{m} ({r.states[m]})" for m in failed) or "-"])
    print()
    print(f"medians over {args.rounds} fresh servers per configuration; MiB")
    print(table(["configuration", "RSS", "USS", "PSS", "children RSS", "start-up s", "loaded", "not loaded"],
                rows))
    write_json(args.json, {"machine": info, "args": vars(args), "results": {k: vars(v) for k, v in results.items()}})
    return 0


if __name__ == "__main__":
    run_main(main)
