"""kaset.media.pcm: a live recording's raw s16le PCM: length, loudness, resampling to 16 kHz."""

from __future__ import annotations

import numpy as np
import pytest

from kaset.media.pcm import QUIET_RMS, is_quiet, pcm_seconds, rms, to_16k


def tone(seconds: float, rate: int, amplitude: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def test_seconds() -> None:
    assert pcm_seconds(32_000, 16_000) == 1.0 and pcm_seconds(8_000 * 2 * 3, 8_000) == 3.0


def test_levels() -> None:
    assert rms(b"") == 0.0 and rms(b"\x01") == 0.0  # half a sample is no sample
    assert rms(b"\0\0" * 1000) == 0.0
    # A sine's RMS is its amplitude / sqrt(2).
    assert rms(tone(1.0, 16_000, 0.5)) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=1e-3)
    assert is_quiet(b"") and is_quiet(b"\0\0" * 16_000)
    # QUIET_RMS is about -40 dBFS: a tone at -46 dBFS is quiet, one at -34 dBFS is not.
    assert is_quiet(tone(0.5, 16_000, 0.007)) and not is_quiet(tone(0.5, 16_000, 0.028))
    assert is_quiet(tone(0.5, 16_000, 0.028), threshold=QUIET_RMS * 4)


def test_16k_is_kept_and_scaled_to_unit_range() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    samples = to_16k(pcm + b"\x07", 16_000)  # a trailing odd byte is dropped
    assert samples.dtype == np.float32
    assert samples.tolist() == pytest.approx([0.0, 0.5, -1.0, 32767 / 32768])
    assert to_16k(b"", 48_000).size == 0


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_other_rates_resample_to_16k_keeping_the_pitch(rate: int) -> None:
    samples = to_16k(tone(1.0, rate, 0.5, hz=300.0), rate)
    assert samples.dtype == np.float32 and abs(samples.size - 16_000) <= 1
    # The tone is still 300 Hz at the new rate: the strongest FFT bin is 300 Hz.
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16_000 / samples.size - 300.0) < 2.0
    assert float(np.max(np.abs(samples))) == pytest.approx(0.5, abs=0.01)
