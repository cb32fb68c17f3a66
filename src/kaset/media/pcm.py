"""Raw 16-bit PCM as a live recording streams it (s16le, mono): length, loudness, resampling.

Browsers' recorders send this over /v1/voice/stream at their own rate (8-48 kHz); the ASR
models want float32 at 16 kHz (`kaset.media.audio.ASR_SAMPLE_RATE`). Encoded files go through
`kaset.media.audio` instead.
"""

from __future__ import annotations

import numpy as np

from kaset.media.audio import ASR_SAMPLE_RATE

# Below this RMS (about -40 dBFS) a stretch of 16-bit audio holds no speech worth transcribing.
QUIET_RMS = 330.0


def pcm_seconds(size: int, rate: int) -> float:
    """How long `size` bytes of s16le mono PCM at `rate` play."""
    return size / 2 / rate


def _int16_samples(pcm: bytes) -> np.ndarray:
    """The samples as float32 in int16 units; a trailing odd byte (half a sample) is dropped."""
    return np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32)


def rms(pcm: bytes) -> float:
    """The root mean square level of s16le PCM, in int16 units (0 for no samples)."""
    samples = _int16_samples(pcm)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def is_quiet(pcm: bytes, threshold: float = QUIET_RMS) -> bool:
    """Whether the stretch holds no speech: no samples, or an RMS level below `threshold`."""
    return rms(pcm) < threshold


def to_16k(pcm: bytes, rate: int) -> np.ndarray:
    """s16le mono PCM at `rate` → float32 samples at 16 kHz (linear interpolation: plenty for ASR)."""
    samples = _int16_samples(pcm) / 32768.0
    if rate == ASR_SAMPLE_RATE or samples.size == 0:
        return samples
    count = max(1, round(samples.size * ASR_SAMPLE_RATE / rate))
    positions = np.linspace(0, samples.size - 1, count)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)
