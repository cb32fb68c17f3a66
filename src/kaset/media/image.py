"""Image decoding for uploads: whatever a phone or a client sends becomes an RGB uint8 array.

EXIF orientation is applied (phones store portrait photos sideways), CMYK, 16-bit, palette,
greyscale and alpha images become plain RGB, an animated image contributes its first frame,
and very large photos are scaled down while decoding (JPEG draft mode) instead of being
refused. What cannot be read gets a 4xx that says why.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kaset.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# What Pillow's decoders raise on damaged files: truncated streams (OSError, EOFError), bad
# headers and chunks (SyntaxError, struct.error, ValueError), and corrupt tables that send a
# plugin out of range (IndexError, KeyError, TypeError, ZeroDivisionError).
_DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError, MemoryError)
# Images are classified at a few hundred pixels; anything bigger is reduced to this
# longer side right after decoding, which bounds memory per request.
WORKING_SIDE = 1024
MIN_SIDE = 8


def decode_image(data: bytes, *, max_pixels: int = 60_000_000) -> np.ndarray:
    """Bytes of an image file -> RGB uint8 array of shape (H, W, 3)."""
    if not data:
        raise InvalidRequest("The image is empty (0 bytes). Take or choose a photo.", param="image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"The file is not an image this server can read. Send one of: {', '.join(SUPPORTED_FORMATS)}.",
            param="image",
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PayloadTooLarge(f"The image has more than {max_pixels:,} pixels.", param="image") from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(exc) from None
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedMediaType(
            f"Images in {image.format} format are not supported. Send one of: {', '.join(SUPPORTED_FORMATS)}.",
            param="image",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"The image is {width}x{height} ({width * height:,} pixels); the limit is {max_pixels:,}. "
            "Send a smaller photo.", param="image",
        )
    if min(width, height) < MIN_SIDE:
        raise InvalidRequest(
            f"The image is only {width}x{height} pixels; send a photo at least {MIN_SIDE} pixels on each side.",
            param="image",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(image)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PayloadTooLarge(f"The image has more than {max_pixels:,} pixels.", param="image") from None
    except _DECODE_ERRORS as exc:
        raise _corrupt(exc) from None


def _corrupt(exc: BaseException) -> InvalidRequest:
    detail = str(exc).strip() or type(exc).__name__
    return InvalidRequest(f"The image could not be decoded ({detail}); it may be truncated or corrupt. "
                          "Take the photo again or send the original file.", param="image", code="invalid_image")


def _decode(image: Image.Image) -> np.ndarray:
    if image.format == "JPEG":
        # Decode big JPEGs at a reduced scale directly (much faster, far less memory).
        image.draft("RGB", (WORKING_SIDE, WORKING_SIDE))
    image.seek(0)  # the first frame of an animated GIF/WebP
    image.load()
    upright: Image.Image = ImageOps.exif_transpose(image) or image
    rgb = _to_rgb(upright)
    if max(rgb.size) > WORKING_SIDE:
        rgb.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clipping to white.
        array = np.asarray(image, dtype=np.float64)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white, as a viewer shows them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
