"""Damaged photos through the gateway's image routes: a 4xx in the error envelope, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.media.test_image_fuzz import FORMATS, damaged, encoded


def test_the_gateway_answers_damaged_photos_with_4xx(client: TestClient) -> None:
    """Through /v1/diagnose (the real gate and mango models): a sample of the damaged copies of
    each format, every one a 4xx in the error envelope or a 200 diagnosis."""
    for fmt in FORMATS:
        corpus = damaged(encoded(fmt), seed=7)
        for data in [*corpus[::8], b"\xff\xd8\xff\xe0garbage"]:
            response = client.post("/v1/diagnose", files={"image": ("photo.bin", data, "application/octet-stream")},
                                   data={"crop": "mango"})
            assert response.status_code < 500, (fmt, response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["message"] and error["param"] == "image"
