"""Monolith or split? The same mixed workload on `kaset serve` and on a gateway with workers.

The seeds ask what splitting models into separate services costs against one process. This
runs one workload, a repeating mix of transcription (whisper-tiny.en, a ~3 s espeak-ng WAV),
chat (smollm2-135m, 16 tokens) and image classification (efficientnet-lite0 through /v2 infer,
a JPEG photo), at C concurrent clients for D seconds, against:

* monolith: `kaset serve --models whisper-tiny.en,smollm2-135m,efficientnet-lite0`;
* split: `kaset serve` with no models in front of three `kaset worker`s, one per model
  (found through KASET_WORKER_URLS), all on this machine.

Then scaling: the classifier alone at C clients behind the gateway with 1, 2 and 3 worker
replicas (each MAX_CONCURRENT_INFERENCES=1), to show where it flattens on this machine's cores.

    .venv/bin/python bench/split.py [--clients 6] [--duration 30] [--scale-duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from _common import (
    AUTH,
    OtherLoad,
    Server,
    begin_benchmark,
    free_port,
    kaset_server,
    kaset_worker,
    percentile_ms,
    table,
    workers_gateway,
    write_json,
)

MIX = ("whisper-tiny.en", "smollm2-135m", "efficientnet-lite0")
QUESTION = "How often should I water young rice plants in the dry season?"


def speech_wav() -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        subprocess.run(["espeak-ng", "-w", out.name, "My mango leaves have black spots. What should I do?"],
                       check=True)
        return Path(out.name).read_bytes()


def photo_infer_body() -> dict[str, Any]:
    from skimage import data

    image = data.coffee()[:224, :224]
    return {"inputs": [{"name": "IMAGE", "shape": [1, *image.shape], "datatype": "UINT8",
                        "data": image.reshape(-1).tolist()}]}


async def transcribe(session: aiohttp.ClientSession, base: str, wav: bytes) -> int:
    form = aiohttp.FormData()
    form.add_field("model", "whisper-tiny.en")
    form.add_field("file", wav, filename="q.wav", content_type="audio/wav")
    async with session.post(f"{base}/v1/audio/transcriptions", data=form, headers=AUTH) as r:
        await r.read()
        return r.status


async def chat(session: aiohttp.ClientSession, base: str) -> int:
    body = {"model": "smollm2-135m", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTION}]}
    async with session.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as r:
        await r.read()
        return r.status


async def classify(session: aiohttp.ClientSession, base: str, body: bytes) -> int:
    headers = {**AUTH, "Content-Type": "application/json"}
    async with session.post(f"{base}/v2/models/efficientnet-lite0/infer", data=body, headers=headers) as r:
        await r.read()
        return r.status


async def drive(base: str, kinds: Sequence[str], clients: int, seconds: float, wav: bytes,
                infer: bytes) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {k: [] for k in kinds}
    errors = 0
    stop = 0.0

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = n
        while time.monotonic() < stop:
            kind = kinds[i % len(kinds)]
            i += 1
            started = time.perf_counter()
            if kind == "whisper-tiny.en":
                status = await transcribe(session, base, wav)
            elif kind == "smollm2-135m":
                status = await chat(session, base)
            else:
                status = await classify(session, base, infer)
            if status == 200:
                latencies[kind].append(time.perf_counter() - started)
            else:
                errors += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for kind in kinds:  # one warm call of each, not counted
            await (transcribe(session, base, wav) if kind == "whisper-tiny.en" else
                   chat(session, base) if kind == "smollm2-135m" else classify(session, base, infer))
        begun = time.monotonic()
        stop = begun + seconds
        await asyncio.gather(*(client(n, session) for n in range(clients)))
        elapsed = time.monotonic() - begun
    every = [x for values in latencies.values() for x in values]
    return {"requests": len(every), "errors": errors, "rps": len(every) / elapsed,
            "p50_ms": percentile_ms(every, 50) if every else 0.0,
            "p95_ms": percentile_ms(every, 95) if every else 0.0,
            "per_kind_p95_ms": {k: percentile_ms(v, 95) if v else 0.0 for k, v in latencies.items()}}


def worker(name: str, models: str, tmpdir: Path, max_concurrent: int | None = None) -> Server:
    limit = {} if max_concurrent is None else {"MAX_CONCURRENT_INFERENCES": str(max_concurrent)}
    return kaset_worker(name, free_port(), tmpdir / name, models, extra_env=limit)


def gateway_for(workers: Sequence[Server], tmpdir: Path, name: str = "gateway") -> Server:
    return workers_gateway(name, free_port(), tmpdir / name, workers)


def run_topology(servers: Sequence[Server], base_port: int, kinds: Sequence[str], clients: int, seconds: float,
                 wav: bytes, infer: bytes) -> dict[str, Any]:
    try:
        for server in servers:
            server.start()
        load = OtherLoad()
        result = asyncio.run(drive(f"http://127.0.0.1:{base_port}", kinds, clients, seconds, wav, infer))
        result["other_load_cores"] = load.cores()
        return result
    finally:
        for server in reversed(servers):
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--scale-duration", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = begin_benchmark()
    wav = speech_wav()
    infer = json.dumps(photo_infer_body()).encode()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kaset-bench-") as tmp:
        tmpdir = Path(tmp)
        mono = kaset_server("monolith", free_port(), tmpdir / "mono", models=",".join(MIX))
        results["monolith"] = run_topology([mono], mono.port, MIX, args.clients, args.duration, wav, infer)
        print("monolith:", results["monolith"], flush=True)
        workers = [worker(f"w-{m}", m, tmpdir) for m in MIX]
        gateway = gateway_for(workers, tmpdir)
        results["split"] = run_topology([*workers, gateway], gateway.port, MIX, args.clients, args.duration, wav,
                                        infer)
        print("split:", results["split"], flush=True)
        for replicas in (1, 2, 3):
            ws = [worker(f"vision-{i}", "efficientnet-lite0", tmpdir, max_concurrent=1) for i in range(replicas)]
            gw = gateway_for(ws, tmpdir, f"gateway-{replicas}")
            key = f"classify x{replicas}"
            results[key] = run_topology([*ws, gw], gw.port, ["efficientnet-lite0"], 8, args.scale_duration, wav,
                                        infer)
            print(f"{key}:", results[key], flush=True)
    mono_r, split_r = results["monolith"], results["split"]
    print()
    print(table(["topology", "req/s", "p50", "p95", "errors", "other load"], [
        [name, f"{r['rps']:.2f}", f"{r['p50_ms']:.0f} ms", f"{r['p95_ms']:.0f} ms", r["errors"],
         f"{r['other_load_cores']:.2f}"] for name, r in results.items()]))
    print(f"split / monolith: throughput {split_r['rps'] / mono_r['rps']:.0%}, "
          f"p95 {split_r['p95_ms'] / mono_r['p95_ms']:.2f}×")
    write_json(args.json, {"machine": info, "results": results, "clients": args.clients})
    return 0


if __name__ == "__main__":
    sys.exit(main())
