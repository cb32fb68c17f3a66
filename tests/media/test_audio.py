"""Decoding uploads and encoding speech, with real Piper speech in every container."""

from __future__ import annotations

import io
import random
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import jiwer
import numpy as np
import pytest

from kaset.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from kaset.media.audio import (
    AUDIO_MEDIA_TYPES,
    ENCODABLE_FORMATS,
    StreamingEncoder,
    decode_audio,
    encode_audio,
    encode_stream,
    sniff_container,
)
from kaset.registry.catalog import ModelSpec
from kaset.runtimes.base import TranscribeOptions
from kaset.runtimes.faster_whisper import FasterWhisperRuntime
from kaset.runtimes.piper import PiperRuntime
from tests.fixtures.audio import wav_bytes

SENTENCE = "The farmer plants rice in the rainy season."
RATE = 22_050
Installed = Callable[[str], tuple[ModelSpec, Path]]

# format asked of encode_audio -> container sniff_container must see
CONTAINERS = {
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "opus": "ogg",
    "aac": "aac",
    "webm": "webm",
    "m4a": "m4a",
}
STREAMED = ["wav", "mp3", "flac", "opus", "aac", "webm", "m4a"]


@pytest.fixture(scope="module")
def pcm(installed: Installed) -> bytes:
    spec, folder = installed("piper-joe")
    piper = PiperRuntime(spec, folder)
    piper.load()
    return b"".join(piper.synthesize(SENTENCE, None, 1.0))


@pytest.fixture(scope="module")
def files(pcm: bytes) -> dict[str, bytes]:
    return {fmt: encode_audio(pcm, RATE, fmt) for fmt in CONTAINERS}


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


# --- sniffing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64" + bytes(8), "mp3"),
        (b"\xff\xf3\x90\x64" + bytes(8), "mp3"),
        (b"\xff\xf1\x50\x80" + bytes(8), "aac"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02" + bytes(6), "ogg"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "webm"),
        (b"\x00\x00\x00\x20ftypM4A ", "m4a"),
        (b"\x00\x00\x00\x18ftypmp42", "m4a"),
        (b"RIFF\x24\x00\x00\x00AVI LIST", None),
        (b"hello world", None),
        (b"\xff", None),
        (b"", None),
    ],
)
def test_sniff_container(head: bytes, kind: str | None) -> None:
    assert sniff_container(head) == kind


# --- round trips ----------------------------------------------------------------------------


def test_media_types() -> None:
    assert AUDIO_MEDIA_TYPES == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }
    assert set(AUDIO_MEDIA_TYPES) <= set(ENCODABLE_FORMATS)


@pytest.mark.parametrize("fmt", list(CONTAINERS))
def test_every_container_round_trips(fmt: str, files: dict[str, bytes], pcm: bytes) -> None:
    data = files[fmt]
    assert sniff_container(data) == CONTAINERS[fmt]
    audio, duration = decode_audio(data, max_seconds=60)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == pytest.approx(duration * 16_000, abs=1)
    # Lossy codecs pad with an encoder delay (AAC's 1024-sample priming shows up as ~0.05 s).
    assert duration == pytest.approx(seconds(pcm), abs=0.12)
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.02  # speech survived, not silence


def test_wav_decodes_sample_exact(files: dict[str, bytes], pcm: bytes) -> None:
    _, duration = decode_audio(files["wav"], max_seconds=60)
    assert duration == pytest.approx(seconds(pcm), abs=1 / 16_000)


def test_pcm_is_passed_through_and_odd_bytes_dropped(pcm: bytes) -> None:
    assert encode_audio(pcm, RATE, "pcm") == pcm
    assert encode_audio(pcm + b"\x01", RATE, "pcm") == pcm


def test_stereo_44k_is_downmixed_to_mono_16k(pcm: bytes) -> None:
    mono = np.frombuffer(pcm, dtype="<i2")
    stereo = np.repeat(mono, 2)  # same speech on both channels, interleaved
    _, duration = decode_audio(wav_bytes(stereo.tobytes(), RATE, channels=2), max_seconds=60)
    assert duration == pytest.approx(seconds(pcm), abs=0.01)


@pytest.fixture(scope="module")
def whisper(installed: Installed) -> FasterWhisperRuntime:
    spec, folder = installed("whisper-tiny.en")
    runtime = FasterWhisperRuntime(spec, folder)
    runtime.load()
    return runtime


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_compressed_speech_is_still_transcribed(
    fmt: str, files: dict[str, bytes], whisper: FasterWhisperRuntime
) -> None:
    audio, _ = decode_audio(files[fmt], max_seconds=60)
    text = whisper.transcribe(audio, TranscribeOptions()).text
    assert jiwer.wer(normalise(SENTENCE), normalise(text)) < 0.15


def test_unknown_output_format_is_refused(pcm: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        encode_audio(pcm, RATE, "ogg-vorbis")
    assert err.value.param == "response_format"


# --- streaming ------------------------------------------------------------------------------


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("fmt", STREAMED)
def test_streamed_encoding_decodes_to_the_same_speech(fmt: str, pcm: bytes) -> None:
    pieces = list(encode_stream(chunked(pcm, 9_999), RATE, fmt))  # odd sizes split samples
    assert all(pieces)
    if fmt != "m4a":  # m4a cannot be streamed; it comes whole at the end
        assert len(pieces) > 3
    _, duration = decode_audio(b"".join(pieces), max_seconds=60)
    assert duration == pytest.approx(seconds(pcm), abs=0.12)


def test_streamed_wav_has_open_ended_sizes_and_exact_samples(pcm: bytes) -> None:
    data = b"".join(encode_stream(chunked(pcm, 4_001), RATE, "wav"))
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    assert data[44:] == pcm


def test_streamed_pcm_is_the_input(pcm: bytes) -> None:
    assert b"".join(encode_stream(chunked(pcm, 3), RATE, "pcm")) == pcm


def test_streamed_mp3_starts_before_the_input_ends(pcm: bytes) -> None:
    encoder = StreamingEncoder(RATE, "mp3")
    first_half = b"".join(encoder.feed(c) for c in chunked(pcm[: len(pcm) // 2], 8_000))
    assert len(first_half) > 1_000
    encoder.abort()


def test_abandoned_stream_is_closed_cleanly(pcm: bytes) -> None:
    stream = encode_stream(iter(chunked(pcm, 8_000)), RATE, "opus")
    next(stream)
    stream.close()  # the client went away: must not raise nor leave FFmpeg state behind


# --- bad uploads ----------------------------------------------------------------------------


def test_empty_file_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        decode_audio(b"", max_seconds=60)


def test_random_bytes_are_an_unsupported_media_type() -> None:
    junk = random.Random(1).randbytes(4_000)
    with pytest.raises(UnsupportedMediaType) as err:
        decode_audio(junk, max_seconds=60)
    for name in ("wav", "mp3", "flac", "ogg", "webm", "m4a"):
        assert name in err.value.message


@pytest.mark.parametrize("fmt", list(CONTAINERS))
def test_valid_header_with_garbage_is_invalid(fmt: str, files: dict[str, bytes]) -> None:
    garbage = files[fmt][:16] + random.Random(2).randbytes(20_000)
    with pytest.raises(InvalidRequest, match="corrupt"):
        decode_audio(garbage, max_seconds=60)


@pytest.mark.parametrize("fmt", list(CONTAINERS))
def test_header_only_is_invalid(fmt: str, files: dict[str, bytes]) -> None:
    with pytest.raises(InvalidRequest):
        decode_audio(files[fmt][:64], max_seconds=60)


def test_truncated_m4a_is_invalid(files: dict[str, bytes]) -> None:
    # MP4 keeps its index at the end: without it nothing can be decoded.
    with pytest.raises(InvalidRequest, match="corrupt"):
        decode_audio(files["m4a"][: len(files["m4a"]) // 2], max_seconds=60)


def test_truncated_stream_formats_decode_what_is_there(files: dict[str, bytes], pcm: bytes) -> None:
    half = files["mp3"][: len(files["mp3"]) // 2]
    _, duration = decode_audio(half, max_seconds=60)
    assert 0.3 * seconds(pcm) < duration < 0.7 * seconds(pcm)


def test_too_long_is_refused(files: dict[str, bytes]) -> None:
    with pytest.raises(PayloadTooLarge, match="longer than"):
        decode_audio(files["flac"], max_seconds=1.0)


def test_file_without_audio_track_is_invalid() -> None:
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = out.getvalue()
    assert sniff_container(data) == "m4a"
    with pytest.raises(InvalidRequest, match="no audio"):
        decode_audio(data, max_seconds=60)


# Counted in a fresh interpreter: in the suite's own process other tests' servers, executors and
# engine pools start and stop threads at any moment, so a count there measures them, not decoding.
_THREAD_COUNT = """
import os, sys
from pathlib import Path
from kaset.errors import InvalidRequest
from kaset.media.audio import decode_audio
files = [p.read_bytes() for p in sorted(Path(sys.argv[1]).iterdir())]
for data in files:  # first round: let libraries start any pools they keep
    decode_audio(data, max_seconds=60)
before = len(os.listdir("/proc/self/task"))
for _ in range(5):
    for data in files:
        decode_audio(data, max_seconds=60)
    try:
        decode_audio(files[0][:16] + bytes(5_000), max_seconds=60)
    except InvalidRequest:
        pass
    else:
        raise SystemExit("a truncated file decoded")
print(before, len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_decoding_leaves_no_threads_behind(files: dict[str, bytes], tmp_path: Path) -> None:
    for fmt, data in files.items():
        (tmp_path / f"{fmt}.{fmt}").write_bytes(data)
    done = subprocess.run([sys.executable, "-c", _THREAD_COUNT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert after <= before, (before, after)
