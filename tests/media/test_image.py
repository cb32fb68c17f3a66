"""Image uploads: every shape a phone or client may send, and the ways they go wrong."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kaset.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from kaset.media.image import WORKING_SIDE, decode_image


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 90, np.uint8)],
                   axis=-1)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_rgb(fmt: str) -> None:
    array = decode_image(_encode(_gradient(), fmt))
    assert array.shape == (48, 64, 3) and array.dtype == np.uint8


def test_exif_rotation_is_respected() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    array = decode_image(_encode(_gradient(64, 48), "JPEG", exif=exif.tobytes()))
    assert array.shape == (64, 48, 3)


def test_cmyk_jpeg() -> None:
    array = decode_image(_encode(_gradient().convert("CMYK"), "JPEG"))
    assert array.shape == (48, 64, 3)


def test_sixteen_bit_png_keeps_its_contrast() -> None:
    grey = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    array = decode_image(_encode(Image.fromarray(grey), "PNG"))
    assert array.shape == (48, 64, 3)
    assert array.max() >= 250 and array.min() <= 5


def test_transparent_png_becomes_white_not_black() -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert decode_image(_encode(rgba, "PNG")).min() == 255


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    array = decode_image(data)
    assert array[0, 0, 0] > 200 and array[0, 0, 2] < 50


def test_big_photo_is_reduced_not_refused() -> None:
    data = _encode(Image.new("RGB", (6000, 4000), (10, 120, 10)), "JPEG", quality=60)
    array = decode_image(data)
    assert max(array.shape[:2]) <= WORKING_SIDE


def test_too_many_pixels_is_413() -> None:
    data = _encode(Image.new("L", (9000, 9000)), "PNG")
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_pixels=50_000_000)


def test_tiny_image_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="1x1"):
        decode_image(_encode(Image.new("RGB", (1, 1)), "PNG"))


def test_truncated_jpeg() -> None:
    data = _encode(_gradient(640, 480), "JPEG")
    with pytest.raises(InvalidRequest, match="truncated or corrupt"):
        decode_image(data[: len(data) // 3])


def test_not_an_image() -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"%PDF-1.4 definitely not a photo" * 10)
    with pytest.raises(InvalidRequest, match="empty"):
        decode_image(b"")
