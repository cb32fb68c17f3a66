"""Crop questions heard with and without the knowledge base's vocabulary as Whisper's prompt
(kaset.pipelines.vocabulary), through SpeechService and the router, as the crop doctor hears.

Speech set: English crop questions spoken by the server's Piper voice (piper-joe), looped as
Chromium's fake microphone loops its file, cut at 2.6-3.7 s, started up to 150 ms late, sent
through an Opus round trip (what a browser's MediaRecorder sends) and white noise added at two
levels: 4 questions x 24 recordings. A recording counts as heard when the transcript names the
crop ("mango"). Heard by whisper-tiny.en (the English transcriber the server picks).

Negative set (tests/fixtures/thai_speech.py): white noise, a quiet hiss, silence and garbled
Thai (reversed, shuffled, babble), heard in English and in Thai with each prompt: each must be
refused (no speech) or doubted (kaset.pipelines.speech.doubt), never trusted.

Thai: the character error rate of whisper-base on 20 phrases of recorded Thai speech
(thai-talking-clock) with and without the Thai prompt (the phrases are times, not crop words:
this measures harm, not benefit; no recorded Thai crop question is available here).

Measured 2026-12-07 (2 vCPU EPYC VM, heavily loaded by other work: 29 min wall), see docs/benchmarks.md:
mango heard 38/96 without the prompt, 96/96 with it; no negative trusted either way; Thai CER
0.183 without, 0.219 with the Thai prompt (so the server prompts English questions only).

    .venv/bin/python bench/crop_hearing.py --models-dir var/test/models
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures import thai_speech as thai  # noqa: E402

from kaset.errors import InvalidRequest  # noqa: E402
from kaset.knowledge.schema import load_entries  # noqa: E402
from kaset.media.audio import decode_audio, encode_audio  # noqa: E402
from kaset.pipelines.speech import SpeechService, doubt  # noqa: E402
from kaset.pipelines.vocabulary import vocabulary_text  # noqa: E402
from kaset.registry.catalog import Catalog  # noqa: E402
from kaset.registry.manager import ModelManager  # noqa: E402
from kaset.registry.repository import ModelRepository  # noqa: E402
from kaset.registry.routing import Router  # noqa: E402
from kaset.runtimes.piper import PiperRuntime  # noqa: E402

QUESTIONS = (
    "How do I treat anthracnose on mango leaves?",
    "How do I treat black spots on mango leaves?",
    "How do I treat black spots on my mango leaves?",
    "What do I spray on mango leaves with black spots?",
)
RATE = 22_050


def recordings(pcm: np.ndarray, rng: np.random.Generator) -> list[bytes]:
    """24 browser-like recordings of a looped question (see the module docstring)."""
    out = []
    looped = np.tile(pcm, 3)
    for trial in range(24):
        hold_s = 2.6 + 0.1 * (trial % 12)
        start = int(rng.integers(0, 3300))
        cut = looped[start:start + int(hold_s * RATE)]
        samples, _seconds = decode_audio(encode_audio(cut.tobytes(), RATE, "opus"), max_seconds=60)
        noisy = samples + rng.normal(0, 0.004 * (trial // 12 + 1), samples.size)
        out.append(thai.wav_bytes(noisy.astype(np.float32)))
    return out


async def heard_crop(speech: SpeechService, clips: list[bytes], prompt: str | None) -> tuple[int, list[str]]:
    hits, misses = 0, []
    for clip in clips:
        text = (await speech.hear(clip, language="en", prompt=prompt)).text
        if "mango" in text.lower():
            hits += 1
        else:
            misses.append(text)
    return hits, misses


async def trusted_noise(speech: SpeechService, prompts: dict[str, str | None]) -> list[str]:
    """Negative recordings some prompt let through as trusted speech (should be none)."""
    negatives = {"noise": thai.noise(), "hiss": thai.noise(level=0.02, seed=9), "silence": thai.silence(),
                 **{k: v for k, v in thai.garbled_set().items()}}
    trusted = []
    for language in ("en", "th"):
        for kind, samples in negatives.items():
            try:
                heard = await speech.hear(thai.wav_bytes(samples), language=language, prompt=prompts[language])
            except InvalidRequest as refused:
                assert refused.code == "no_speech", refused
                continue
            if doubt(heard) is None:
                trusted.append(f"{language}/{kind}: {heard.text!r}")
    return trusted


async def thai_cer(speech: SpeechService, prompt: str | None) -> float:
    phrases = thai.thai_speech_set()[:20]
    texts = [(await speech.hear(u.wav(), language="th", prompt=prompt)).text for u in phrases]
    return thai.cer([u.reference for u in phrases], texts)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "var" / "test" / "models")
    args = parser.parse_args()
    catalog = Catalog.load([])
    manager = ModelManager(catalog, ModelRepository(args.models_dir))
    speech = SpeechService(Router(manager), manager, 60)
    entries = load_entries()
    prompts = {language: vocabulary_text(entries, language) for language in ("en", "th")}
    spec = catalog.resolve("piper-joe")
    piper = PiperRuntime(spec, args.models_dir / spec.id / spec.version)
    piper.load()
    rng = np.random.default_rng(0)
    try:
        totals = {"without": 0, "with": 0}
        for question in QUESTIONS:
            pcm = np.frombuffer(b"".join(piper.synthesize(question, None, 1.0)), dtype=np.int16)
            clips = recordings(pcm, rng)
            plain, plain_misses = await heard_crop(speech, clips, None)
            prompted, prompted_misses = await heard_crop(speech, clips, prompts["en"])
            totals["without"] += plain
            totals["with"] += prompted
            print(f"{question!r}: mango heard {plain}/{len(clips)} without the prompt, {prompted}/{len(clips)} with it")
            for miss in prompted_misses[:3]:
                print(f"    missed with the prompt: {miss!r}")
            for miss in plain_misses[:2]:
                print(f"    missed without: {miss!r}")
        count = 24 * len(QUESTIONS)
        print(f"all: {totals['without']}/{count} without, {totals['with']}/{count} with the prompt")
        print("negatives trusted without a prompt:", await trusted_noise(speech, {"en": None, "th": None}) or "none")
        print("negatives trusted with the prompts:", await trusted_noise(speech, prompts) or "none")
        plain_cer, prompted_cer = await thai_cer(speech, None), await thai_cer(speech, prompts["th"])
        print(f"Thai CER (20 recorded phrases, whisper-base): {plain_cer:.3f} without, {prompted_cer:.3f} with the "
              "Thai prompt")
    finally:
        await manager.close()


if __name__ == "__main__":
    asyncio.run(main())
