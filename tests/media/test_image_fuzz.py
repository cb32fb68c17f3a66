"""Damaged image files: every truncation and byte flip of real photos is decoded or refused
with a 4xx, never an exception a route would turn into a 500.

The photos are real (scikit-image's astronaut and coffee, darknet's dog when Debian's darknet
is installed), encoded as JPEG, progressive JPEG, PNG, WebP and GIF. The corpus is deterministic
(seeded), so a failure names an input that can be replayed.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from kaset.errors import KasetError
from kaset.media.image import decode_image
from tests.fixtures.images import photo

FORMATS: dict[str, dict[str, object]] = {
    "JPEG": {"quality": 85}, "JPEG-progressive": {"quality": 85, "progressive": True}, "PNG": {},
    "WEBP": {"quality": 80}, "GIF": {},
}


def encoded(fmt: str) -> bytes:
    image = Image.fromarray(photo("astronaut")).resize((160, 160))
    buffer = io.BytesIO()
    image.save(buffer, fmt.split("-")[0], **FORMATS[fmt])
    return buffer.getvalue()


def damaged(data: bytes, seed: int) -> list[bytes]:
    """Truncations at 40 offsets (the headers' first bytes densely, then spread over the file)
    and 40 copies with 1-16 random bytes overwritten."""
    rng = random.Random(seed)
    offsets = sorted({*range(0, 64, 3), *np.linspace(64, len(data) - 1, 19).astype(int).tolist()})
    out = [data[:cut] for cut in offsets]
    for _ in range(40):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        out.append(bytes(flipped))
    return out


def _decodes_or_4xx(data: bytes) -> None:
    try:
        array = decode_image(data)
    except KasetError as exc:
        assert 400 <= exc.status_code < 500, exc
        assert exc.message and exc.param == "image"
    else:
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_damaged_copy_is_decoded_or_refused_with_a_4xx(fmt: str) -> None:
    original = encoded(fmt)
    for data in damaged(original, seed=len(fmt)):
        _decodes_or_4xx(data)


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, b"GIF89a\x01",
                                  b"RIFF\x10\x00\x00\x00WEBPVP8 ", b"BM" + b"\xff" * 60, b"II*\x00" + b"\x00" * 40])
def test_headers_with_nothing_behind_them(data: bytes) -> None:
    _decodes_or_4xx(data)
