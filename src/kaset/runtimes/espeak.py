"""eSpeak NG, the formant synthesizer, run as the `espeak-ng` program.

One process per request: espeak-ng starts in milliseconds and a crash cannot take the
gateway down. Text goes in on stdin, never on the command line, where text starting
with "-" would be read as an option. The WAV comes back on stdout as it is synthesized,
so the first chunk is sent before the whole text is spoken.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from kaset.errors import InvalidRequest, ModelUnavailable
from kaset.runtimes.base import Synthesizer, Voice

ESPEAK = "espeak-ng"
SAMPLE_RATE = 22_050  # espeak-ng always writes 22.05 kHz mono 16-bit
BASE_WPM = 175  # espeak-ng's default rate, i.e. speed 1.0
MIN_WPM, MAX_WPM = 80, 450
READ_SIZE = 8192  # bytes read from stdout at a time: ~0.2 s of speech
LIST_TIMEOUT = 10.0


@dataclass
class _EspeakVoice:
    code: str  # the language code espeak-ng selects the voice by ("en-us")
    name: str
    # Other language codes this voice speaks, with espeak-ng's priority (lower is preferred).
    other_languages: list[tuple[str, int]]


class EspeakRuntime(Synthesizer):
    _voices: list[Voice] | None = None
    _lookup: dict[str, str] | None = None
    _excluded: frozenset[str] | set[str] = frozenset()

    def load(self) -> None:
        if shutil.which(ESPEAK) is None:
            raise ModelUnavailable(f"{ESPEAK} is not installed. Install it with: apt-get install -y {ESPEAK}")
        parsed = _parse_voice_list(_run_voice_list())
        excluded = {str(code).lower() for code in self.params.get("exclude_languages", [])}
        kept = [v for v in parsed if _primary(v.code) not in excluded]
        if not kept:
            raise ModelUnavailable(f"{ESPEAK} reports no usable voices.")
        default = str(self.params.get("default_voice", kept[0].code)).lower()
        # The contract: the first voice is the default. A covered language the default speaks
        # ("en" for en-us) goes to the default too, so the default is consistent.
        kept.sort(key=lambda v: v.code != default)
        self._voices = [Voice(id=v.code, language=v.code, name=v.name) for v in kept]
        self._lookup = _lookup_table(kept)
        self._excluded = excluded

    def unload(self) -> None:
        self._voices = None
        self._lookup = None

    def warmup(self) -> None:
        for _ in self.synthesize("Hello.", None, 1.0):
            pass

    # --- voices -------------------------------------------------------------------------------

    def voices(self) -> list[Voice]:
        if self._voices is None:
            self.load()  # cheap (one `espeak-ng --voices`), so listing works before a request loads us
        assert self._voices is not None
        return list(self._voices)

    def resolve_voice(self, voice: str | None) -> str:
        """The espeak-ng voice code for a voice id, a language code it covers, or its name."""
        voices = self.voices()
        if voice is None or not voice.strip():
            return voices[0].id
        assert self._lookup is not None
        key = voice.strip().lower().replace("_", "-")
        found = self._lookup.get(key) or self._lookup.get(voice.strip().lower())
        if found is None and _primary(key) in self._excluded:
            raise InvalidRequest(
                f"Model '{self.spec.id}' does not offer '{voice}': espeak-ng's voice for that language "
                "is not offered on this server (its speech is unusable). Choose another model for it.",
                param="voice",
            )
        if found is None:
            raise InvalidRequest(
                f"Model '{self.spec.id}' has no voice '{voice}'. Valid voices: {', '.join(v.id for v in voices)}.",
                param="voice",
            )
        return found

    def sample_rate(self, voice: str | None) -> int:
        self.resolve_voice(voice)
        return SAMPLE_RATE

    # --- synthesis ----------------------------------------------------------------------------

    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[bytes]:
        # Validate eagerly, so a bad request fails when called, not on the first chunk.
        code = self.resolve_voice(voice)
        if not text.strip():
            raise InvalidRequest("The input text is empty.", param="input")
        if not 0.25 <= speed <= 4.0:
            raise InvalidRequest(f"speed must be between 0.25 and 4.0, got {speed}.", param="speed")
        timeout = float(self.params.get("timeout", _timeout_for(text, speed)))
        return _speak(text, code, words_per_minute(speed), timeout)


def words_per_minute(speed: float) -> int:
    return max(MIN_WPM, min(MAX_WPM, round(BASE_WPM * speed)))


def _timeout_for(text: str, speed: float) -> float:
    # Only a guard against a hung process, so generous: espeak-ng runs ~100x faster than
    # real time, but a slow client holds it back (it blocks on a full pipe), and speech
    # runs ~15 characters a second at speed 1. Allow three times real time, plus 30 s.
    return 30.0 + 3 * len(text) / 15.0 / speed


# --- the espeak-ng process ------------------------------------------------------------------


def _speak(text: str, code: str, wpm: int, timeout: float) -> Iterator[bytes]:
    """Yield the PCM of `text` as espeak-ng writes it; kill it on timeout or early close."""
    try:
        proc = subprocess.Popen(
            [ESPEAK, "-v", code, "-s", str(wpm), "--stdout"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise ModelUnavailable(f"Could not start {ESPEAK}: {exc}") from exc
    timed_out = threading.Event()
    watchdog = threading.Timer(timeout, _kill, args=(proc, timed_out))
    watchdog.daemon = True
    watchdog.start()
    # A separate writer: espeak-ng may fill stdout before reading all of stdin.
    writer = threading.Thread(target=_feed, args=(proc, text), daemon=True)
    writer.start()
    try:
        assert proc.stdout is not None
        yield from _pcm_from_wav_stream(proc.stdout, code)
        proc.wait()
        _check_exit(proc, timed_out, timeout)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.join(timeout=1.0)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _feed(proc: subprocess.Popen[bytes], text: str) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(text.encode("utf-8"))
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # espeak-ng died or was killed; the reader reports why


def _kill(proc: subprocess.Popen[bytes], timed_out: threading.Event) -> None:
    timed_out.set()
    proc.kill()


def _check_exit(proc: subprocess.Popen[bytes], timed_out: threading.Event, timeout: float) -> None:
    if timed_out.is_set():
        raise ModelUnavailable(f"espeak-ng did not finish within {timeout:.0f} s and was stopped.")
    if proc.returncode != 0:
        raise ModelUnavailable(f"espeak-ng failed (exit {proc.returncode}): {_stderr(proc)}")


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None:
        return ""
    return proc.stderr.read(2000).decode("utf-8", "replace").strip()


def _pcm_from_wav_stream(stdout: IO[bytes], code: str) -> Iterator[bytes]:
    """Strip the WAV header and yield the samples as they arrive.

    espeak-ng writes its header before it knows the length (the sizes say ~2 GiB), so
    the `wave` module's frame count is useless here; read the data chunk to EOF instead.
    """
    header = _read_exact(stdout, 12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        # espeak-ng prints errors (unknown voice, missing data) and exits 0 with no audio.
        raise ModelUnavailable(f"espeak-ng produced no audio for voice '{code}'.")
    _skip_to_data_chunk(stdout)
    carry = b""
    while block := stdout.read(READ_SIZE):
        block = carry + block
        cut = len(block) - len(block) % 2  # never split a 16-bit sample
        carry = block[cut:]
        if cut:
            yield block[:cut]


def _skip_to_data_chunk(stdout: IO[bytes]) -> None:
    while True:
        chunk_header = _read_exact(stdout, 8)
        if len(chunk_header) < 8:
            raise ModelUnavailable("espeak-ng wrote a WAV with no data chunk.")
        chunk_id = chunk_header[:4]
        (size,) = struct.unpack("<I", chunk_header[4:])
        if chunk_id == b"data":
            return
        body = _read_exact(stdout, size + size % 2)
        if chunk_id == b"fmt ":
            _check_wav_format(body)


def _check_wav_format(fmt_chunk: bytes) -> None:
    if len(fmt_chunk) < 16:
        raise ModelUnavailable("espeak-ng wrote a malformed WAV header.")
    _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if (channels, rate, bits) != (1, SAMPLE_RATE, 16):
        # Clients are told the rate before synthesis starts, so a different one is an error.
        raise ModelUnavailable(
            f"espeak-ng wrote {channels} channel(s) at {rate} Hz, {bits}-bit; Kaset expects "
            f"mono {SAMPLE_RATE} Hz 16-bit."
        )


def _read_exact(stdout: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        block = stdout.read(remaining)
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


# --- the voice list -------------------------------------------------------------------------


def _run_voice_list() -> str:
    try:
        result = subprocess.run([ESPEAK, "--voices"], capture_output=True, timeout=LIST_TIMEOUT, check=True, text=True)
    except (subprocess.SubprocessError, OSError) as exc:
        raise ModelUnavailable(f"Could not list the espeak-ng voices: {exc}") from exc
    return result.stdout


_OTHER_LANGUAGE = re.compile(r"\(([\w-]+) (\d+)\)")


def _parse_voice_list(listing: str) -> list[_EspeakVoice]:
    """Parse `espeak-ng --voices`: "Pty Language Age/Gender VoiceName File Other Languages"."""
    voices: list[_EspeakVoice] = []
    seen: set[str] = set()
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        code = fields[1].lower()
        if code in seen:  # e.g. two Cantonese voices share "yue"; espeak-ng picks the first
            continue
        seen.add(code)
        others = [(lang.lower(), int(pty)) for lang, pty in _OTHER_LANGUAGE.findall(" ".join(fields[5:]))]
        voices.append(_EspeakVoice(code=code, name=fields[3].replace("_", " "), other_languages=others))
    return voices


def _lookup_table(voices: list[_EspeakVoice]) -> dict[str, str]:
    """Names a client may send -> voice code: codes, display names, and covered languages.

    A covered language ("en", "fr", "zh") goes to the first voice, the default, if it covers
    it ("en" -> en-us); otherwise to the voice espeak-ng itself prefers for it, the lowest
    priority number ("fr" -> fr-fr, "zh" -> cmn).
    """
    table: dict[str, str] = {}
    best: dict[str, tuple[int, str]] = {lang: (-1, voices[0].code) for lang, _ in voices[0].other_languages}
    for voice in voices:
        for lang, priority in voice.other_languages:
            if lang not in best or priority < best[lang][0]:
                best[lang] = (priority, voice.code)
    for lang, (_, code) in best.items():
        table[lang] = code
    for voice in voices:
        table.setdefault(voice.name.lower(), voice.code)
        table[voice.code] = voice.code
    return table


def _primary(code: str) -> str:
    return code.split("-", 1)[0]
