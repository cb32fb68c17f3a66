"""Speech for pipelines: hear (speech → text) and speak (text → audio) with whatever models this
server has, chosen by language.

The voice assistant, chat with audio, the crop doctor and the ULCA pipeline endpoint all need
the same two steps and the same choice of model: for English the fast English-only Whisper
(tiny.en) and Piper; for Thai (or an unknown language) the multilingual Whisper, and a Thai
voice only when one is installed (an AI4Thai VAJA provider model, say). The offline pack has no
Thai voice (eSpeak's is broken), so `speak` then raises `NoVoice`, whose message says so and
which callers turn into a text-only answer rather than a failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kaset.errors import InvalidRequest, ModelUnavailable, PayloadTooLarge, UnsupportedMediaType
from kaset.language import has_thai
from kaset.media.audio import ASR_SAMPLE_RATE, decode_audio, encode_audio
from kaset.registry.catalog import ModelSpec
from kaset.registry.handle import ModelHandle
from kaset.registry.manager import ModelManager
from kaset.registry.routing import Router
from kaset.runtimes.base import Synthesizer, TranscribeOptions, Transcription, Voice

Caller = Callable[[], str | None]
log = logging.getLogger(__name__)

# Sentence ends in English and in Thai text written with Western punctuation. Thai usually
# ends a sentence with a space, which PyThaiNLP's sentence splitter handles (see _thai_sentences).
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
# A piece shorter than this is merged with the next: a voice saying "1." alone sounds broken.
MIN_SENTENCE_CHARS = 12


class NoVoice(ModelUnavailable):
    """No installed model speaks the language asked for."""


# "Did I understand?": Whisper's own signals about a transcription, judged by `understood`.
# Chosen on bench/thai_asr.py's sets with whisper-base, beam 5 (tests/fixtures/thai_speech.py):
# 40 clear recorded Thai phrases (2-8 s) against 6 garbled ones (clips reversed, chopped and
# shuffled, three voices over each other), white noise and a quiet room.
# - average log-probability per token (weighted by text length): clear speech -0.3 to -0.99;
#   shuffled and babble -2.8 to -3.5, reversed -0.98 and -1.31. Whisper's own failure line is
#   -1.0, which clear Thai grazes; -1.2 keeps a margin under the clear set.
LOGPROB_MIN = -1.2
# - no-speech probability (the highest of any segment): clear at most 0.20; quiet-room noise that
#   Whisper wrote "โอเค โอเค ..." for, 0.72. Whisper's own no_speech_threshold is 0.6.
NO_SPEECH_MAX = 0.6
# - compression ratio (gzip; high = repetitive text): clear at most 1.56, reversed speech 1.86,
#   the quiet room 2.04. Whisper's own 2.4 is for full 30 s windows; a farmer's question is short.
COMPRESSION_MAX = 1.8
# - temperature fallback: Whisper re-reads a window at a higher temperature (sampling, so a
#   different guess each run) when its first reading fails its own checks (log-probability under
#   -1, compression over 2.4). All 12 garbled readings (6 clips, Thai and auto) fell back; of the
#   40 clear phrases none did in Thai and one in auto mode. What a fallback returns is a random
#   guess: it passed the three limits above in one CI run ("No, no." for shuffled speech), so a
#   fallback alone is reason to ask again.
# Languages a farmer's question can be in: Whisper hearing Javanese or Japanese in "auto" mode
# means it did not follow what was said (reversed Thai speech came out as 'jw' and 'id').
UNDERSTOOD_LANGUAGES = ("en", "th")


@dataclass
class Heard:
    """What a transcription gave: text, the language spoken, the audio's length, who heard it,
    and Whisper's confidence signals (None when the model gave no segments)."""

    text: str
    language: str
    seconds: float
    model: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    # The highest temperature a segment needed (0 = Whisper's first reading passed its own checks).
    fallback_temperature: float | None = None


def doubt(heard: Heard, languages: tuple[str, ...] = UNDERSTOOD_LANGUAGES) -> str | None:
    """Why the transcript should not be trusted (a short reason), or None when it should.
    See LOGPROB_MIN and the thresholds after it for how the limits were chosen."""
    if not heard.text.strip():
        return "nothing was heard"
    if heard.language not in languages:
        return f"Whisper heard language '{heard.language}'"
    if heard.avg_logprob is not None and heard.avg_logprob < LOGPROB_MIN:
        return f"low confidence (average log-probability {heard.avg_logprob:.2f} < {LOGPROB_MIN})"
    if heard.no_speech_prob is not None and heard.no_speech_prob > NO_SPEECH_MAX:
        return f"probably not speech (no-speech probability {heard.no_speech_prob:.2f} > {NO_SPEECH_MAX})"
    if heard.compression_ratio is not None and heard.compression_ratio > COMPRESSION_MAX:
        return f"repetitive transcript (compression ratio {heard.compression_ratio:.2f} > {COMPRESSION_MAX})"
    if heard.fallback_temperature:
        return (f"Whisper's first reading failed its own checks; it guessed again at temperature "
                f"{heard.fallback_temperature:g}")
    return None


def understood(heard: Heard, languages: tuple[str, ...] = UNDERSTOOD_LANGUAGES) -> bool:
    """Whether the speech was heard well enough to act on (see `doubt`)."""
    return doubt(heard, languages) is None


NOT_CAUGHT: dict[str, str] = {
    "en": "I did not catch that. Please say it again, a little slower and closer to the microphone.",
    "th": "ขออภัย ฟังไม่ชัด กรุณาพูดอีกครั้ง ช้าลงเล็กน้อยและใกล้ไมโครโฟน",
}


def not_caught(language: str) -> str:
    """'I did not catch that: please say it again', in the farmer's language (Thai unless English)."""
    return NOT_CAUGHT["en" if language == "en" else "th"]


def signals(result: Transcription) -> tuple[float | None, float | None, float | None, float | None]:
    """(average log-probability weighted by each segment's text length, the highest no-speech
    probability, the highest compression ratio, the highest fallback temperature) of a
    transcription; Nones without segments."""
    segments = result.segments
    if not segments:
        return None, None, None, None
    weights = [max(1, len(s.text.strip())) for s in segments]
    logprob = sum(s.avg_logprob * w for s, w in zip(segments, weights, strict=True)) / sum(weights)
    return (logprob, max(s.no_speech_prob for s in segments), max(s.compression_ratio for s in segments),
            max(s.temperature for s in segments))


@dataclass
class Spoken:
    """One piece of synthesized speech, encoded."""

    audio: bytes
    format: str
    sample_rate: int
    seconds: float
    model: str
    voice: str | None


async def transcribe_bytes(router: Router, data: bytes, model_name: str, options: TranscribeOptions,
                           max_audio_seconds: float, caller: Caller | None = None,
                           ) -> tuple[Transcription, TranscribeOptions, ModelSpec, float]:
    """Transcribe an audio file's bytes with the model (or route) `model_name`, without a request:
    (transcription, the options used, the serving model, the audio's seconds)."""
    decoded: list[tuple[np.ndarray, float]] = []

    async def run(model: ModelHandle) -> tuple[Transcription, TranscribeOptions]:
        used = options
        if options.task == "translate" and model.spec.languages == ["en"]:
            # An English-only model understands English speech only, whose English translation
            # is its transcript: answer rather than refuse stock `whisper-1` clients.
            used = dataclasses.replace(options, task="transcribe")
        if not decoded:  # once, whichever model of a route ends up serving
            # Decoding is media work, not the model's: it must not hold one of the model's slots.
            decoded.append(await asyncio.to_thread(decode_audio, data, max_audio_seconds))
        return await model.transcribe(decoded[0][0], used), used

    # Transcription is idempotent: a route's retries apply.
    (result, used), spec = await router.call(model_name, "transcribe", run, caller=caller, retry=True)
    return result, used, spec, decoded[0][1]


def split_sentences(text: str) -> list[str]:
    """The text in sentence-sized pieces for speaking one at a time, so the first can play while
    the rest are synthesized. Thai text is split with PyThaiNLP; tiny pieces are merged."""
    pieces: list[str] = []
    for part in _SENTENCE_END.split(text.strip()):
        part = part.strip()
        if not part:
            continue
        pieces.extend(_thai_sentences(part) if has_thai(part) else [part])
    merged: list[str] = []
    for piece in pieces:
        if merged and len(merged[-1]) < MIN_SENTENCE_CHARS:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def _thai_sentences(text: str) -> list[str]:
    from pythainlp.tokenize import sent_tokenize

    try:
        found = sent_tokenize(text)
    except ImportError:
        # PyThaiNLP's default (CRF) splitter needs python-crfsuite, which is not a dependency:
        # Thai marks sentence ends with a space, so splitting at spaces is the next best.
        found = sent_tokenize(text, engine="whitespace+newline")
    sentences: list[str] = [str(s).strip() for s in found if str(s).strip()]
    return sentences or [text]


class SpeechService:
    """Chooses models by language and runs them through the router (routes, fallbacks, breakers)."""

    def __init__(self, router: Router, manager: ModelManager, max_audio_seconds: float) -> None:
        self.router = router
        self.manager = manager
        self.max_audio_seconds = max_audio_seconds

    # --- choosing models ----------------------------------------------------------------------

    def transcriber_for(self, language: str | None) -> str:
        """English → an English-only model when there is one (faster); otherwise a multilingual one."""
        models = self.router.models_for("transcribe")
        if not models:
            raise ModelUnavailable("No speech-to-text model is installed on this server.")
        if language == "en":
            english = [s for s in models if s.languages == ["en"]]
            if english:
                return self._prefer(english).id
        multilingual = [s for s in models if "multilingual" in s.languages or (language and language in s.languages)]
        if not multilingual:
            raise ModelUnavailable(
                f"No installed speech-to-text model understands '{language}'. Install a multilingual "
                "Whisper model (kaset models install whisper-base).", code="no_transcriber")
        return self._prefer(multilingual).id

    def voice_model_for(self, language: str) -> ModelSpec | None:
        """The model that speaks `language`, or None. A model listing the language by name wins over
        a multilingual one, and a multilingual model counts only if it has a voice for it."""
        models = [s for s in self.router.models_for("synthesize") if s.id != "echo"]
        named = [s for s in models if language in s.languages]
        if named:
            return self._prefer(named)
        for spec in models:
            if "multilingual" in spec.languages and language in self._voice_languages(spec):
                return spec
        return None

    def _voice_languages(self, spec: ModelSpec) -> set[str]:
        loaded = {m.spec.key: m for m in self.manager.loaded()}.get(spec.key)
        # Loaded, or listed since start-up (the app asks every installed speech model for its
        # voices in the background); else what the catalog declares.
        voices = loaded.as_(Synthesizer).voices() if loaded is not None else self.manager.known_voices(spec)
        if voices is None:
            return set(str(v) for v in spec.params.get("languages", []))
        return {v.language.split("-")[0] for v in voices}

    async def list_voices(self) -> None:
        """Ask every installed speech model for its voices (cached by the manager), so choosing a
        voice by language sees multilingual engines' languages before they are loaded."""
        for spec in self.manager.models_for("synthesize"):
            try:
                await self.manager.voices(spec)
            except Exception as exc:  # a broken engine must not stop the others being listed
                log.warning("could not list the voices of %s: %s", spec.id, exc)

    def _prefer(self, specs: list[ModelSpec]) -> ModelSpec:
        loaded = {m.spec.key for m in self.manager.loaded()}
        return sorted(specs, key=lambda s: (s.key not in loaded, not s.default, s.id))[0]

    # --- hearing ------------------------------------------------------------------------------

    async def hear(self, data: bytes, *, language: str | None = None, model: str | None = None,
                   caller: Caller | None = None, param: str = "file", prompt: str | None = None) -> Heard:
        """Transcribe an audio file (any accepted container). Empty speech is a 400. `param` is
        the request field that held the file: errors about the file (corrupt, empty, too long,
        no speech) name it. `prompt`: words the speech is likely to hold (Whisper's prompt)."""
        name = model or self.transcriber_for(language)
        options = TranscribeOptions(language=language if language and language != "auto" else None, prompt=prompt)
        try:
            result, _used, spec, seconds = await transcribe_bytes(self.router, data, name, options,
                                                                  self.max_audio_seconds, caller)
        except (InvalidRequest, UnsupportedMediaType, PayloadTooLarge) as exc:
            if exc.param != "file" or param == "file":  # the decoder says "file" (the transcription API's field)
                raise
            raise type(exc)(exc.message, param=param, code=exc.code) from None
        return self._heard(result, seconds, spec, param=param)

    async def hear_samples(self, samples: np.ndarray, *, language: str | None = None, model: str | None = None,
                           caller: Caller | None = None, require_speech: bool = True,
                           prompt: str | None = None) -> Heard:
        """Transcribe 16 kHz mono float32 samples (a live recording's buffer)."""
        name = model or self.transcriber_for(language)
        options = TranscribeOptions(language=language if language and language != "auto" else None, prompt=prompt)

        async def run(model: ModelHandle) -> Transcription:
            return await model.transcribe(samples, options)

        result, spec = await self.router.call(name, "transcribe", run, caller=caller, retry=True)
        heard = self._heard(result, len(samples) / ASR_SAMPLE_RATE, spec, require_speech)
        return heard

    def _heard(self, result: Transcription, seconds: float, spec: ModelSpec, require_speech: bool = True,
               param: str = "audio") -> Heard:
        text = result.text.strip()
        if require_speech and not text:
            raise InvalidRequest(
                "No speech was heard in the recording. Hold the button while you speak, closer to the "
                "microphone. ไม่ได้ยินเสียงพูด กรุณากดค้างไว้ขณะพูดใกล้ไมโครโฟน",
                param=param, code="no_speech")
        logprob, no_speech, compression, temperature = signals(result)
        return Heard(text=text, language=result.language, seconds=seconds, model=spec.id, avg_logprob=logprob,
                     no_speech_prob=no_speech, compression_ratio=compression, fallback_temperature=temperature)

    # --- speaking -----------------------------------------------------------------------------

    def require_voice(self, language: str, model: str | None = None) -> str:
        """The model id to speak `language` with; NoVoice when there is none."""
        if model:
            return model
        spec = self.voice_model_for(language)
        if spec is None:
            raise NoVoice(
                f"No voice for '{language}' is installed on this server, so the answer is text only. "
                + ("An operator can add a Thai voice (the AI4Thai VAJA provider, see docs/providers.md)."
                   if language == "th" else ""), code="no_voice")
        return spec.id

    async def speak(self, text: str, *, language: str, model: str | None = None, voice: str | None = None,
                    speed: float = 1.0, fmt: str = "wav", caller: Caller | None = None) -> Spoken:
        """Synthesize `text` whole and encode it as `fmt`."""
        name = self.require_voice(language, model)

        async def run(model: ModelHandle) -> Spoken:
            info = await model.info()
            chosen = voice if voice is not None else self._voice_for(info.voices, language)
            rate = info.sample_rate(chosen)
            pcm = await model.synthesize(text, chosen, speed)
            # Encoding is media work, not the model's: a thread of its own, not one of the model's slots.
            audio = await asyncio.to_thread(encode_audio, pcm, rate, fmt)
            return Spoken(audio=audio, format=fmt, sample_rate=rate, seconds=len(pcm) / (2 * rate),
                          model=model.spec.id, voice=chosen)

        spoken, _spec = await self.router.call(name, "synthesize", run, caller=caller, retry=True)
        return spoken

    @staticmethod
    def _voice_for(voices: list[Voice], language: str) -> str | None:
        """The model's default voice, unless it is multilingual: then its voice for `language`."""
        if not voices or voices[0].language.split("-")[0] == language:
            return None
        for v in voices:
            if v.language.split("-")[0] == language:
                return v.id
        return None
