"""The remote model handle (issue 12): a gateway with no models of its own calling a `kaset worker`,
against calling that worker's internal task API directly, in the same run.

Per source tree (`--kaset-src`, several allowed; default the working tree), two processes on free
127.0.0.1 ports, both run from that tree:

* a worker, `kaset worker --models echo,e5-small` (e5-small only when it is installed in
  `--models-dir`), its token the benchmark key so one Authorization header fits every side;
* a gateway, `kaset serve` with no models and an empty models folder, finding the worker through
  KASET_WORKER_URLS (auth, request log and metrics on, as shipped).

Sides, for three tasks: chat on `echo` (no weights: the hop's own cost), embeddings of one short
text on `echo` (same, with a vector to carry) and on `e5-small` (a real engine, ~9 ms a text):

* **direct** (the baseline): the worker's internal task API, the very call the gateway's
  `RemoteHandle` makes: POST /internal/v1/models/{echo/chat, echo/embed_each, e5-small/embed_each};
* **gateway**: POST /v1/chat/completions and /v1/embeddings on the gateway;
* **worker /v1** (a reference, `--no-reference` leaves it out): the worker's own OpenAI route,
  what the gateway forwarded to before the handle.

Latency, 1 connection: a blocking keep-alive client (raw socket, GC off), `--requests` after
`--warmup` (a tenth of each for e5-small); p50/p99 and req/s.
Throughput, 16 connections: `wrk -t1 -c16`, `--duration` s after `--wrk-warmup` s; req/s and wrk's
p50/p99. CPU per request: the worker's, plus the gateway's on gateway sides. Rounds rotate the
order of all sides of all trees; figures are medians over rounds.

Target (issue 12): the remote handle adds at most 0.6 ms p50. About 5 minutes with one tree on a
quiet machine (`--tasks chat,embed-echo`: about 2.5), twice that with two trees.

`--profile-seconds S` then starts one more gateway per tree, drives it with wrk at 16 connections
for S seconds per task while py-spy samples it, and prints where its main thread (the event loop)
spent its CPU, by stage and by function. (Not cProfile: SQLAlchemy's async engine switches
greenlets, which cProfile cannot follow, so it charged the loop's request work to the background
database polls.)

    .venv/bin/python bench/remote_handle.py [--rounds 3] [--requests 2000] [--duration 5]
    .venv/bin/python bench/remote_handle.py --kaset-src /tmp/before/src --kaset-src src --profile-seconds 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    DEFAULT_MODELS_DIR,
    REPO,
    Server,
    begin_benchmark,
    bench_tool,
    free_port,
    kaset_worker,
    latency_post,
    median,
    other_load_summary,
    run_main,
    table,
    workers_gateway,
    write_json,
    wrk_post,
)
from _profile import SAMPLE_HZ, report_profile, sample_under_wrk
from _rounds import ECHO_MESSAGE, Plan, Post, Series, echo_chat, measure_round, require_wrk
from kaset.runtimes.base import GenerationParams
from peer_gateways import git_state

ADDED_P50_TARGET_MS = 0.6
TEXT = "query: how do I treat brown spots on rice leaves?"
# What the gateway's chat route hands the echo model for this request (its defaults), on the wire.
PARAMS = dataclasses.asdict(GenerationParams(temperature=1.0))


@dataclass(frozen=True)
class Call:
    """One side of one task: which server ("worker" or "gateway"), and the request sent to it."""

    server: str
    post: Post


def calls(task: str) -> dict[str, Call]:
    if task == "chat":
        openai = echo_chat()
        internal = json.dumps({"messages": [{"role": "user", "content": ECHO_MESSAGE}], "params": PARAMS}).encode()
        return {"direct": Call("worker", Post("/internal/v1/models/echo/chat", internal, openai.expect)),
                "gateway": Call("gateway", openai),
                "worker /v1": Call("worker", openai)}
    model = "echo" if task == "embed-echo" else "e5-small"
    embeddings = Post("/v1/embeddings", json.dumps({"model": model, "input": TEXT}).encode(), b'"embedding"')
    return {"direct": Call("worker", Post(f"/internal/v1/models/{model}/embed_each",
                                          json.dumps({"texts": [TEXT]}).encode(), b'"vectors"')),
            "gateway": Call("gateway", embeddings),
            "worker /v1": Call("worker", embeddings)}


@dataclass
class Tree:
    label: str
    src: Path | None  # None: the installed (working) tree
    worker: Server
    gateway: Server

    def port(self, server: str) -> int:
        return self.worker.port if server == "worker" else self.gateway.port

    def pids(self, server: str) -> list[int]:
        return [self.worker.pid] + ([self.gateway.pid] if server == "gateway" else [])


def path_kind(src: Path) -> str:
    """How the gateway reaches a worker's chat model in this source tree."""
    deps = (src / "kaset" / "api" / "deps.py").read_text()
    if "Forwarded" in deps or (src / "kaset" / "workers" / "proxy.py").exists():
        return "OpenAI routes forwarded at the HTTP layer (workers/proxy.py)"
    return "every route through the model handle (RemoteHandle)"


def src_env(src: Path | None) -> dict[str, str]:
    return {"PYTHONPATH": str(src)} if src is not None else {}


def worker_server(port: int, data_dir: Path, models: str, models_dir: Path, src: Path | None) -> Server:
    return kaset_worker(f"worker-{port}", port, data_dir, models, models_dir, extra_env=src_env(src))


def gateway_server(port: int, directory: Path, worker: Server, src: Path | None) -> Server:
    (directory / "no-models").mkdir(parents=True, exist_ok=True)
    return workers_gateway(f"gateway-{port}", port, directory / "data", [worker], models_dir=directory / "no-models",
                           extra_env=src_env(src))


def wait_serving(tree: Tree, gateway: Server, tasks: list[str], timeout_s: float = 60) -> None:
    """Until the gateway has seen the worker's models and answers through them."""
    deadline = time.monotonic() + timeout_s
    for task in tasks:
        post = calls(task)["gateway"].post
        while True:
            try:
                latency_post(gateway.port, post.path, post.body, post.headers, post.expect, 1, 0)
                break
            except (RuntimeError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{tree.label}: the gateway never served {task}: {exc}\n"
                                       f"{gateway.log_tail()}") from exc
                time.sleep(0.3)


# --- the profile ------------------------------------------------------------------------------


# Where a sample of the gateway's main thread goes: the first rule matching its frames, searched
# from the innermost frame out (json.dumps called by wire.py counts as the handle's), except that
# a background task's samples count as that task wherever they are.
BACKGROUND = (("kaset/auth/cache.py", "background: credential revocation poll"),
              ("kaset/jobs/", "background: job runner poll"),
              ("kaset/store/request_log.py", "request log (recording, batching)"))
STAGES = (("aiohttp/", "aiohttp client: the call to the worker"),
          ("kaset/workers/", "RemoteHandle, pool and wire (JSON of the call)"),
          ("fastapi/dependencies/", "FastAPI dependency solving"),
          ("pydantic", "pydantic: request validation, response serialisation"),
          ("kaset/api/deps.py", "auth dependency (key lookup, identity)"),
          ("kaset/auth/", "auth dependency (key lookup, identity)"),
          ("kaset/api/routers/", "route handler (building the OpenAI reply)"),
          ("kaset/registry/", "router: route, breaker, handle"),
          ("kaset/metrics", "metrics"), ("prometheus_client/", "metrics"),
          ("kaset/api/", "gateway middleware, telemetry, responses"), ("kaset/", "other Kaset code"),
          ("uvicorn/", "uvicorn: HTTP parsing and sending"), ("httptools", "uvicorn: HTTP parsing and sending"),
          ("starlette/", "Starlette/FastAPI routing and middleware"),
          ("fastapi/", "Starlette/FastAPI routing and middleware"),
          ("asyncio/", "asyncio and uvloop (C: callbacks, socket I/O)"),
          ("uvloop", "asyncio and uvloop (C: callbacks, socket I/O)"))


def profile_gateway(py_spy: Path, wrk: str, tmpdir: Path, tree: Tree, tasks: list[str], seconds: float,
                    connections: int, keep: Path | None, top: int) -> dict[str, list[str]]:
    """py-spy on a fresh gateway in front of the tree's worker while wrk drives each task."""
    found: dict[str, list[str]] = {}
    gateway = gateway_server(free_port(), tmpdir / f"profile-{tree.label}".replace(" ", "-"), tree.worker,
                             tree.src)
    try:
        gateway.start()
        for task in tasks:
            slug = f"{tree.label}-{task}".replace(" ", "-")
            out = (keep or tmpdir) / f"gateway-{slug}.pyspy.txt"
            post = calls(task)["gateway"].post
            script = post.wrk_script(tmpdir / f"profile-{slug}.lua")
            wait_serving(tree, gateway, [task])
            wrk_post(wrk, script, gateway.port, post.path, connections, 1.0)
            sampled = sample_under_wrk(py_spy, wrk, script, gateway.port, gateway.pid, post.path, connections,
                                       seconds, out)
            if sampled.error:
                print(f"{tree.label} {task}: py-spy wrote nothing: {sampled.error}", file=sys.stderr)
                continue
            lines = report_profile(out, sampled.main_us, top, STAGES, BACKGROUND)
            found[task] = lines
            stats = sampled.stats
            print(f"\n{tree.label}, {task}: py-spy of the gateway at {SAMPLE_HZ} Hz, {stats['requests']:.0f} "
                  f"requests under wrk -c{connections} ({stats['rps']:.0f} req/s while sampled)")
            print("\n".join(lines))
    finally:
        gateway.stop()
    return found


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, rotating the order (default 3)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="latency requests per round (default 2000; e5-small a tenth)")
    parser.add_argument("--warmup", type=int, default=300,
                        help="latency warmup requests (default 300; e5-small a tenth)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--duration", type=float, default=5.0, help="wrk seconds per side and round (default 5)")
    parser.add_argument("--wrk-warmup", type=float, default=1.0, help="wrk warmup seconds (default 1)")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where e5-small is installed (default KASET_MODELS_DIR, else var/test/models when "
                             f"it has e5-small, else {DEFAULT_MODELS_DIR})")
    parser.add_argument("--tasks", default="chat,embed-echo,embed-e5",
                        help="of chat (echo), embed-echo, embed-e5 (e5-small); default all three")
    parser.add_argument("--no-reference", action="store_true", help="leave out the worker's own /v1 routes")
    parser.add_argument("--kaset-src", type=Path, action="append",
                        help="run worker and gateway from this src/ folder (several: side by side in one run)")
    parser.add_argument("--profile-seconds", type=float, default=0.0,
                        help="after measuring, sample a gateway per tree with py-spy for this long per task "
                             "(default off; py-spy from PATH, else installed into var/bench-venv/)")
    parser.add_argument("--profile-dir", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    wrk = require_wrk()
    if wrk is None:
        return 2
    models_dir = args.models_dir
    if models_dir is None:
        test_models = REPO / "var" / "test" / "models"
        models_dir = (Path(os.environ["KASET_MODELS_DIR"]) if "KASET_MODELS_DIR" in os.environ
                      else test_models if (test_models / "e5-small").is_dir() else DEFAULT_MODELS_DIR)
    tasks = [t for t in args.tasks.split(",") if t]
    if "embed-e5" in tasks and not (models_dir / "e5-small").is_dir():
        print(f"e5-small is not installed in {models_dir}: its embeddings are left out", file=sys.stderr)
        tasks.remove("embed-e5")
    sides = ["direct", "gateway"] + ([] if args.no_reference else ["worker /v1"])
    srcs: list[Path | None] = [s.resolve() for s in args.kaset_src] if args.kaset_src else [None]

    info = begin_benchmark()
    print("servers and client share this machine; nothing is pinned")
    plan = Plan.of(args)
    trees: list[Tree] = []
    results: dict[tuple[str, str, str], Series] = {}
    profiles: dict[str, dict[str, list[str]]] = {}
    described: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="kaset-bench-") as tmp:
        tmpdir = Path(tmp)
        scripts = {(task, side): call.post.wrk_script(tmpdir / f"{task}-{i}.lua")
                   for task in tasks for i, (side, call) in enumerate(calls(task).items())}
        for i, src in enumerate(srcs):
            label = "tree" if len(srcs) == 1 else f"tree {i + 1}"
            worker = worker_server(free_port(), tmpdir / f"worker-{i}",
                                   "echo" + (",e5-small" if "embed-e5" in tasks else ""), models_dir, src)
            gateway = gateway_server(free_port(), tmpdir / f"gateway-{i}", worker, src)
            trees.append(Tree(label, src, worker, gateway))
            source = src or (REPO / "src")
            described[label] = {"src": str(source), "git": git_state(source),
                                "path": path_kind(source)}
            print(f"{label}: {source} ({described[label]['git']}): {described[label]['path']}")
        try:
            for tree in trees:
                tree.worker.start()
                tree.gateway.start()
                wait_serving(tree, tree.gateway, tasks)
            for round_no in range(1, args.rounds + 1):
                for task in tasks:
                    order = [(tree, side) for tree in trees for side in sides]
                    shift = (round_no - 1) % len(order)
                    for tree, side in order[shift:] + order[:shift]:
                        res = results.setdefault((tree.label, task, side), Series())
                        scale = 10 if task == "embed-e5" else 1
                        scaled = dataclasses.replace(plan, requests=plan.requests // scale, warmup=plan.warmup // scale)
                        call = calls(task)[side]
                        measure_round(wrk, scripts[(task, side)], tree.port(call.server), call.post,
                                      tree.pids(call.server), scaled, res)
                        print(f"round {round_no} {tree.label} {task:5} {side:10}: p50 {res.p50_ms[-1]:.3f} ms  "
                              f"p99 {res.p99_ms[-1]:.3f} ms  {res.rps_1[-1]:.0f} req/s at 1, "
                              f"{res.rps[-1]:.0f} at {args.connections} (wrk p50 {res.wrk_p50_ms[-1]:.2f} ms)  "
                              f"CPU {res.cpu_us_per_request[-1]:.0f} µs/req  other load {res.other_load[-1]:.2f}",
                              flush=True)
            if args.profile_seconds > 0:
                if args.profile_dir is not None:
                    args.profile_dir.mkdir(parents=True, exist_ok=True)
                py_spy = bench_tool("py-spy", "py-spy")
                for tree in trees:
                    if py_spy is None:
                        break
                    profiles[tree.label] = profile_gateway(py_spy, wrk, tmpdir, tree, tasks, args.profile_seconds,
                                                           args.connections, args.profile_dir, args.profile_top)
        finally:
            for tree in trees:
                tree.gateway.stop()
                tree.worker.stop()

    print()
    print(f"medians over {args.rounds} rounds; 1 connection: {args.requests} requests a round ({args.requests // 10} "
          f"to e5-small); {args.connections} connections: wrk {args.duration:g} s a round")
    summary: dict[str, dict[str, float]] = {}
    for tree in trees:
        print(f"\n{tree.label}: {described[tree.label]['src']} ({described[tree.label]['git']}): "
              f"{described[tree.label]['path']}")
        rows = []
        for task in tasks:
            d = results[(tree.label, task, "direct")]
            for side in sides:
                r = results[(tree.label, task, side)]
                added = median(r.p50_ms) - median(d.p50_ms)
                row = [f"{task}: {side}", f"{median(r.p50_ms):.3f} ms", f"{median(r.p99_ms):.3f} ms",
                       f"{median(r.rps_1):.0f}", f"{median(r.rps):.0f}",
                       f"{median(r.wrk_p50_ms):.2f} / {median(r.wrk_p99_ms):.2f} ms",
                       f"{median(r.cpu_us_per_request):.0f} µs", f"{median(r.server_cpu_us):.0f} µs"]
                if side == "direct":
                    row += ["", "", "", ""]
                else:
                    ratio_1, ratio_16 = median(r.rps_1) / median(d.rps_1), median(r.rps) / median(d.rps)
                    row += [f"{added:+.3f} ms", f"{ratio_1:.0%}", f"{ratio_16:.0%}",
                            ("yes" if added <= ADDED_P50_TARGET_MS else "NO") if side == "gateway" else ""]
                    summary[f"{tree.label}/{task}/{side}"] = {"added_p50_ms": added, "rps_ratio_1": ratio_1,
                                                              "rps_ratio_16": ratio_16}
                rows.append(row)
        print(table(["side", "p50, 1 conn", "p99, 1 conn", "req/s, 1 conn", f"req/s, {args.connections} conn",
                     f"wrk p50 / p99, {args.connections} conn", "CPU / request", "of it the server called",
                     "added p50",
                     "req/s vs direct, 1 conn", f"vs direct, {args.connections} conn",
                     f"≤ +{ADDED_P50_TARGET_MS} ms"], rows))
    print("\n" + other_load_summary([x for r in results.values() for x in r.other_load], info["nproc"]))
    write_json(args.json, {"machine": info, "args": vars(args), "trees": described, "summary": summary,
                           "rounds": {"/".join(k): vars(v) for k, v in results.items()}, "profiles": profiles})
    return 0


if __name__ == "__main__":
    run_main(main)
