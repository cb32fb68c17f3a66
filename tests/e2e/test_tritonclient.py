"""tritonclient (HTTP), unchanged, against Kaset's Open Inference Protocol routes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.conftest import KEY
from tests.fixtures.images import photo

pytestmark = pytest.mark.e2e


def test_tritonclient_over_http(server: str) -> None:
    tritonclient_http = pytest.importorskip("tritonclient.http")
    url = server.removeprefix("http://")
    triton = tritonclient_http.InferenceServerClient(url=url)
    headers = {"Authorization": f"Bearer {KEY}"}
    assert triton.is_server_live()
    assert triton.is_model_ready("efficientnet-lite0", headers=headers)
    pixels = np.stack([photo("chelsea")[:300, :300], photo("coffee")[:300, :300]]).astype(np.uint8)
    tensor = tritonclient_http.InferInput("IMAGE", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    top = tritonclient_http.InferRequestedOutput("PROBABILITIES", binary_data=True, class_count=2)
    result = triton.infer("efficientnet-lite0", [tensor], outputs=[top], headers=headers)
    labels = result.as_numpy("PROBABILITIES")
    assert labels.shape == (2, 2)
    first = labels[0][0].decode() if isinstance(labels[0][0], bytes) else str(labels[0][0])
    assert first.split(":", 2)[2] in {"tabby", "tiger cat", "Egyptian cat"}
    raw = tritonclient_http.InferRequestedOutput("PROBABILITIES", binary_data=True)
    probabilities = triton.infer("efficientnet-lite0", [tensor], outputs=[raw], headers=headers).as_numpy(
        "PROBABILITIES")
    assert probabilities.shape == (2, 1000) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
