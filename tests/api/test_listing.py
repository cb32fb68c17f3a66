"""/v1/listings and /v1/listings/schema through the gateway, with the real classifier and LLM."""

from __future__ import annotations

import base64

import jsonschema
import pytest
from fastapi.testclient import TestClient

from tests.fixtures.images import jpeg, photo


def test_listing_from_a_multipart_photo(client: TestClient) -> None:
    response = client.post("/v1/listings", files={"image": ("cat.jpg", jpeg(photo("chelsea")), "image/jpeg")},
                           data={"notes": "Friendly, two years old", "max_keywords": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"listing", "method", "attempts", "model", "labels", "errors"}
    schema = client.get("/v1/listings/schema", params={"max_keywords": 5}).json()
    jsonschema.validate(body["listing"], schema)  # the served schema holds for what is served
    assert body["method"] in ("llm-json", "repaired", "template") and body["attempts"] in (1, 2)
    assert body["model"] == "smollm2-135m" and body["constrained"] is True
    assert body["labels"][0]["label"].endswith("cat") and body["listing"]["categories"] == ["Pets"]
    assert len(body["listing"]["keywords"]) <= 5 and len(body["listing"]["title"]) <= 80
    assert (body["method"] == "llm-json") == (body["errors"] == []) or body["attempts"] == 2
    assert "smollm2-135m" in response.headers["x-kaset-model"]


def test_listing_from_json_in_thai(client: TestClient) -> None:
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg(photo("coffee"))).decode()
    response = client.post("/v1/listings", json={"image": data_url, "language": "th"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "en" and body["requested_language"] == "th"
    assert any("ภาษาอังกฤษ" in note for note in body["notes"])
    assert "Food & drinks" in body["listing"]["categories"]


def test_the_schema(client: TestClient) -> None:
    response = client.get("/v1/listings/schema")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/schema+json")
    schema = response.json()
    assert schema["required"] == ["title", "description", "keywords", "categories"]
    assert schema["properties"]["title"]["maxLength"] == 80 and schema["properties"]["keywords"]["maxItems"] == 8
    assert "Fruit" in schema["properties"]["categories"]["items"]["enum"]
    assert client.get("/v1/listings/schema", params={"max_keywords": 2}).status_code == 422


@pytest.mark.parametrize("kwargs,status,code", [
    ({"files": {"image": ("a.jpg", b"this is not a photo" * 20, "image/jpeg")}}, 415, None),
    ({"files": {"image": ("a.jpg", b"", "image/jpeg")}}, 400, None),
    ({"files": {"image": ("a.jpg", b"\xff" * (2 * 1024 * 1024 + 10), "image/jpeg")}}, 413, "payload_too_large"),
    ({"files": {"photo": ("a.jpg", b"x", "image/jpeg")}}, 400, None),
    ({"json": {"image": "@@not base64@@"}}, 400, None),
    ({"json": {"image": base64.b64encode(jpeg(photo("coffee"))).decode(), "max_keywords": 99}}, 422, None),
    ({"json": {"image": base64.b64encode(jpeg(photo("coffee"))).decode(), "language": "fr"}}, 422, None),
    ({"content": b"image bytes", "headers": {"content-type": "image/jpeg"}}, 415, None),
])
def test_bad_input(client: TestClient, kwargs: dict[str, object], status: int, code: str | None) -> None:
    response = client.post("/v1/listings", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if code:
        assert error["code"] == code
