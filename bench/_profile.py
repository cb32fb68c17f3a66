"""Where a server's main thread (its event loop) spends its CPU under load: py-spy samples it
while wrk drives it, and the samples are shared out over stages named by file-path rules.

Not cProfile: SQLAlchemy's async engine switches greenlets, which cProfile cannot follow, so it
charged the loop's request work to the background database polls.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from _common import wrk_post

SAMPLE_HZ = 250
# (a marker found in a frame's file path, the stage its samples count as)
Rule = tuple[str, str]


@dataclass(frozen=True)
class Sampled:
    """One py-spy run under wrk: wrk's summary, the main thread's CPU per request, and py-spy's
    complaint when it wrote nothing."""

    stats: dict[str, float]
    main_us: float
    error: str


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (its thread id is the pid): an asyncio server's loop."""
    for thread in psutil.Process(pid).threads():
        if thread.id == pid:
            return float(thread.user_time + thread.system_time)
    return 0.0


def sample_under_wrk(py_spy: Path, wrk: str, script: Path, port: int, pid: int, path: str, connections: int,
                     seconds: float, out: Path) -> Sampled:
    """py-spy's raw stacks of `pid` into `out` while wrk runs `script` against port/path for `seconds`."""
    # Raw stacks of running (not idle) threads, function-level: where the CPU goes.
    # --nonblocking: the server is not paused for each sample, so it runs as it would.
    spy = subprocess.Popen([str(py_spy), "record", "--nonblocking", "-p", str(pid), "-r", str(SAMPLE_HZ),
                            "-d", str(round(seconds) + 2), "-f", "raw", "--threads", "--nolineno", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attached
    before = main_thread_cpu(pid)
    stats = wrk_post(wrk, script, port, path, connections, seconds)
    main_us = (main_thread_cpu(pid) - before) / max(stats["requests"], 1) * 1e6
    _, err = spy.communicate(timeout=60)
    error = "" if out.exists() else err.decode(errors="replace")[-400:] or "(py-spy said nothing)"
    return Sampled(stats, main_us, error)


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) of each frame, outermost first, of one py-spy raw stack."""
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        frames.append((name, where.rstrip(")")))
    return frames


def report_profile(path: Path, main_us: float, top: int, stages: Sequence[Rule],
                   background: Sequence[Rule] = ()) -> list[str]:
    """The main thread's samples by stage and by innermost function, as shares of its CPU per
    request measured meanwhile (`main_us`). Shares, because py-spy also counts a thread that is
    runnable but waiting for a core, which on two busy cores is often.

    A sample's stage: the first `background` rule matching any of its frames (a background
    task's samples count as that task wherever they are), else the first `stages` rule matching
    a frame, searched from the innermost frame out; else "other"."""
    by_stage: dict[str, int] = {}
    own: dict[str, int] = {}
    main = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, _, rest = stack.partition(";")
        # Other threads (aiosqlite's, the executor's) are left out: py-spy counts their blocking
        # queue waits as running.
        if not thread.endswith("MainThread"):
            continue
        main += count
        frames = _frames(rest)
        files = [f for _, f in frames]
        stage = next((label for marker, label in background if any(marker in f for f in files)), None)
        if stage is None:
            stage = next((label for _, f in reversed(frames) for marker, label in stages if marker in f), "other")
        by_stage[stage] = by_stage.get(stage, 0) + count
        leaf = f"{frames[-1][0]} ({frames[-1][1]})" if frames else "?"
        own[leaf] = own.get(leaf, 0) + count

    def us(samples: int) -> str:
        share = samples / max(main, 1)
        return f"{share * main_us:7.1f} µs  {share:5.1%}"

    lines = [f"main thread (the event loop): {main_us:.0f} µs of CPU a request (psutil), {main} samples", "by stage:"]
    lines += [f"  {us(n)}  {label}" for label, n in sorted(by_stage.items(), key=lambda kv: -kv[1])]
    lines.append("innermost Python function:")
    lines += [f"  {us(n)}  {name}" for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    return lines
