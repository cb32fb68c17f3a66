"""Speech recognition with faster-whisper (Whisper on CTranslate2, int8 on the CPU)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.language import has_thai
from kaset.runtimes.base import (
    SAMPLE_RATE_ASR,
    Segment,
    TranscribeOptions,
    Transcriber,
    Transcription,
    Word,
)

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

# OpenAI's rule for temperature 0: start greedy and raise the temperature when a window's
# output looks like a failure (repetitive or improbable). Whisper's own fallback ladder.
_FALLBACK_TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class FasterWhisperRuntime(Transcriber):
    _model: WhisperModel | None = None

    def load(self) -> None:
        from faster_whisper import WhisperModel

        if self.model_dir is None or not (self.model_dir / "model.bin").is_file():
            raise ModelUnavailable(f"Model '{self.spec.id}' has no installed model.bin.")
        self._model = WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=str(self.params.get("compute_type", "int8")),
            cpu_threads=int(self.params.get("cpu_threads", 2)),
        )

    def unload(self) -> None:
        self._model = None

    def warmup(self) -> None:
        self.transcribe(np.zeros(SAMPLE_RATE_ASR, dtype=np.float32), TranscribeOptions())

    @property
    def is_multilingual(self) -> bool:
        return bool(self._loaded().model.is_multilingual)

    def supported_languages(self) -> list[str]:
        return list(self._loaded().supported_languages)

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcription:
        model = self._loaded()
        language = self._check_language(options.language)
        self._check_task(options.task)
        segments, info = model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language=language,
            task=options.task,
            beam_size=int(self.params.get("beam_size", 1)),
            temperature=_temperatures(options.temperature),
            initial_prompt=options.prompt or None,
            word_timestamps=options.word_timestamps,
        )
        # The segments are a lazy generator: the decoding happens while we consume it.
        ours = [_segment(s) for s in segments]
        return Transcription(
            text=clean_text("".join(s.text for s in ours)),
            language=info.language,
            duration=float(info.duration),
            segments=ours,
        )

    # --- validation ---------------------------------------------------------------------------

    def _check_language(self, language: str | None) -> str | None:
        if language is None or not language.strip():
            return None
        code = language.strip().lower()
        valid = self.supported_languages()
        if code in valid:
            return code
        if not self.is_multilingual:
            raise InvalidRequest(
                f"Model '{self.spec.id}' understands English only; language '{language}' is not "
                "supported. Use a multilingual model such as whisper-base, or omit the language.",
                param="language",
            )
        raise InvalidRequest(
            f"'{language}' is not a language code Whisper knows. Use an ISO 639-1 code such as "
            f"en, th, fr (all valid codes: {', '.join(valid)}).",
            param="language",
        )

    def _check_task(self, task: str) -> None:
        if task == "translate" and not self.is_multilingual:
            raise InvalidRequest(
                f"Model '{self.spec.id}' is English-only and cannot translate speech into English. "
                "Use a multilingual model such as whisper-base.",
                param="model",
            )

    def _loaded(self) -> WhisperModel:
        if self._model is None:
            raise ModelUnavailable(f"Model '{self.spec.id}' is not loaded.")
        return self._model


# A run of the same 1-4 characters repeated 4+ times ("สาสาสาสา", "9,9,9,9"): Whisper's
# hallucinated repeats on speech it cannot follow. Kept once; no Thai or English word repeats a
# syllable four times in a row (the Thai repetition mark ๆ is written once). Digits are left
# alone: 1000000 is a number.
_REPEATS = re.compile(r"(.{1,4}?)\1{3,}", re.DOTALL)
_THAI_DIGITS = str.maketrans("๐๑๒๓๔๕๖๗๘๙", "0123456789")


def clean_text(text: str) -> str:
    """The transcript, tidied: Thai digits as Arabic ones (Whisper writes both; one form for the
    advisor and the CER), hallucinated repeats collapsed, Thai vowels and tone marks put in
    their one valid order (PyThaiNLP's normalize), spaces squeezed."""
    text = text.translate(_THAI_DIGITS)
    text = _REPEATS.sub(lambda m: m.group() if m.group(1).isdigit() else m.group(1), text)  # 1000000 stays
    if has_thai(text):
        from pythainlp.util import normalize

        text = normalize(text)
    return " ".join(text.split())


def _temperatures(temperature: float) -> float | tuple[float, ...]:
    if temperature <= 0.0:
        return _FALLBACK_TEMPERATURES
    return temperature


def _segment(seg: Any) -> Segment:
    return Segment(
        id=int(seg.id) - 1,  # faster-whisper counts from 1; OpenAI's segment ids start at 0
        start=float(seg.start),
        end=float(seg.end),
        text=str(seg.text),
        tokens=list(seg.tokens),
        temperature=float(seg.temperature or 0.0),
        avg_logprob=float(seg.avg_logprob),
        compression_ratio=float(seg.compression_ratio),
        no_speech_prob=float(seg.no_speech_prob),
        words=_words(seg.words),
    )


def _words(words: Iterable[Any] | None) -> list[Word] | None:
    if words is None:
        return None
    return [
        Word(start=float(w.start), end=float(w.end), word=str(w.word), probability=float(w.probability)) for w in words
    ]
