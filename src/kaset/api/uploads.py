"""Photo uploads shared by the image endpoints: a multipart file, or JSON with a base64 image.

Both shapes carry the same options; the JSON body's pydantic model validates them (the
multipart form's text fields are validated by the same model), so each endpoint declares
its options once.
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from kaset.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

M = TypeVar("M", bound=BaseModel)


async def read_upload(file: UploadFile, max_bytes: int, *, noun: str = "file",
                      empty_message: str = "The uploaded file is empty (0 bytes). Record or choose an audio file.",
                      empty_code: str | None = None) -> bytes:
    """An uploaded file's bytes, read no further than the limit: 413 when it is over, 400 when empty."""
    if file.size is not None and file.size > max_bytes:
        raise PayloadTooLarge(f"The {noun} is {file.size} bytes; this server accepts at most {max_bytes}.",
                              param="file")
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The {noun} is larger than this server's limit of {max_bytes} bytes.", param="file")
    if not data:
        raise InvalidRequest(empty_message, param="file", code=empty_code)
    return data


def image_from_base64(value: str, param: str = "image") -> bytes:
    """Bytes of a base64 string or a `data:...;base64,` URL."""
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise InvalidRequest("The data URL must be base64-encoded.", param=param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{param}' is not valid base64.", param=param) from None


def _validation_failed(exc: ValidationError) -> ValidationFailed:
    first = exc.errors()[0]
    where = ".".join(map(str, first["loc"]))
    return ValidationFailed(f"Invalid request: {where}: {first['msg']}", param=where)


async def read_image_request(request: Request, max_bytes: int, options: type[M]) -> tuple[bytes, M]:
    """(photo bytes, options) from a multipart upload (field `image` or `file`) or a JSON body.

    `options` is the JSON body's model; it must have a string field `image` (the base64 photo).
    """
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=max_bytes)
        upload = form.get("image") or form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Send the photo as a file field named 'image'.", param="image")
        data = await upload.read(max_bytes + 1)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        fields["image"] = ""  # the photo came as a file; the model still wants the field
    elif content_type.split(";")[0].strip().endswith("json"):
        try:
            body = options.model_validate_json(await request.body())
        except ValidationError as exc:
            if exc.errors()[0].get("type") == "json_invalid":
                raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
            raise _validation_failed(exc) from None
        data = image_from_base64(str(getattr(body, "image", "")))
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"The photo is larger than this server's limit of {max_bytes} bytes.",
                                  param="image")
        return data, body
    else:
        raise UnsupportedMediaType("Send the photo as multipart/form-data (field 'image') or JSON with a "
                                   "base64 'image'.")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The photo is larger than this server's limit of {max_bytes} bytes.", param="image")
    try:
        return data, options.model_validate(fields)
    except ValidationError as exc:
        raise _validation_failed(exc) from None
