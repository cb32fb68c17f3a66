"""The voice assistant: heard text in, the answer out sentence by sentence, each one spoken as
soon as it is ready.

Two modes answer a question:

* "advice": Crop Guardian's grounded advisor (`kaset.pipelines.advice`). Its answer comes whole
  (retrieval, then an optional LLM rewrite that is validated as a whole), then is split into
  sentences. By default the voice path does not ask for the rewrite: the 135M model needs about
  as long to rewrite as the rest of the pipeline together, before anything could be spoken, and
  the curated text it would rephrase is already the answer (`rephrase_advice=True` turns it on).
* "assistant": the local chat LLM, streamed. Sentences are cut as tokens arrive, so the first
  one is spoken while the model is still writing the second. A language the chat model does not
  write (the default pack's SmolLM2 writes no Thai) is answered by the advisor instead, with a
  notice saying so: a grounded Thai answer beats English to a Thai speaker, or a refusal.

Speaking: a sentence is synthesized as soon as it is cut, in its own task, while the LLM goes
on writing the next one (the two run in different model executors). A language without a
voice (Thai, in the offline pack) gets one `no_voice` notice and text only.

The caller gets `VoiceEvent`s in the order they happen: `Delta` (a sentence of text), `Audio`
(that sentence's speech, in index order), `Notice`, and last `Answered` (the whole answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from kaset import usage
from kaset.errors import InvalidRequest, ModelUnavailable, UpstreamError
from kaset.language import Language
from kaset.pipelines.advice import Advice, AdviceQuery, AdviceService, detect_language
from kaset.pipelines.speaking import Finished, Written, report_end, speak_while_writing
from kaset.pipelines.speaking import Spoken as SpokenSentence
from kaset.pipelines.speech import (
    MIN_SENTENCE_CHARS,
    Caller,
    Heard,
    NoVoice,
    SpeechService,
    Spoken,
    doubt,
    not_caught,
    split_sentences,
)
from kaset.pipelines.vocabulary import crop_hearing_prompt
from kaset.registry.handle import ModelHandle
from kaset.registry.routing import Router
from kaset.runtimes.base import GenerationChunk, GenerationParams

Mode = Literal["assistant", "advice"]
MODES: tuple[Mode, ...] = ("assistant", "advice")

# Short on purpose: every prompt token costs time before the first word on 2 CPU cores.
SYSTEM_PROMPT = ("You are a helpful voice assistant for farmers. Answer the question directly in two or "
                 "three short, plain sentences. No lists, no markdown.")
MAX_TOKENS = 120
# A sentence ends at . ! ? (or Thai/CJK stops) followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"[.!?。！？](?=\s)|\n")
# ... and, for the first piece only, a clause end.
_CLAUSE_END = re.compile(r"[.!?。！？,;:](?=\s)|\n")
FIRST_CLAUSE_CHARS = 24
# Markdown the small LLM writes now and then; a voice would read the symbols out.
_MARKUP = re.compile(r"[*_#`]+|^\s*(?:[-•]|\d+[.)])\s+", re.MULTILINE)


@dataclass
class Delta:
    """Sentence `index` of the answer, as text."""

    index: int
    text: str


@dataclass
class Audio:
    """The speech of sentence `index`."""

    index: int
    spoken: Spoken


@dataclass
class Notice:
    code: str
    message: str


@dataclass
class Answered:
    """The last event: the whole answer and how it was made."""

    answer: str
    sentences: list[str]
    language: Language
    path: Literal["llm", "curated", "assistant"]
    model: str | None
    advice: Advice | None = None
    notices: list[Notice] = field(default_factory=list)
    # Seconds from the start of `answer()` to the first sentence's text / audio, and to the end
    # of the text (synthesis of the last sentences may go on after it).
    first_text_s: float | None = None
    first_audio_s: float | None = None
    text_s: float = 0.0
    # False when the spoken question was not understood: the answer is only "I did not catch
    # that" (a `not_understood` notice went before it) and nothing was advised from the speech.
    understood: bool = True


VoiceEvent = Delta | Audio | Notice | Answered


def speakable(sentence: str) -> str:
    """The sentence as a voice should read it: markdown symbols and list bullets removed."""
    return " ".join(_MARKUP.sub(" ", sentence).split())


class SentenceCutter:
    """Cuts streamed text into sentences as it arrives. A piece shorter than MIN_SENTENCE_CHARS
    waits for the next one (a voice saying "1." alone sounds broken).

    The first piece may also end at a comma, semicolon or colon once it has `first_clause_chars`
    characters: the listener hears the start of the answer while the LLM is still writing the
    rest of its first sentence (measured: about 0.2 s sooner first audio with SmolLM2 + Piper).
    """

    def __init__(self, first_clause_chars: int = FIRST_CLAUSE_CHARS) -> None:
        self._buffer = ""
        self._first_clause_chars = first_clause_chars
        self._cut_any = False

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        out: list[str] = []
        start = 0
        ends = _SENTENCE_END if self._cut_any or not self._first_clause_chars else _CLAUSE_END
        for match in ends.finditer(self._buffer):
            piece = self._buffer[start:match.end()].strip()
            is_sentence = match.group() not in ",;:"
            if len(piece) >= (MIN_SENTENCE_CHARS if is_sentence else self._first_clause_chars):
                out.append(piece)
                start = match.end()
                if not self._cut_any:
                    self._cut_any = True
                    # Clauses only for the first piece: the rest are whole sentences.
                    out.extend(self._rest_sentences(start))
                    return out
        self._buffer = self._buffer[start:]
        return out

    def _rest_sentences(self, start: int) -> list[str]:
        self._buffer = self._buffer[start:]
        return self.feed("")

    def finish(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []


class VoiceAssistant:
    """Answers heard questions by voice with the server's models (see the module docstring)."""

    def __init__(self, speech: SpeechService, advisor: AdviceService, router: Router,
                 chat_model: str | None = None, rephrase_advice: bool = False) -> None:
        self.speech = speech
        self.advisor = advisor
        self.router = router
        self._chat_model = chat_model
        self.rephrase_advice = rephrase_advice

    @property
    def chat_model(self) -> str:
        """The model (or route) assistant mode talks to: the one given, else the default chat model."""
        if self._chat_model:
            return self._chat_model
        return self.speech.router.default_model("chat").id

    def writes(self, language: str) -> bool:
        """Whether the chat model writes `language` (a route counts as multilingual: unknown)."""
        spec = self.router.catalog.get(self.chat_model)
        return spec is None or language in spec.languages or "multilingual" in spec.languages

    def hearing_prompt(self, mode: str, language: str | None, *, crop: str | None = None,
                       topic: str | None = None) -> str | None:
        """Whisper's prompt for a question: the crop vocabulary when it is a farmer's (advice
        mode, a chosen crop, or topic "crops"), else none."""
        if mode == "advice" or crop or topic == "crops":
            return crop_hearing_prompt(self.advisor.entries, language)
        return None

    def models_for(self, mode: str, language: str) -> list[str]:
        """The model names an answer in `mode` may use, for a key's allowlist check."""
        names = [self.speech.transcriber_for(language)]
        if mode == "assistant" and language != "th":
            names.append(self.chat_model)
        else:
            names.append(self.advisor.embed_model)
            if self.rephrase_advice and self.advisor.llm_model:
                names.append(self.advisor.llm_model)
        voice = self.speech.voice_model_for(language) if language in ("en", "th") else None
        if voice is not None:
            names.append(voice.id)
        return names

    async def answer(self, question: str, *, mode: str = "advice", language: str | None = None,
                     crop: str | None = None, speak: bool = True, voice: str | None = None, fmt: str = "wav",
                     caller: Caller | None = None, heard: Heard | None = None) -> AsyncIterator[VoiceEvent]:
        """Answer `question` (already heard) sentence by sentence; see the module docstring.

        `language` is the spoken language if known ("en"/"th"), else it is detected from the text.
        `heard`: the transcription the question came from. When Whisper's signals doubt it
        (`speech.doubt`), or the advisor matched it to nothing, the answer is only "I did not
        catch that, please say it again" in the farmer's language, with a `not_understood`
        notice: nothing is advised or generated from that speech.
        Cancelling the consumer (closing the generator) cancels generation and synthesis.
        """
        if mode not in MODES:
            raise InvalidRequest(f"Unknown mode '{mode}'. Use 'assistant' or 'advice'.", param="mode")
        started = time.perf_counter()
        lang: Language = language if language in ("en", "th") else detect_language(question)  # type: ignore[assignment]
        notices: list[Notice] = []
        spoken_question = heard is not None
        if heard is not None and doubt(heard) is not None:
            # Whisper's own signals doubt the transcript: nothing is asked of the models.
            mode = "not_caught"
            notices.append(Notice("not_understood", not_caught(lang)))
        if mode == "assistant" and not self.writes(lang):
            notices.append(Notice("assistant_language", (
                f"The assistant model ({self.chat_model}) does not write "
                f"{'Thai' if lang == 'th' else lang}, so the crop advisor answered instead. "
                "ผู้ช่วยตอบภาษาไทยไม่ได้ คำตอบนี้มาจากระบบแนะนำการปลูกพืช")))
            mode = "advice"
        voice_model: str | None = None
        if speak:
            try:
                voice_model = self.speech.require_voice(lang)
            except NoVoice as exc:
                notices.append(Notice("no_voice", exc.message))
        for notice in notices:
            yield notice

        result: dict[str, object] = {"spoken": spoken_question}

        async def say(sentence: str) -> Spoken | None:
            text = speakable(sentence)
            if not text:
                return None
            spoken = await self.speech.speak(text, language=lang, model=voice_model, voice=voice, fmt=fmt,
                                             caller=caller)
            usage.record(audio_seconds=spoken.seconds)
            return spoken

        # Each sentence is shown the moment it exists and spoken in a second task
        # (kaset.pipelines.speaking), so the text never waits for the voice.
        written = self._sentences(question, mode, lang, crop, caller, result)
        sentences: list[str] = []
        first_text: float | None = None
        first_audio: float | None = None
        text_done = time.perf_counter()
        async for event in speak_while_writing(written, _one_sentence, list, say if voice_model is not None else None):
            if isinstance(event, Written):
                first_text = first_text if first_text is not None else time.perf_counter() - started
                sentences.append(event.item)
                yield Delta(len(sentences) - 1, event.item)
            elif isinstance(event, SpokenSentence):
                first_audio = first_audio if first_audio is not None else time.perf_counter() - started
                yield Audio(event.index, event.audio)
            else:
                text_done = time.perf_counter()
        if not sentences:
            raise UpstreamError("The model gave an empty answer. Ask again, in other words.", code="empty_answer")
        advice = result.get("advice")
        understood = not result.get("not_understood")
        if not understood and not any(n.code == "not_understood" for n in notices):
            notice = Notice("not_understood", sentences[0])  # the advisor matched the speech to nothing
            notices.append(notice)
            yield notice
        yield Answered(
            answer=" ".join(sentences), sentences=sentences, language=lang,
            path=advice.path if isinstance(advice, Advice) else "assistant" if understood else "curated",
            model=(advice.llm_model if isinstance(advice, Advice) else str(result.get("model") or "")) or None,
            advice=advice if isinstance(advice, Advice) else None, notices=notices,
            first_text_s=first_text, first_audio_s=first_audio, text_s=text_done - started, understood=understood)

    async def _sentences(self, question: str, mode: str, language: Language, crop: str | None,
                         caller: Caller | None, result: dict[str, object]) -> AsyncIterator[str]:
        if mode == "advice":
            advice = await self.advisor.advise(AdviceQuery(question=question, language=language, crop=crop,
                                                            use_llm=self.rephrase_advice))
            if not advice.understood and result.get("spoken"):
                mode = "not_caught"  # the advisor matched the spoken question to nothing
            else:
                result["advice"] = advice
                for sentence in split_sentences(advice.answer):
                    yield sentence
                return
        if mode == "not_caught":
            result["not_understood"] = True
            yield not_caught(language)
            return
        async for sentence in self._assistant(question, caller, result):
            yield sentence

    async def _assistant(self, question: str, caller: Caller | None,
                         result: dict[str, object]) -> AsyncIterator[str]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        params = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.3)
        # The stream lives inside `router.call`'s callback (the model is held for its length), so
        # sentences cross over through a queue to this generator.
        out: asyncio.Queue[str | Finished] = asyncio.Queue()

        async def run(model: ModelHandle) -> None:
            cutter = SentenceCutter()
            last: GenerationChunk | None = None
            chunks = model.chat_stream(messages, params)
            try:
                async for chunk in chunks:
                    last = chunk
                    for sentence in cutter.feed(chunk.text):
                        await out.put(sentence)
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
            for sentence in cutter.finish():
                await out.put(sentence)
            if last is not None:
                usage.record(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                             model=model.spec.id)
            result["model"] = model.spec.id

        async def call() -> None:
            await self.router.call(self.chat_model, "chat", run, caller=caller)

        task = asyncio.create_task(report_end(call(), out))
        try:
            while True:
                item = await out.get()
                if isinstance(item, Finished):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _one_sentence(sentence: str) -> list[str]:
    return [sentence]  # the assistant's and the advisor's text already comes a sentence at a time


@dataclass
class VoiceReply:
    """A whole answer, collected (for the one-call endpoint)."""

    answered: Answered
    audio: bytes | None
    audio_format: str
    audio_seconds: float
    speech_model: str | None
    voice: str | None


async def collect(events: AsyncIterator[VoiceEvent], fmt: str = "wav") -> VoiceReply:
    """Run an answer to the end and join its sentences' speech into one file of `fmt`.

    The events must have been asked for as `fmt="pcm"` (raw samples join; files do not)."""
    from kaset.media.audio import encode_audio

    pieces: dict[int, Spoken] = {}
    answered: Answered | None = None
    async for event in events:
        if isinstance(event, Audio):
            pieces[event.index] = event.spoken
        elif isinstance(event, Answered):
            answered = event
    if answered is None:  # pragma: no cover - `answer` always ends with Answered or raises
        raise ModelUnavailable("The voice assistant ended without an answer.")
    if not pieces:
        return VoiceReply(answered, None, fmt, 0.0, None, None)
    ordered = [pieces[i] for i in sorted(pieces)]
    pcm = b"".join(p.audio for p in ordered)
    rate = ordered[0].sample_rate
    data = await asyncio.to_thread(encode_audio, pcm, rate, fmt)
    return VoiceReply(answered, data, fmt, sum(p.seconds for p in ordered), ordered[0].model, ordered[0].voice)


async def close_quietly(events: AsyncIterator[VoiceEvent]) -> None:
    """Close an answer generator (cancels its model work); errors on the way out are not news."""
    with contextlib.suppress(Exception):
        await events.aclose()  # type: ignore[attr-defined]

