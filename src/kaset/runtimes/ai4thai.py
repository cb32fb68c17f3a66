"""Thai speech and English→Thai translation served by AI4Thai (NECTEC's API platform).

Kaset has no offline model for Thai speech or for translating into Thai, so a catalog entry
can hand those tasks to AI4Thai: one runtime implements the three contracts, and the entry's
`tasks:` picks which of them it serves. The HTTP plumbing (loop thread, session, key, error
mapping) is `kaset.runtimes.provider.ProviderClient`'s.

No official API reference was reachable from here: the shapes below are those of
third-party clients of the service (the `aift` Python package and open-source VAJA/Partii
clients), so the reply fields are read tolerantly and the paths are params.

- Every call carries the key in an `Apikey: <key>` header (never in a URL).
- TTS "VAJA": `POST {base_url}{tts_path}` (default `/vaja`; older clients use
  `/vaja9/synth_audiovisual`) with JSON `{"text", "speaker"}`, or, in the older style
  (`tts_request: input_text`, the default when the path contains "vaja9"), `{"input_text",
  "speaker", "phrase_break": 0, "audiovisual": 0}`. The reply is either the audio itself or
  JSON naming a URL of the audio (`wav_url`, `audio_url`, `url`, possibly nested under
  `data`), fetched with a GET that carries the key only to AI4Thai's own hosts (see
  `audio_key_hosts`). The audio (WAV, or anything `kaset.media.audio` decodes) is resampled
  to 16 kHz mono, the rate this runtime declares for every voice. The service caps the text
  of one call, so longer input is cut at Thai sentence boundaries (PyThaiNLP) into pieces of
  at most `tts_max_chars` and spoken one request per piece, yielded as each is ready.
- ASR "Partii": `POST {base_url}{asr_path}` (default `/partii-webapi`), multipart/form-data
  with the audio as a 16 kHz mono 16-bit WAV in the field `wavfile` (plus `asr_fields`, by
  default `outputlevel=--uttlevel`, `outputformat=--txt`). The reply is JSON with the text
  in `text`, `transcript`, `data`, `result` or `message` (looked up in that order; a string,
  a list of strings, or an object holding one);
  any reply with HTTP 200 whose `status` or `msg` says it failed ("error", "fail...", a 4xx/5xx
  code) is an upstream error.
- Translation "Xiaofan" (en→th only): `GET {base_url}{translate_path}/{url-encoded text}`
  (default `/xiaofan-en-th`), reply JSON with the Thai in `translated`, `translated_text`,
  `output`, `translation` or `result`. The text travels in the URL path, so a long text is
  cut at sentence ends into pieces of at most `translate_max_chars`.

Errors map as for every provider (`ProviderClient._error_for`): 401/403 → upstream auth
failure, 429 → rate limited (with Retry-After), 5xx → upstream error, no answer within
`timeout_s` → upstream timeout. Adapters do not retry (the aift client loops on any non-200
until it succeeds; a gateway must not).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import aiohttp
import numpy as np
from yarl import URL

from kaset.errors import InvalidRequest, KasetError, ModelUnavailable, UpstreamError
from kaset.media.audio import ASR_SAMPLE_RATE, decode_audio, encode_audio, sniff_container
from kaset.runtimes.base import (
    SAMPLE_RATE_ASR,
    Segment,
    Synthesizer,
    TranscribeOptions,
    Transcriber,
    Transcription,
    Translator,
    Voice,
)
from kaset.runtimes.provider import ProviderClient, UpstreamErrorInfo

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.aiforthai.in.th"
DEFAULT_TTS_PATH = "/vaja"
DEFAULT_ASR_PATH = "/partii-webapi"
DEFAULT_TRANSLATE_PATH = "/xiaofan-en-th"
DEFAULT_TTS_MAX_CHARS = 200
DEFAULT_TRANSLATE_MAX_CHARS = 1000
DEFAULT_MAX_AUDIO_SECONDS = 600.0
DEFAULT_MAX_PARALLEL = 4
# The speakers third-party clients of `/vaja` offer (the first is their default), and the
# numbered speakers of the older `/vaja9` style (the aift package sends 0).
DEFAULT_VOICES = ("noina", "nana", "farah", "mewzy", "farsai", "prim", "ped", "poom", "doikham", "praw",
                  "wayu", "namphueng", "toon", "sanooch", "thanwa")
DEFAULT_LEGACY_VOICES = ("0", "1", "2", "3")
DEFAULT_ASR_FIELDS = {"outputlevel": "--uttlevel", "outputformat": "--txt"}
# Hosts (and their subdomains) that get the key when Kaset fetches an audio URL from a reply.
AI4THAI_DOMAIN = "aiforthai.in.th"

KEY_HEADER = "Apikey"
# The speech this runtime yields: whatever the service sends is resampled to this rate.
SAMPLE_RATE = ASR_SAMPLE_RATE
MAX_REPLY_BYTES = 1024 * 1024
MAX_AUDIO_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3

AUDIO_URL_FIELDS = ("wav_url", "audio_url", "url", "wav", "audio", "data", "result")
# Looked up in this order; "message" comes last because some replies use it for "success".
ASR_TEXT_FIELDS = ("text", "transcript", "data", "result", "message")
TRANSLATION_FIELDS = ("translated", "translated_text", "translation", "output", "result", "data", "text")
# A `status` (or `msg`) in a 200 reply that says the call failed; anything else is taken as success.
FAILURE_PREFIXES = ("err", "fail", "invalid", "unauthori", "forbidden", "denied", "false")

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


class AI4ThaiRuntime(ProviderClient, Transcriber, Synthesizer, Translator):
    """params, besides ProviderClient's (base_url defaults to https://api.aiforthai.in.th,
    and a key, api_key_env or api_key_file, is required):

    tts_path (default /vaja), tts_request ("text" or "input_text", see the module docstring),
    voices (the speaker ids offered, the first is the default), voice_aliases (other names,
    such as OpenAI's voices, meaning the default speaker), tts_max_chars (longest text sent
    in one call, default 200), max_audio_seconds (longest audio accepted back, default 600),
    audio_key_hosts (hosts that get the key when fetching an audio URL; default the
    base_url's host and aiforthai.in.th), asr_path (default /partii-webapi), asr_fields (extra
    form fields), translate_path (default /xiaofan-en-th), translate_max_chars (default
    1000), max_parallel (translation calls in flight for one batch, default 4).
    """

    provider: ClassVar[str] = "ai4thai"

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        self.base_url = str(self.params.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.tts_path = _path(self.params.get("tts_path", DEFAULT_TTS_PATH))
        style = self.params.get("tts_request") or ("input_text" if "vaja9" in self.tts_path else "text")
        self.tts_request = str(style)
        default_voices = DEFAULT_LEGACY_VOICES if self.tts_request == "input_text" else DEFAULT_VOICES
        self.voice_ids = [str(v) for v in self.params.get("voices") or default_voices]
        self.voice_aliases = [str(a) for a in self.params.get("voice_aliases", [])]
        self.tts_max_chars = int(self.params.get("tts_max_chars", DEFAULT_TTS_MAX_CHARS))
        self.max_audio_seconds = float(self.params.get("max_audio_seconds", DEFAULT_MAX_AUDIO_SECONDS))
        hosts = self.params.get("audio_key_hosts")
        self.audio_key_hosts = [str(h).lower() for h in hosts] if hosts is not None else \
            [h for h in (URL(self.base_url).host, AI4THAI_DOMAIN) if h]
        self.asr_path = _path(self.params.get("asr_path", DEFAULT_ASR_PATH))
        self.asr_fields = {str(k): str(v) for k, v in dict(self.params.get("asr_fields", DEFAULT_ASR_FIELDS)).items()}
        self.translate_path = _path(self.params.get("translate_path", DEFAULT_TRANSLATE_PATH))
        self.translate_max_chars = int(self.params.get("translate_max_chars", DEFAULT_TRANSLATE_MAX_CHARS))
        self.max_parallel = int(self.params.get("max_parallel", DEFAULT_MAX_PARALLEL))

    def _check_more_params(self) -> None:
        who = f"Model '{self.spec.id}'"
        if not (self.params.get("api_key_env") or self.params.get("api_key_file")):
            raise ModelUnavailable(f"{who}: AI4Thai needs an API key. Name an environment variable "
                                   "(params.api_key_env) or a file (params.api_key_file) that holds it.")
        if self.tts_request not in ("text", "input_text"):
            raise ModelUnavailable(f"{who}: params.tts_request must be 'text' or 'input_text'.")
        if not self.voice_ids:
            raise ModelUnavailable(f"{who}: params.voices is empty.")
        if self.tts_max_chars < 20 or self.translate_max_chars < 20:
            raise ModelUnavailable(f"{who}: params.tts_max_chars and translate_max_chars must be at least 20.")
        if self.max_parallel < 1 or self.max_audio_seconds <= 0:
            raise ModelUnavailable(f"{who}: params.max_parallel and max_audio_seconds must be positive.")

    def _headers(self) -> dict[str, str]:
        return {KEY_HEADER: self._api_key} if self._api_key else {}

    def _url(self, path: str) -> str:
        return self.base_url + path

    # --- transcribe (Partii) -------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> Transcription:
        if options.task == "translate":
            raise InvalidRequest(f"Model '{self.spec.id}' (AI4Thai Partii) transcribes Thai speech; it cannot "
                                 "translate speech into English.", param="model")
        language = (options.language or "").strip().lower()
        if language not in ("", "th", "tha"):
            raise InvalidRequest(f"Model '{self.spec.id}' (AI4Thai Partii) understands Thai only; language "
                                 f"'{options.language}' is not supported.", param="language")
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            raise InvalidRequest("The audio is empty.", param="file")
        wav = encode_audio(_pcm16(samples), SAMPLE_RATE_ASR, "wav")
        reply = self._call(self._post_wav(wav))
        text = self._text_field(reply, ASR_TEXT_FIELDS, "a transcript")
        duration = samples.size / SAMPLE_RATE_ASR
        segments = [Segment(id=0, start=0.0, end=duration, text=text)] if text else []
        return Transcription(text=text, language="th", duration=duration, segments=segments)

    async def _post_wav(self, wav: bytes) -> dict[str, Any]:
        form = aiohttp.FormData()
        for name, value in self.asr_fields.items():
            form.add_field(name, value)
        form.add_field("wavfile", wav, filename="audio.wav", content_type="audio/wav")
        async with self._open("POST", self._url(self.asr_path), data=form, allow_redirects=False) as response:
            return self._json_object(await self._body(response, MAX_REPLY_BYTES))

    # --- synthesize (VAJA) ---------------------------------------------------------------------

    def voices(self) -> list[Voice]:
        return [Voice(id=v, language="th", name=f"{v} (AI4Thai VAJA)") for v in self.voice_ids]

    def resolve_voice(self, voice: str | None) -> str:
        """The speaker id for a voice id or alias; None or blank is the default speaker."""
        if voice is None or not voice.strip():
            return self.voice_ids[0]
        wanted = voice.strip().lower()
        for speaker in self.voice_ids:
            if speaker.lower() == wanted:
                return speaker
        if wanted in (a.lower() for a in self.voice_aliases):
            return self.voice_ids[0]
        raise InvalidRequest(f"Model '{self.spec.id}' has no voice '{voice}'. Valid voices: "
                             f"{', '.join([*self.voice_ids, *self.voice_aliases])}.", param="voice")

    def sample_rate(self, voice: str | None) -> int:
        self.resolve_voice(voice)
        return SAMPLE_RATE

    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[bytes]:
        # Validate eagerly, so a bad request fails when called, not on the first chunk.
        speaker = self.resolve_voice(voice)
        if not text.strip():
            raise InvalidRequest("The input text is empty.", param="input")
        if abs(speed - 1.0) > 1e-6:
            raise InvalidRequest(f"Model '{self.spec.id}' (AI4Thai VAJA) speaks at one speed; send speed 1.0.",
                                 param="speed")
        self._loop()  # not loaded: fail now
        return self._speak(split_for_speech(text, self.tts_max_chars), speaker)

    def _speak(self, pieces: list[str], speaker: str) -> Iterator[bytes]:
        # A call is a POST and a GET of the audio (plus redirects), each bounded by timeout_s.
        wait_s = (2 + MAX_REDIRECTS) * self.timeout_s
        for piece in pieces:
            audio = self._call(self._synthesize_piece(piece, speaker), wait_s=wait_s)
            yield self._decode(audio)

    def _tts_body(self, text: str, speaker: str) -> dict[str, Any]:
        if self.tts_request == "input_text":
            return {"input_text": text, "speaker": int(speaker) if speaker.isdigit() else speaker,
                    "phrase_break": 0, "audiovisual": 0}
        return {"text": text, "speaker": speaker}

    async def _synthesize_piece(self, text: str, speaker: str) -> bytes:
        async with self._open("POST", self._url(self.tts_path), json=self._tts_body(text, speaker),
                              allow_redirects=False) as response:
            body = await self._body(response, MAX_AUDIO_BYTES)
            json_reply = "json" in response.content_type or body.lstrip()[:1] == b"{"
        if not json_reply and sniff_container(body) is not None:
            return body  # the audio itself
        reply = self._json_object(body)
        self._check_status(reply)
        url = _find_url(reply)
        if url is None:
            raise self._bad_reply(f"a speech reply with no audio URL (fields: {', '.join(sorted(reply))})")
        return await self._download(URL(self.base_url).join(URL(url)))

    async def _download(self, url: URL) -> bytes:
        """GET an audio URL from a reply. The key goes only to AI4Thai's own hosts, and
        redirects are followed here (at most MAX_REDIRECTS) so that rule holds for each hop."""
        for _ in range(MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https"):
                raise self._bad_reply("an audio URL that is not http(s)")
            headers = self._headers() if self._key_host(url.host) else {}
            async with self._open("GET", url, headers=headers, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if 300 <= response.status < 400 and location:
                    url = url.join(URL(location))
                    continue
                return await self._body(response, MAX_AUDIO_BYTES)
        raise self._bad_reply(f"more than {MAX_REDIRECTS} redirects for the audio")

    def _key_host(self, host: str | None) -> bool:
        host = (host or "").lower()
        return any(host == allowed or host.endswith("." + allowed) for allowed in self.audio_key_hosts)

    def _decode(self, audio: bytes) -> bytes:
        """Mono s16le PCM at SAMPLE_RATE from whatever audio file the service sent."""
        try:
            samples, _ = decode_audio(audio, self.max_audio_seconds)
        except KasetError as exc:  # about the provider's audio, not the client's request
            raise self._bad_reply(f"audio that cannot be used ({exc.message})") from None
        return _pcm16(samples)

    # --- translate (Xiaofan) -------------------------------------------------------------------

    def pairs(self) -> list[tuple[str, str]]:
        return [("en", "th")]

    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        src, tgt = source.strip().lower(), target.strip().lower()
        if (src, tgt) != ("en", "th"):
            raise InvalidRequest(
                f"Model '{self.spec.id}' (AI4Thai Xiaofan) translates English to Thai only (en→th), not "
                f"{source}→{target}.", param="source" if src != "en" else "target")
        results = list(texts)  # blank texts come back as they are
        todo = [(i, t.strip()) for i, t in enumerate(texts) if t.strip()]
        if not todo:
            return results
        pieces = [split_for_url(core, self.translate_max_chars) for _, core in todo]
        flat = [p for ps in pieces for p in ps]
        rounds = math.ceil(len(flat) / self.max_parallel)
        outs = iter(self._call(self._translate_all(flat), wait_s=rounds * self.timeout_s))
        for (i, _), ps in zip(todo, pieces, strict=True):
            # Thai separates sentences with a space.
            results[i] = " ".join(next(outs) for _ in ps)
        return results

    async def _translate_all(self, texts: list[str]) -> list[str]:
        slots = asyncio.Semaphore(self.max_parallel)

        async def one(text: str) -> str:
            async with slots:
                return await self._translate_one(text)

        return list(await asyncio.gather(*(one(t) for t in texts)))

    async def _translate_one(self, text: str) -> str:
        url = URL(self._url(self.translate_path) + "/" + quote(text, safe=""), encoded=True)
        async with self._open("GET", url, allow_redirects=False) as response:
            reply = self._json_object(await self._body(response, MAX_REPLY_BYTES))
        return self._text_field(reply, TRANSLATION_FIELDS, "a translation")

    # --- replies -------------------------------------------------------------------------------

    async def _body(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        """The body of a 2xx reply, at most `limit` bytes; anything else is the provider's fault."""
        if not 200 <= response.status < 300:
            raise self._bad_reply(f"an unexpected HTTP {response.status} reply (redirects are not followed with "
                                  "the key)")
        parts: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise self._bad_reply(f"a reply larger than {limit // 1024} KiB")
            parts.append(chunk)
        return b"".join(parts)

    def _json_object(self, body: bytes) -> dict[str, Any]:
        try:
            reply = json.loads(body.decode("utf-8", errors="replace"))
        except ValueError:
            raise self._bad_reply("a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise self._bad_reply("a JSON reply that is not an object")
        return reply

    def _check_status(self, reply: dict[str, Any]) -> None:
        """Refuse a reply with HTTP 200 whose `status` or `msg` says the call failed."""
        status = next((v for v in (reply.get("status"), reply.get("msg")) if _failed(v)), None)
        if status is None:
            return
        info = self._parse_error(reply)
        message = self.scrub(info.message or str(status))
        log.warning("%s %s: %s answered status %s: %s", self.provider, self.spec.id, self.base_url,
                    self.scrub(str(status)), message)
        raise UpstreamError(f"{self._who()} failed: {message}")

    def _text_field(self, reply: dict[str, Any], names: tuple[str, ...], what: str) -> str:
        self._check_status(reply)
        text = _find_text(reply, names)
        if text is None:
            raise self._bad_reply(f"a reply with no {what} (fields: {', '.join(sorted(reply))})")
        return text

    def _parse_error(self, body: Any) -> UpstreamErrorInfo:
        # Shapes seen: {"message": ...}, {"msg": ...}, {"detail": ...}, {"error": "..."|{"message"}}.
        if not isinstance(body, dict):
            return UpstreamErrorInfo()
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        for value in (error, body.get("message"), body.get("msg"), body.get("detail")):
            if isinstance(value, str) and value.strip():
                return UpstreamErrorInfo(message=value)
        return UpstreamErrorInfo()


# --- helpers -----------------------------------------------------------------------------------


def _path(value: Any) -> str:
    path = str(value or "").strip()
    return "/" + path.strip("/") if path.strip("/") else ""


def _failed(status: Any) -> bool:
    if isinstance(status, bool):
        return not status
    if isinstance(status, int):
        return status >= 400
    if isinstance(status, str):
        word = status.strip().lower()
        return word.startswith(FAILURE_PREFIXES) or (word.isdigit() and int(word) >= 400)
    return False


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _find_url(reply: dict[str, Any]) -> str | None:
    for name in AUDIO_URL_FIELDS:
        value = reply.get(name)
        if isinstance(value, str) and (value.startswith(("http://", "https://", "/"))):
            return value
        if isinstance(value, dict):
            found = _find_url(value)
            if found is not None:
                return found
    return None


def _find_text(reply: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = reply.get(name)
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return " ".join(v.strip() for v in value if v.strip())
        if isinstance(value, dict):
            found = _find_text(value, names)
            if found is not None:
                return found
    return None


def _pack(pieces: Iterator[str] | list[str], limit: int, joiner: str) -> list[str]:
    """Consecutive pieces (each at most `limit` long) joined into runs of at most `limit`."""
    runs: list[str] = []
    current = ""
    for piece in pieces:
        if not piece:
            continue
        if current and len(current) + len(joiner) + len(piece) <= limit:
            current += joiner + piece
        else:
            if current:
                runs.append(current)
            current = piece
    if current:
        runs.append(current)
    return runs


def _hard_cut(text: str, limit: int) -> Iterator[str]:
    for start in range(0, len(text), limit):
        yield text[start:start + limit]


def split_for_speech(text: str, limit: int) -> list[str]:
    """Thai (or any) text in pieces of at most `limit` characters, cut at sentence boundaries
    (PyThaiNLP's sentence segmenter), then between words, then anywhere."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return [text]
    from pythainlp.tokenize import sent_tokenize, word_tokenize

    pieces: list[str] = []
    for found in sent_tokenize(text, engine=_sentence_engine()):
        sentence = str(found).strip()
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        words = word_tokenize(sentence, engine="newmm", keep_whitespace=True)
        cut = (part for word in words for part in _hard_cut(word, limit))
        pieces.extend(run.strip() for run in _pack(list(cut), limit, ""))
    return _pack(pieces, limit, " ")


def split_for_url(text: str, limit: int) -> list[str]:
    """English text in pieces of at most `limit` characters, cut after sentence punctuation,
    then at spaces, then anywhere."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        words = (part for word in sentence.split(" ") for part in _hard_cut(word, limit))
        pieces.extend(_pack(list(words), limit, " "))
    return _pack(pieces, limit, " ")


def _sentence_engine() -> str:
    """PyThaiNLP's default sentence segmenter (CRFCut) needs python-crfsuite, which Kaset does
    not require; without it, Thai text is cut at its spaces, where Thai ends sentences and
    clauses (the pieces are packed back up to the limit, so little is lost)."""
    return "crfcut" if importlib.util.find_spec("pycrfsuite") is not None else "whitespace+newline"

