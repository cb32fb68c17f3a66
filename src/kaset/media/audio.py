"""Audio in and out of the API: decode uploads for speech recognition, encode synthesized speech.

Decoding and encoding use PyAV, which bundles FFmpeg, so no system ffmpeg is needed.
Uploads are sniffed by their magic bytes before FFmpeg sees them: FFmpeg probes almost
anything as *some* format, and a clear 415 beats a confusing decode error.

Speech PCM everywhere in Kaset is mono signed 16-bit little-endian ("s16le").
"""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import av.audio.resampler
import numpy as np

from kaset.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

ASR_SAMPLE_RATE = 16_000

# Containers accepted for upload (aac means a raw ADTS stream).
SUPPORTED_INPUT_FORMATS: tuple[str, ...] = ("wav", "mp3", "flac", "ogg", "webm", "m4a", "aac")

# OpenAI's `response_format` values for speech, and what each is served as.
AUDIO_MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

# Also encodable, not OpenAI response formats: handy for tests and for clients that want them.
EXTRA_MEDIA_TYPES: dict[str, str] = {"webm": "audio/webm", "m4a": "audio/mp4"}


# --- sniffing -------------------------------------------------------------------------------


def sniff_container(data: bytes) -> str | None:
    """The container format named by the first bytes of `data`, or None if unrecognised."""
    head = data[:12]
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "m4a"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # ADTS shares MPEG audio's frame sync; its "layer" bits are always 00,
        # which MPEG audio reserves.
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None


# --- decoding -------------------------------------------------------------------------------


def decode_audio(data: bytes, max_seconds: float) -> tuple[np.ndarray, float]:
    """Decode an uploaded file to mono float32 PCM at 16 kHz; returns (samples, seconds).

    Raises InvalidRequest (empty, corrupt, no audio), UnsupportedMediaType (not a known
    container) or PayloadTooLarge (longer than `max_seconds`; decoding stops there).
    """
    if not data:
        raise InvalidRequest("The audio file is empty.", param="file")
    kind = sniff_container(data)
    if kind is None:
        raise UnsupportedMediaType(
            "The file is not a recognised audio format. Supported formats: " + ", ".join(SUPPORTED_INPUT_FORMATS) + ".",
            param="file",
        )
    max_samples = int(max_seconds * ASR_SAMPLE_RATE)
    try:
        samples = _decode_to_16k_mono(data, max_samples)
    except av.FFmpegError as exc:
        # strerror is FFmpeg's sentence ("Invalid data found when processing input") without errno noise.
        raise _undecodable(kind, exc.strerror or str(exc)) from None
    if samples.size == 0:
        raise _undecodable(kind, "no audio samples")
    return samples, samples.size / ASR_SAMPLE_RATE


def _undecodable(kind: str, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"Could not decode the audio: the file looks like {kind} but its content is not valid "
        f"({reason}). Is it corrupt or truncated?",
        param="file",
    )


def _decode_to_16k_mono(data: bytes, max_samples: int) -> np.ndarray:
    pieces: list[np.ndarray] = []
    total = 0
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise InvalidRequest("The file has no audio track.", param="file")
        stream = container.streams.audio[0]
        # Audio decoders gain nothing from threads; one keeps each request to its own core.
        stream.codec_context.thread_count = 1
        # One filter-graph thread: the default (0) starts a pool per graph, one thread a core,
        # that lives until the garbage collector breaks the graph's reference cycle.
        resampler = av.audio.resampler.AudioResampler(format="flt", layout="mono", rate=ASR_SAMPLE_RATE,
                                                      threads=1)
        for frame in _decoded_frames(container, stream):
            for out in resampler.resample(frame):
                total += _append(pieces, out, total, max_samples)
        for out in resampler.resample(None):
            total += _append(pieces, out, total, max_samples)
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.clip(np.concatenate(pieces), -1.0, 1.0)


def _decoded_frames(container: Any, stream: Any) -> Iterator[av.AudioFrame]:
    """Frames of `stream`, skipping packets the decoder rejects.

    Real recordings (browser MediaRecorder, phones) sometimes carry a damaged packet;
    faster-whisper skips those too. A file that is all damage yields nothing and is
    refused by the caller.
    """
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue
        yield from frames


def _append(pieces: list[np.ndarray], frame: av.AudioFrame, total: int, max_samples: int) -> int:
    samples = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    if total + samples.size > max_samples:
        seconds = max_samples / ASR_SAMPLE_RATE
        raise PayloadTooLarge(
            f"The audio is longer than the {seconds:g} s this server accepts. Split it into shorter files.",
            param="file",
        )
    pieces.append(samples)
    return int(samples.size)


# --- encoding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AvFormat:
    container: str
    codec: str
    # None keeps the input rate when the codec supports it.
    rate: int | None = None
    bit_rate: int | None = None
    # Whether the muxer can write without seeking back (needed to stream).
    streamable: bool = True
    options: dict[str, str] = field(default_factory=dict)


_AV_FORMATS: dict[str, _AvFormat] = {
    "mp3": _AvFormat("mp3", "libmp3lame", bit_rate=64_000),
    "flac": _AvFormat("flac", "flac"),
    # Opus runs at 48 kHz internally; encoding at 48k avoids a rate clients must re-guess.
    # The Ogg muxer holds a page back for 1 s by default; 200 ms pages keep streams live.
    "opus": _AvFormat("ogg", "libopus", rate=48_000, bit_rate=32_000, options={"page_duration": "200000"}),
    "aac": _AvFormat("adts", "aac", bit_rate=64_000),
    "webm": _AvFormat("webm", "libopus", rate=48_000, bit_rate=32_000),
    # MP4 writes its index after the data, seeking back: it cannot be streamed as is.
    "m4a": _AvFormat("ipod", "aac", bit_rate=64_000, streamable=False),
}

ENCODABLE_FORMATS: tuple[str, ...] = ("wav", "pcm", *_AV_FORMATS)


def encode_audio(pcm: bytes, sample_rate: int, fmt: str) -> bytes:
    """Encode mono s16le PCM as `fmt` (one of ENCODABLE_FORMATS) into a complete file."""
    pcm = _whole_samples(pcm)
    if fmt == "pcm":
        return pcm
    if fmt == "wav":
        return _wav_bytes(pcm, sample_rate)
    spec = _av_format(fmt)
    out = io.BytesIO()  # seekable, so muxers finish their headers (FLAC length, MP3 Xing)
    encoder = _AvEncoder(spec, sample_rate, out)
    encoder.write(pcm)
    encoder.close()
    return out.getvalue()


def _whole_samples(pcm: bytes) -> bytes:
    return pcm[: len(pcm) - len(pcm) % 2]


def _av_format(fmt: str) -> _AvFormat:
    try:
        return _AV_FORMATS[fmt]
    except KeyError:
        raise InvalidRequest(
            f"Unsupported audio format '{fmt}'. Choose one of: {', '.join(ENCODABLE_FORMATS)}.",
            param="response_format",
        ) from None


def _wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()


def _streaming_wav_header(sample_rate: int) -> bytes:
    """A WAV header whose sizes say "unknown" (0xFFFFFFFF), as OpenAI's streamed WAV does."""
    unknown = 0xFFFFFFFF
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt_chunk))
        + fmt_chunk
        + b"data"
        + struct.pack("<I", unknown)
    )


class _Sink:
    """A write-only file: PyAV sees no seek(), so muxers never go back and rewrite."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _AvEncoder:
    """One PyAV output container with one mono audio stream, fed s16le PCM."""

    def __init__(self, spec: _AvFormat, sample_rate: int, out: Any) -> None:
        self._in_rate = sample_rate
        # flush_packets: hand each packet to `out` at once instead of filling a 32 KiB buffer.
        self._container = av.open(
            out, mode="w", format=spec.container, container_options={"flush_packets": "1", **spec.options}
        )
        stream: Any = self._container.add_stream(spec.codec, rate=_output_rate(spec, sample_rate))
        stream.layout = "mono"
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        self._stream = stream
        self._closed = False

    def write(self, pcm: bytes) -> None:
        pcm = _whole_samples(pcm)
        if not pcm:
            return
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self._in_rate
        # No pts: the codec's own resampler and FIFO number the frames it re-chunks.
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()

    def abort(self) -> None:
        """Release FFmpeg resources without finishing the file (the client went away)."""
        if not self._closed:
            self._closed = True
            self._container.close()


def _output_rate(spec: _AvFormat, sample_rate: int) -> int:
    if spec.rate is not None:
        return spec.rate
    rates = av.Codec(spec.codec, "w").audio_rates
    if not rates or sample_rate in rates:
        return sample_rate
    higher = [r for r in rates if r >= sample_rate]
    return min(higher) if higher else max(rates)


# --- streaming ------------------------------------------------------------------------------


class StreamingEncoder:
    """Encode PCM chunks as they arrive, returning the bytes ready to send after each one.

    wav streams a header with unknown sizes and then raw frames; pcm passes through;
    mp3, opus (Ogg), aac (ADTS), flac and webm are encoded incrementally (encoders hold
    back a frame or so, so a chunk's bytes may come out with the next one). m4a cannot be
    written without seeking, so it is buffered and encoded whole by `finish()`.
    A streamed flac lacks the total length in its header, which players tolerate.
    """

    def __init__(self, sample_rate: int, fmt: str) -> None:
        self.fmt = fmt
        self.sample_rate = sample_rate
        self._header_sent = False
        self._buffered: list[bytes] = []
        self._sink: _Sink | None = None
        self._encoder: _AvEncoder | None = None
        self._carry = b""
        if fmt in ("wav", "pcm"):
            return
        spec = _av_format(fmt)
        if spec.streamable:
            self._sink = _Sink()
            self._encoder = _AvEncoder(spec, sample_rate, self._sink)

    def feed(self, pcm: bytes) -> bytes:
        pcm = self._carry + pcm
        self._carry = pcm[len(pcm) - len(pcm) % 2 :]
        pcm = pcm[: len(pcm) - len(self._carry)]
        if self.fmt == "pcm":
            return pcm
        if self.fmt == "wav":
            return self._wav_header() + pcm
        if self._encoder is None or self._sink is None:
            self._buffered.append(pcm)
            return b""
        self._encoder.write(pcm)
        return self._sink.drain()

    def finish(self) -> bytes:
        """The remaining bytes: encoder flush and container trailer."""
        if self.fmt == "pcm":
            return b""
        if self.fmt == "wav":
            return self._wav_header()
        if self._encoder is None or self._sink is None:
            return encode_audio(b"".join(self._buffered), self.sample_rate, self.fmt)
        self._encoder.close()
        return self._sink.drain()

    def abort(self) -> None:
        if self._encoder is not None:
            self._encoder.abort()

    def _wav_header(self) -> bytes:
        if self._header_sent:
            return b""
        self._header_sent = True
        return _streaming_wav_header(self.sample_rate)


def encode_stream(chunks: Iterable[bytes], sample_rate: int, fmt: str) -> Generator[bytes, None, None]:
    """Encode an iterator of PCM chunks into an iterator of encoded bytes (empty pieces skipped).

    Closing the returned generator early (a client disconnect) frees the encoder.
    """
    encoder = StreamingEncoder(sample_rate, fmt)
    finished = False
    try:
        for chunk in chunks:
            out = encoder.feed(chunk)
            if out:
                yield out
        finished = True
        tail = encoder.finish()
        if tail:
            yield tail
    finally:
        if not finished:
            encoder.abort()
