"""/v1/diagnose and the Open Inference Protocol routes, through the gateway, real models."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.fixtures.images import jpeg, mango_like_leaf, photo


def _diagnose(client: TestClient, data: bytes, **fields: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/diagnose", files={"image": ("photo.jpg", data, "image/jpeg")}, data=fields)


def test_diagnose_multipart_cat_is_refused(client: TestClient) -> None:
    response = _diagnose(client, jpeg(photo("chelsea")), crop="mango")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "not_a_plant" and "cat" in body["message"]
    assert body["gate"]["model"] == "efficientnet-lite0" and not body["gate"]["passed"]


@pytest.mark.parametrize("language", ["en", "th"])
def test_diagnose_json_mango_plan(client: TestClient, language: str) -> None:
    image = base64.b64encode(jpeg(mango_like_leaf(seed=2, spots=25), quality=95)).decode()
    response = client.post("/v1/diagnose", json={"image": f"data:image/jpeg;base64,{image}", "language": language})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "diagnosed", body["message"]
    assert body["crop"] == "mango" and body["crop_source"] == "inferred"
    assert body["plan"]["sources"] and body["plan"]["actions"]
    assert any(m.startswith("mango-disease@") for m in body["models_used"])
    if language == "th":
        assert any("\u0e00" <= c <= "\u0e7f" for c in body["plan"]["name"])


def test_diagnose_compare_mode(client: TestClient) -> None:
    response = _diagnose(client, jpeg(mango_like_leaf(seed=2, spots=25)), crop="mango", compare="true")
    assert response.status_code == 200 and len(response.json()["per_model"]) >= 1


@pytest.mark.parametrize("data,status", [
    (b"this is not an image at all" * 10, 415),
    (b"", 400),
])
def test_diagnose_bad_files(client: TestClient, data: bytes, status: int) -> None:
    response = _diagnose(client, data, crop="mango")
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_diagnose_truncated_jpeg(client: TestClient) -> None:
    data = jpeg(photo("coffee"))
    response = _diagnose(client, data[: len(data) // 2], crop="mango")
    assert response.status_code == 400 and "truncated" in response.json()["error"]["message"]


def test_diagnose_one_pixel(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (0, 128, 0)).save(buffer, "PNG")
    response = _diagnose(client, buffer.getvalue(), crop="mango")
    assert response.status_code == 400 and "1x1" in response.json()["error"]["message"]


def test_diagnose_unknown_crop_and_bad_json(client: TestClient) -> None:
    response = _diagnose(client, jpeg(photo("coffee")), crop="banana")
    assert response.status_code == 400 and "banana" in response.json()["error"]["message"]
    response = client.post("/v1/diagnose", json={"image": "@@not base64@@"})
    assert response.status_code == 400 and "base64" in response.json()["error"]["message"]
    response = client.post("/v1/diagnose", content=b"plain", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


def test_v2_metadata_and_ready(client: TestClient) -> None:
    meta = client.get("/v2/models/efficientnet-lite0").json()
    assert meta["inputs"][0]["name"] == "IMAGE" and meta["outputs"][0]["name"] == "PROBABILITIES"
    client.post("/v2/models/efficientnet-lite0/infer", json={"inputs": [
        {"name": "IMAGE", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}]})
    assert client.get("/v2/models/efficientnet-lite0/ready").json()["ready"] is True
    assert client.get("/v2/models/efficientnet-lite0/versions/99").status_code == 404
    assert client.get("/v2/models/whisper-1").status_code == 404


def test_v2_infer_json_with_classification_extension(client: TestClient) -> None:
    coffee = base64.b64encode(jpeg(photo("coffee"))).decode()
    response = client.post("/v2/models/efficientnet-lite0/infer", json={
        "id": "req-1", "inputs": [{"name": "IMAGE_BYTES", "shape": [1], "datatype": "BYTES", "data": [coffee]}],
        "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 3}}]})
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert response.json()["id"] == "req-1"
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 3]
    score, index, label = output["data"][0].split(":", 2)
    assert label == "espresso" and int(index) == 967 and float(score) > 0.5


def test_v2_embeddings(client: TestClient) -> None:
    response = client.post("/v2/models/e5-small/infer", json={
        "inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES", "data": ["rice", "ข้าว"]}]})
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [2, 384]


def test_v2_bad_tensors(client: TestClient) -> None:
    response = client.post("/v2/models/efficientnet-lite0/infer", json={
        "inputs": [{"name": "IMAGE", "shape": [1, 4, 4, 3], "datatype": "UINT8", "data": [1, 2, 3]}]})
    assert response.status_code == 400
    response = client.post("/v2/models/efficientnet-lite0/infer", json={"inputs": []})
    assert response.status_code == 400


def _encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["cmyk", "png16", "gif", "exif"])
def test_diagnose_accepts_odd_but_valid_photos(client: TestClient, kind: str) -> None:
    cat = Image.fromarray(photo("chelsea"))
    if kind == "cmyk":
        data = _encoded(cat.convert("CMYK"), "JPEG")
    elif kind == "png16":
        grey = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        data = _encoded(Image.fromarray(grey), "PNG")
    elif kind == "gif":
        data = _encoded(cat, "GIF", save_all=True, append_images=[cat.rotate(90)], duration=100, loop=0)
    else:
        exif = Image.Exif()
        exif[0x0112] = 8
        data = _encoded(cat.rotate(-90, expand=True), "JPEG", exif=exif.tobytes())
    response = _diagnose(client, data, crop="mango")
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("not_a_plant", "unsure", "diagnosed")


def test_diagnose_fifty_megapixels(client: TestClient, api_settings) -> None:  # type: ignore[no-untyped-def]
    big = _encoded(Image.new("L", (8000, 6500)), "PNG")
    assert len(big) < api_settings.max_upload_bytes
    response = _diagnose(client, big, crop="mango")
    assert response.status_code == 200, response.text  # 52 MP is under the 60 MP limit: reduced, not refused
    huge = _encoded(Image.new("L", (9000, 7000)), "PNG")
    response = _diagnose(client, huge, crop="mango")
    assert response.status_code == 413 and "pixels" in response.json()["error"]["message"]


def test_batching_stats_in_the_model_object(client: TestClient) -> None:
    """Dynamic batching counters for the metrics to come: GET /v1/models/{id} `batching`."""
    coffee = base64.b64encode(jpeg(photo("coffee"))).decode()
    before = client.get("/v1/models/efficientnet-lite0").json()["batching"]
    response = client.post("/v2/models/efficientnet-lite0/infer", json={
        "inputs": [{"name": "IMAGE_BYTES", "shape": [2], "datatype": "BYTES", "data": [coffee, coffee]}]})
    assert response.status_code == 200, response.text
    after = client.get("/v1/models/efficientnet-lite0").json()["batching"]
    assert after["max_batch_size"] == 16 and after["max_wait_ms"] == 5
    assert after["requests"] == before["requests"] + 1 and after["items"] == before["items"] + 2
    assert sum(after["batch_sizes"].values()) == after["batches"]
    embeddings = client.post("/v1/embeddings", json={"model": "e5-small", "input": ["rice", "ข้าว"]})
    assert embeddings.status_code == 200 and embeddings.json()["usage"]["prompt_tokens"] > 2
    assert client.get("/v1/models/e5-small").json()["batching"]["items"] >= 2
    assert client.get("/v1/models/echo").json()["batching"] is None
