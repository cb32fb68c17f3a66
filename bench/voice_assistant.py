"""The voice assistant's latency: end of speech → first audio byte, and end to end.

A `kaset serve` subprocess (default pack, auth on) answers a ~3 s spoken question (made with
Piper by the gateway's /v1/audio/speech) over the /v1/voice/stream WebSocket. Each run streams
the question as 16 kHz PCM in 100 ms chunks at real-time pace (as a microphone would, so the
server's partial transcripts run while the person speaks), then sends `stop`; the clock starts
at `stop`. Measured: time to the first `audio` event, and to `done` (every sentence spoken).

Baseline, in the same run, alternating with the gateway: the same model files called directly
in this process, one after the other with no pipelining: faster-whisper transcribes the whole
recording → the first sentence of the answer (SmolLM2 via llama-cpp-python streaming until the
first sentence ends, same prompt and settings; or, in advice mode, Kaset's advisor in-process
with e5-small) → Piper speaks that sentence. End to end for the baseline is the whole answer
written and then spoken, sentence by sentence.

Target: first audio ≤ 1.5 s at p50 on 2 cores with the default pack.

    .venv/bin/python bench/voice_assistant.py --runs 20 --models-dir var/test/models
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from _common import (
    AUTH,
    BENCH_KEY,
    DEFAULT_MODELS_DIR,
    OtherLoad,
    begin_benchmark,
    kaset_serving,
    median,
    percentile,
    percentile_ms,
    table,
    write_json,
)
from _libraries import llama, llama_sampling, piper_voice, whisper_model
from kaset.pipelines.voice import MAX_TOKENS, SYSTEM_PROMPT, SentenceCutter, speakable
from kaset.registry.catalog import Catalog
from kaset.registry.repository import ModelRepository

QUESTION = "What should I do about grey spots on my rice leaves?"
NEEDED = ("whisper-tiny.en", "piper-joe", "smollm2-135m", "e5-small")
TARGET_FIRST_AUDIO_S = 1.5
CHUNK_S = 0.1
PAUSE_S = 0.5  # lets the other side's threads go idle before the next timing


@dataclass
class Series:
    first_audio: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    transcribe: list[float] = field(default_factory=list)
    other_load: list[float] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


# --- the gateway side -------------------------------------------------------------------------


async def gateway_run(ws: aiohttp.ClientWebSocketResponse, pcm: bytes, mode: str) -> tuple[float, float, float, str]:
    """(first audio s, end to end s, server transcribe s, answer), from `stop`."""
    if ws.closed:
        raise RuntimeError(f"the server closed the stream (code {ws.close_code}): {ws.exception()}")
    await ws.send_str(json.dumps({"type": "start", "mode": mode, "language": "en", "sample_rate": 16000}))
    message = await ws.receive()
    if message.type != aiohttp.WSMsgType.TEXT or json.loads(message.data)["type"] != "ready":
        raise RuntimeError(f"no 'ready' after 'start': {message}")
    step = int(16000 * 2 * CHUNK_S)
    began = time.perf_counter()
    for n, offset in enumerate(range(0, len(pcm), step)):
        await ws.send_bytes(pcm[offset:offset + step])
        # Real-time pace: chunk n is sent when the person has said it.
        await asyncio.sleep(max(0.0, began + (n + 1) * CHUNK_S - time.perf_counter()))
    stopped = time.perf_counter()
    await ws.send_str(json.dumps({"type": "stop"}))
    first_audio: float | None = None
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"the server closed the stream: {message}")
        event = json.loads(message.data)
        if event["type"] == "audio" and first_audio is None:
            first_audio = time.perf_counter() - stopped
        elif event["type"] == "error":
            raise RuntimeError(f"error event: {event}")
        elif event["type"] == "done":
            assert first_audio is not None, "no audio before done"
            return first_audio, time.perf_counter() - stopped, event["timings"]["transcribe_ms"] / 1000, \
                event["answer"]


# --- the direct side --------------------------------------------------------------------------


class Direct:
    """The libraries loaded with the catalog's params, called one after the other."""

    def __init__(self, catalog: Catalog, repo: ModelRepository) -> None:
        whisper, piper, llm, _e5 = (catalog.resolve(m) for m in NEEDED)
        self.beam_size = int(whisper.params.get("beam_size", 1))
        self.whisper = whisper_model(whisper, repo)
        self.piper = piper_voice(piper, repo)
        self.sampling = llama_sampling(llm)
        self.llm = llama(llm, repo)
        self.advisor: Any = None

    def transcribe(self, samples: np.ndarray) -> str:
        segments, _ = self.whisper.transcribe(samples, language="en", beam_size=self.beam_size)
        return "".join(s.text for s in segments).strip()

    def speak(self, text: str) -> bytes:
        return b"".join(c.audio_int16_bytes for c in self.piper.synthesize(speakable(text)))

    def llm_sentences(self, question: str) -> Any:
        """Yield the LLM's answer sentence by sentence as it streams."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        cutter = SentenceCutter()
        stream: Any = self.llm.create_chat_completion(messages=messages, max_tokens=MAX_TOKENS,
                                                      temperature=0.3, stream=True, **self.sampling)
        for chunk in stream:
            yield from cutter.feed(chunk["choices"][0]["delta"].get("content") or "")
        yield from cutter.finish()


async def direct_run(direct: Direct, samples: np.ndarray, mode: str) -> tuple[float, float, float, str]:
    """(first audio s, end to end s, transcribe s, answer): nothing overlaps, nothing streams out.

    The blocking calls run in a thread only so this process keeps answering the WebSocket's pings."""
    from kaset.pipelines.advice import AdviceQuery
    from kaset.pipelines.speech import split_sentences

    started = time.perf_counter()
    text = await asyncio.to_thread(direct.transcribe, samples)
    heard = time.perf_counter() - started

    def first_sentence_spoken(sentences: list[str]) -> float:
        direct.speak(sentences[0])
        return time.perf_counter() - started

    def assistant() -> tuple[list[str], float]:
        sentences: list[str] = []
        first = 0.0
        for sentence in direct.llm_sentences(text):
            sentences.append(sentence)
            if len(sentences) == 1:
                first = first_sentence_spoken(sentences)
        return sentences, first

    if mode == "assistant":
        sentences, first_audio = await asyncio.to_thread(assistant)
    else:
        advice = await direct.advisor.advise(AdviceQuery(question=text, language="en", use_llm=False))
        sentences = split_sentences(advice.answer)
        first_audio = await asyncio.to_thread(first_sentence_spoken, sentences)
    for sentence in sentences[1:]:
        await asyncio.to_thread(direct.speak, sentence)
    return first_audio, time.perf_counter() - started, heard, " ".join(sentences)


# --- the run ----------------------------------------------------------------------------------


def to_pcm16k(wav_bytes: bytes) -> bytes:
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32)
    positions = np.linspace(0, samples.size - 1, round(samples.size * 16000 / rate))
    resampled = np.interp(positions, np.arange(samples.size), samples)
    # A short pause after the words, as a person leaves before letting go of the button.
    return np.concatenate([resampled, np.zeros(3200)]).astype("<i2").tobytes()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    catalog = Catalog.load()
    repo = ModelRepository(args.models_dir)
    print("loading the libraries directly ...", flush=True)
    direct = Direct(catalog, repo)
    if "advice" in args.modes:
        from kaset.pipelines.advice import AdviceService
        from kaset.registry.manager import ModelManager

        manager = ModelManager(catalog, repo)
        direct.advisor = AdviceService(manager, llm_model=None)
    results: dict[str, dict[str, Series]] = {m: {"gateway": Series(), "direct": Series()} for m in args.modes}
    print("starting kaset serve with the default pack ...", flush=True)
    with kaset_serving("voice", None, args.models_dir, must_load=NEEDED) as server:
        port = server.port
        async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=600)) as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/audio/speech", json={
                    "model": "piper-joe", "input": QUESTION, "response_format": "wav"}) as response:
                pcm = to_pcm16k(await response.read())
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
            print(f"question: {len(pcm) / 32000:.2f} s of Piper speech: {QUESTION!r}", flush=True)
            # A connection per question: between questions nothing reads this client's socket
            # (aiohttp answers pings only inside receive()), and the server's ping timeout would
            # close an idle one. Connecting is outside the timed part (the clock starts at stop).
            async def gateway(mode: str) -> tuple[float, float, float, str]:
                async with session.ws_connect(f"ws://127.0.0.1:{port}/v1/voice/stream",
                                              protocols=["kaset.v1", f"kaset-key.{BENCH_KEY}"]) as ws:
                    return await gateway_run(ws, pcm, mode)

            for mode in args.modes:
                # Untimed warmup per side (the advisor's index, the models' first calls).
                await gateway(mode)
                await direct_run(direct, samples, mode)
                for n in range(1, args.runs + 1):
                    sides = ["gateway", "direct"] if n % 2 else ["direct", "gateway"]
                    line = []
                    for side in sides:
                        await asyncio.sleep(PAUSE_S)
                        load = OtherLoad()
                        if side == "gateway":
                            first, total, heard, answer = await gateway(mode)
                        else:
                            first, total, heard, answer = await direct_run(direct, samples, mode)
                        series = results[mode][side]
                        series.first_audio.append(first)
                        series.end_to_end.append(total)
                        series.transcribe.append(heard)
                        series.other_load.append(load.cores())
                        series.answers.append(answer)
                        line.append(f"{side} first audio {first * 1000:.0f} ms, end {total * 1000:.0f} ms")
                    print(f"{mode} run {n}: " + "; ".join(line)
                          + f"; other load {max(results[mode][s].other_load[-1] for s in sides):.2f} cores",
                          flush=True)
    return {mode: {side: vars(s) for side, s in sides.items()} for mode, sides in results.items()}


def report(results: dict[str, Any]) -> None:
    rows = []
    for mode, sides in results.items():
        g, d = sides["gateway"], sides["direct"]
        for label, key in (("first audio", "first_audio"), ("end to end", "end_to_end"),
                           ("transcribe", "transcribe")):
            rows.append([mode, label,
                         f"{percentile_ms(g[key], 50):.0f} ms", f"{percentile_ms(g[key], 95):.0f} ms",
                         f"{percentile_ms(d[key], 50):.0f} ms", f"{percentile_ms(d[key], 95):.0f} ms",
                         f"{median(g[key]) / median(d[key]):.2f}×"])
    print(table(["mode", "from stop to", "gateway p50", "gateway p95", "direct p50", "direct p95",
                 "gateway / direct (median)"], rows))
    for mode, sides in results.items():
        g = sides["gateway"]
        verdict = "met" if percentile(g["first_audio"], 50) <= TARGET_FIRST_AUDIO_S else "MISSED"
        loads = g["other_load"] + sides["direct"]["other_load"]
        print(f"{mode}: target first audio ≤ {TARGET_FIRST_AUDIO_S} s at p50: {verdict}; other load median "
              f"{median(loads):.2f} cores, max {max(loads):.2f}; "
              f"mean answer length gateway {np.mean([len(a) for a in g['answers']]):.0f} chars, "
              f"direct {np.mean([len(a) for a in sides['direct']['answers']]):.0f} chars")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--modes", default="assistant,advice", help="comma-separated: assistant, advice")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    info = begin_benchmark()
    results = asyncio.run(run(args))
    report(results)
    write_json(args.json, {"machine": info, "runs": args.runs, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
