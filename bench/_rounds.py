"""One measured round of a POST against an HTTP server: latency at 1 connection, then wrk.

Shared by the benchmarks that compare servers side by side on the same request
(gateway_overhead.py, worker_hop.py, remote_handle.py). A round is: the blocking 1-connection
client (`latency_post`), an untimed wrk warmup, then timed wrk with the CPU of the serving
processes counted; every figure lands in a `Series`, one value per round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _common import AUTH, OtherLoad, cpu_seconds, latency_post, median, percentile_ms, wrk_post, wrk_post_script

ECHO_MESSAGE = "The farmer plants rice in the wet season."


@dataclass(frozen=True)
class Post:
    """A request sent again and again, and what its reply must contain."""

    path: str
    body: bytes
    expect: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: dict(AUTH))

    def wrk_script(self, path: Path) -> Path:
        return wrk_post_script(path, self.body, self.headers)


def echo_chat(model: str = "echo") -> Post:
    """A one-message chat completion; an echo model (or bare_app.py) says the message back."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": ECHO_MESSAGE}]}).encode()
    return Post("/v1/chat/completions", body, json.dumps(ECHO_MESSAGE).encode())


@dataclass(frozen=True)
class Plan:
    """How much one round sends: the 1-connection client's requests, then wrk's seconds."""

    requests: int
    warmup: int
    connections: int
    duration: float
    wrk_warmup: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        """From the --requests, --warmup, --connections, --duration and --wrk-warmup options."""
        return cls(args.requests, args.warmup, args.connections, args.duration, args.wrk_warmup)


@dataclass
class Series:
    """One side's figures, a value per round (the JSON the benchmarks write holds these lists)."""

    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rps_1: list[float] = field(default_factory=list)  # requests/s of the 1-connection client
    rps: list[float] = field(default_factory=list)  # wrk's requests/s at the plan's connections
    wrk_p50_ms: list[float] = field(default_factory=list)
    wrk_p99_ms: list[float] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)  # all the processes measured, during wrk
    server_cpu_us: list[float] = field(default_factory=list)  # of it, the last one: the server called
    # Other processes' CPU (cores) during the latency run, during timed wrk, and over the whole round.
    other_load_latency: list[float] = field(default_factory=list)
    other_load_wrk: list[float] = field(default_factory=list)
    other_load: list[float] = field(default_factory=list)
    overhead_header_ms: list[float] = field(default_factory=list)  # median x-kaset-overhead-ms, if sent


def require_wrk() -> str | None:
    """wrk's path; None, with how to install it printed, when it is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found; install it with: apt-get install -y wrk", file=sys.stderr)
    return wrk


def measure_round(wrk: str, script: Path, port: int, post: Post, pids: Sequence[int], plan: Plan,
                  into: Series) -> None:
    """One round against `port`, its figures appended to `into`; CPU is that of `pids` during timed wrk."""
    round_load = OtherLoad()
    overheads: list[float] = []
    latencies, wall = latency_post(port, post.path, post.body, post.headers, post.expect, plan.requests, plan.warmup,
                                   overhead_ms=overheads)
    into.other_load_latency.append(round_load.cores())
    into.p50_ms.append(percentile_ms(latencies, 50))
    into.p99_ms.append(percentile_ms(latencies, 99))
    into.rps_1.append(len(latencies) / wall)
    if overheads:
        into.overhead_header_ms.append(median(overheads))
    wrk_post(wrk, script, port, post.path, plan.connections, plan.wrk_warmup)
    before = [cpu_seconds([pid]) for pid in pids]
    wrk_load = OtherLoad()
    stats = wrk_post(wrk, script, port, post.path, plan.connections, plan.duration)
    into.other_load_wrk.append(wrk_load.cores())
    used = [cpu_seconds([pid]) - b for pid, b in zip(pids, before, strict=True)]
    into.other_load.append(round_load.cores())
    requests = max(stats["requests"], 1)
    into.cpu_us_per_request.append(sum(used) / requests * 1e6)
    into.server_cpu_us.append(used[-1] / requests * 1e6)
    into.rps.append(stats["rps"])
    into.wrk_p50_ms.append(stats["p50_us"] / 1000)
    into.wrk_p99_ms.append(stats["p99_us"] / 1000)
