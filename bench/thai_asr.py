"""Thai speech recognition: character error rate on real recorded Thai, and how often the
"did I understand?" check (kaset.pipelines.speech.doubt) says "I did not catch that".

The set: tests/fixtures/thai_speech.py, phrases joined from the recorded clips of the PyPI
package thai-talking-clock 1.0.1 (a dev dependency: `pip install -e '.[dev]'`), 40 phrases by
default ("สิบสี่ นาฬิกา ห้าสิบห้า นาที", the greeting and the time, numbers with units), plus garbled
audio made from the same clips (reversed, chopped and shuffled, babble), white noise and a
quiet room. References are Thai words; both sides are normalised the same way (digits → Thai
words, PyThaiNLP normalize, letters only) before counting.

Measured, in the same run:
* gateway: `kaset serve --models whisper-base` (auth on), POST /v1/audio/transcriptions with
  model=whisper-base, language=th, response_format=verbose_json; the catalog's parameters (beam 5).
* baseline: faster-whisper called directly on the same model files with its default options
  (beam 5, language th).
* before: faster-whisper directly with what the gateway used before this bench (beam 1 and the
  temperature fallback ladder), i.e. the gateway's old decoding without the gateway.

    .venv/bin/python bench/thai_asr.py --models-dir var/test/models
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    AUTH,
    DEFAULT_MODELS_DIR,
    REPO,
    OtherLoad,
    begin_benchmark,
    free_port,
    kaset_server,
    table,
    write_json,
)

sys.path.insert(0, str(REPO))
from tests.fixtures import thai_speech

from kaset.pipelines.speech import Heard, doubt, signals
from kaset.runtimes.base import Segment, Transcription

MODEL = "whisper-base"
TARGET_CER = 0.08


def _multipart(fields: dict[str, str], wav: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.wav"\r\n'
                 "Content-Type: audio/wav\r\n\r\n".encode() + wav + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def gateway_transcribe(port: int, samples: np.ndarray) -> Transcription:
    body, content_type = _multipart({"model": MODEL, "language": "th", "response_format": "verbose_json"},
                                    thai_speech.wav_bytes(samples))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/audio/transcriptions", data=body, method="POST",
                                     headers={**AUTH, "Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        reply = json.loads(response.read())
    segments = [Segment(id=s["id"], start=s["start"], end=s["end"], text=s["text"], avg_logprob=s["avg_logprob"],
                        compression_ratio=s["compression_ratio"], no_speech_prob=s["no_speech_prob"],
                        temperature=s.get("temperature", 0.0))
                for s in reply.get("segments") or []]
    return Transcription(text=reply["text"], language="th", duration=reply.get("duration", 0.0), segments=segments)


def direct_transcriber(model_dir: Path, **options: Any) -> Any:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)

    def transcribe(samples: np.ndarray) -> Transcription:
        found, info = model.transcribe(samples, language="th", **options)
        segments = [Segment(id=s.id, start=s.start, end=s.end, text=s.text, avg_logprob=s.avg_logprob,
                            compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob,
                            temperature=s.temperature) for s in found]
        return Transcription(text="".join(s.text for s in segments).strip(), language=info.language,
                             duration=info.duration, segments=segments)

    return transcribe


def judged(result: Transcription) -> str | None:
    logprob, no_speech, compression, temperature = signals(result)
    return doubt(Heard(text=result.text, language=result.language, seconds=0.0, model=MODEL, avg_logprob=logprob,
                       no_speech_prob=no_speech, compression_ratio=compression, fallback_temperature=temperature))


def run_side(name: str, transcribe: Any, clear: tuple[thai_speech.Utterance, ...],
             unclear: dict[str, np.ndarray]) -> dict[str, Any]:
    load = OtherLoad()
    began = time.perf_counter()
    hyps = [transcribe(u.samples) for u in clear]
    seconds = time.perf_counter() - began
    garbled = {k: transcribe(v) for k, v in unclear.items()}
    result = {
        "side": name, "cer": thai_speech.cer([u.reference for u in clear], [h.text for h in hyps]),
        "seconds": seconds, "audio_seconds": sum(u.seconds for u in clear),
        "clear_doubted": sum(judged(h) is not None for h in hyps), "clear": len(hyps),
        "unclear_doubted": sum(judged(h) is not None or not h.text.strip() for h in garbled.values()),
        "unclear": len(garbled), "other_load": load.cores(),
        "examples": [(u.reference, h.text) for u, h in zip(clear[:5], hyps[:5], strict=True)],
        "unclear_texts": {k: (h.text, judged(h)) for k, h in garbled.items()},
    }
    print(f"  {name}: CER {result['cer']:.1%} in {seconds:.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--size", type=int, default=40, help="phrases in the clear set")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = begin_benchmark()
    clear = thai_speech.thai_speech_set(args.size)
    unclear = {**thai_speech.garbled_set(), "noise": thai_speech.noise(),
               "quiet-room hiss": thai_speech.noise(level=0.02, seed=9), "silence": thai_speech.silence()}
    print(f"{len(clear)} clear phrases ({sum(u.seconds for u in clear):.0f} s), {len(unclear)} unclear clips")
    model_dir = args.models_dir / MODEL / "1"
    results = [run_side("before (beam 1, direct)", direct_transcriber(
                   model_dir, beam_size=1, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)), clear, unclear),
               run_side("baseline (faster-whisper defaults)", direct_transcriber(model_dir), clear, unclear)]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, \
            kaset_server("thai-asr", port, Path(tmp) / "data", models=MODEL, models_dir=args.models_dir):
        results.append(run_side("gateway", lambda s: gateway_transcribe(port, s), clear, unclear))
    baseline = results[1]["cer"]
    print(table(["side", "CER", "vs baseline", "s per audio s", "clear doubted", "unclear doubted", "other load"],
                [[r["side"], f"{r['cer']:.1%}", f"{r['cer'] / baseline:.2f}x" if baseline else "-",
                  f"{r['seconds'] / r['audio_seconds']:.3f}", f"{r['clear_doubted']}/{r['clear']}",
                  f"{r['unclear_doubted']}/{r['unclear']}", f"{r['other_load']:.2f}"] for r in results]))
    gateway = results[-1]
    print(f"target CER <= {TARGET_CER:.0%}: {'met' if gateway['cer'] <= TARGET_CER else 'NOT met'} "
          f"({gateway['cer']:.1%})")
    for reference, heard in gateway["examples"]:
        print(f"  {reference}  =>  {heard}")
    for kind, (text, why) in gateway["unclear_texts"].items():
        print(f"  {kind}: {text!r} -> {why or 'TRUSTED'}")
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
