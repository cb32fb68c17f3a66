"""The Open Inference Protocol (v2) client runtime against a real server: a `kaset worker` process
serving the real mango-disease model on its `/v2`, compared with the same model run here.

Failures the worker would not produce on demand (Triton's `{"error": "..."}` bodies, 5xx, a slow
answer) come from a pass-through proxy in front of the worker (`proxy`), which also records the
exact bytes on the wire: they are compared with what tritonclient's own InferInput and
InferRequestedOutput build, and the worker's replies are read by tritonclient's parser too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from kaset.errors import ModelUnavailable, UpstreamAuthFailed, UpstreamError, UpstreamTimeout
from kaset.registry.catalog import Catalog, ModelSpec
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.runtimes.oip_v2 import OipV2Runtime
from kaset.runtimes.onnx_vision import OnnxVisionRuntime
from tests.fixtures.fake_providers import SERVER, FakeServer, provider_runtimes, serve
from tests.fixtures.images import mango_like_leaf, photo
from tests.fixtures.tcp_proxy import free_port
from tests.fixtures.worker_process import WorkerProcess, worker_process

TOKEN = "oip-worker-token-for-tests"
ENV = "KASET_TEST_OIP_TOKEN"
MODEL = "mango-disease"
SESSION = web.AppKey("session", aiohttp.ClientSession)
TRITON_ERROR = "unexpected inference input 'IMAGE' for model 'mango-disease'"
Make = Callable[..., OipV2Runtime]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
           installed: Callable[[str], tuple[ModelSpec, Path]]) -> Iterator[WorkerProcess]:
    installed(MODEL)
    env = {"KASET_MODELS_DIR": str(models_dir), "KASET_WORKER_TOKEN": TOKEN, "MAX_CONCURRENT_INFERENCES": "2"}
    with worker_process(tmp_path_factory.mktemp("oip-worker"), MODEL, env) as process:
        yield process


@pytest.fixture(scope="module")
def local(installed: Callable[[str], tuple[ModelSpec, Path]]) -> Iterator[OnnxVisionRuntime]:
    """The same model, run in this process: what the remote answers must equal."""
    spec, folder = installed(MODEL)
    runtime = OnnxVisionRuntime(spec, folder)
    runtime.load()
    yield runtime
    runtime.unload()


@contextmanager
def proxy_to(target: str) -> Iterator[FakeServer]:
    """A pass-through proxy to `target` that records each request and reply (raw bytes), and in an
    error mode (`fail(status)`) answers /infer as Triton does: `{"error": "..."}`."""

    async def session(app: web.Application) -> Any:
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        fake = request.app[SERVER]
        body = await request.read()
        record: dict[str, Any] = {"method": request.method, "path": request.path, "headers": dict(request.headers),
                                  "body": body}
        fake.requests.append(record)
        if request.path.endswith("/infer"):
            if fake.delay_s:
                await asyncio.sleep(fake.delay_s)
            status = fake.forced_status()
            if status is not None:
                message = TRITON_ERROR if status < 500 else "failed to run the model: out of memory"
                return web.json_response({"error": message}, status=status)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with request.app[SESSION].request(request.method, f"{target}{request.path_qs}", data=body,
                                                  headers=headers) as upstream:
            reply = await upstream.read()
            passed = {k: v for k, v in upstream.headers.items()
                      if k.lower() in ("content-type", "inference-header-content-length")}
            record["reply"], record["reply_headers"] = reply, passed
            return web.Response(body=reply, status=upstream.status, headers=passed)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    with serve(app) as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(worker: WorkerProcess) -> Iterator[FakeServer]:
    with proxy_to(worker.url) as fake:
        yield fake


@pytest.fixture
def make(worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Make]:
    """make(**params) -> a loaded oip-v2 runtime for the worker's mango-disease (base_url overridable)."""
    monkeypatch.setenv(ENV, TOKEN)
    with provider_runtimes("oip-v2", OipV2Runtime, ["classify"]) as build:
        yield lambda **params: build("remote-mango", {
            "base_url": f"{worker.url}/v2", "model": MODEL, "api_key_env": ENV, "timeout_s": 30, **params})


def images() -> list[np.ndarray]:
    # Two sizes: one request per size (a tensor has one shape), answered in the callers' order.
    return [photo("chelsea"), mango_like_leaf(seed=3, spots=6), photo("coffee")[:300, :400],
            mango_like_leaf(seed=4, spots=0)]


def test_probabilities_equal_the_local_models(make: Make, local: OnnxVisionRuntime) -> None:
    runtime = make()
    assert runtime.labels == local.labels  # read from the worker (classification extension)
    batch = images()
    remote = runtime.classify(batch)
    assert remote.shape == (4, 7) and remote.dtype == np.float32
    np.testing.assert_allclose(remote, local.classify(batch), atol=1e-5)

    async def on_a_loop() -> np.ndarray:
        try:
            return await runtime.aclassify(batch)
        finally:
            await runtime.aclose()

    np.testing.assert_allclose(asyncio.run(on_a_loop()), remote, atol=1e-6)
    assert runtime.classify([]).shape == (0, 7)


def test_plain_json_both_ways_and_catalog_labels(make: Make, local: OnnxVisionRuntime, tmp_path: Path) -> None:
    runtime = make(binary_input=False, binary_output=False, labels=local.labels, max_batch=1)
    batch = images()[:2]
    np.testing.assert_allclose(runtime.classify(batch), local.classify(batch), atol=1e-5)
    (tmp_path / "labels.txt").write_text("".join(f"{label}\n" for label in local.labels))  # Triton's label file
    assert make(labels_file=str(tmp_path / "labels.txt")).labels == local.labels
    with pytest.raises(ModelUnavailable, match="gives 7 scores per image but the catalog names 2 labels"):
        make(labels=["healthy", "sick"])
    (tmp_path / "bad.json").write_text("[not json")
    with pytest.raises(ModelUnavailable, match=r"cannot read params\.labels_file"):
        make(labels_file=str(tmp_path / "bad.json"))


def test_requests_stay_under_max_request_bytes(make: Make, local: OnnxVisionRuntime) -> None:
    runtime = make(max_request_bytes=1_300_000)
    leaves = [mango_like_leaf(seed=i, spots=i) for i in range(4)]  # 448x448x3: 602 KB of pixels each
    assert [r.rows for r in runtime.encode(leaves)] == [[0, 1], [2, 3]]
    np.testing.assert_allclose(runtime.classify(leaves), local.classify(leaves), atol=1e-5)
    # A photo bigger than the limit alone is scaled down to fit (a server refuses the body whole).
    cat = photo("chelsea")  # 300x451: 406 KB
    (request,) = make(max_request_bytes=200_000).encode([cat])
    assert request.header_length is not None
    shape = json.loads(request.body[:request.header_length])["inputs"][0]["shape"]
    assert shape[1] * shape[2] * 3 <= 200_000 and abs(shape[2] / shape[1] - 451 / 300) < 0.02


def test_the_request_is_tritonclients_and_so_is_the_reply(make: Make, proxy: FakeServer) -> None:
    http = pytest.importorskip("tritonclient.http")
    runtime = make(base_url=proxy.base_url)
    loading = [(r["method"], r["path"]) for r in proxy.requests]
    assert loading == [("GET", f"/v2/models/{MODEL}/ready"), ("GET", f"/v2/models/{MODEL}"),
                       ("POST", f"/v2/models/{MODEL}/infer"), ("POST", f"/v2/models/{MODEL}/infer")]
    probe = np.full((1, 224, 224, 3), 128, dtype=np.uint8)
    labels_request = _tritonclient_body(http, probe, class_count=7)
    assert (proxy.requests[3]["body"], proxy.requests[3]["headers"]["Inference-Header-Content-Length"]) == (
        labels_request[0], str(labels_request[1]))

    proxy.requests.clear()
    pixels = np.stack([mango_like_leaf(seed=5, spots=2), mango_like_leaf(seed=6, spots=9)])
    scores = runtime.classify(list(pixels))
    (sent,) = proxy.requests
    body, header_length = _tritonclient_body(http, pixels)
    assert sent["body"] == body and sent["headers"]["Inference-Header-Content-Length"] == str(header_length)
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"
    length = sent["reply_headers"].get("inference-header-content-length") or sent["reply_headers"].get(
        "Inference-Header-Content-Length")
    result = http.InferenceServerClient.parse_response_body(sent["reply"], header_length=int(length))
    np.testing.assert_array_equal(result.as_numpy("PROBABILITIES"), scores)


def _tritonclient_body(http: Any, pixels: np.ndarray, class_count: int = 0) -> tuple[bytes, int]:
    tensor = http.InferInput("IMAGE", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    output = http.InferRequestedOutput("PROBABILITIES", binary_data=True, class_count=class_count)
    body, header_length = http.InferenceServerClient.generate_request_body([tensor], outputs=[output])
    return body, header_length


def test_a_wrong_tensor_name_fails_the_load_naming_the_servers_tensors(make: Make) -> None:
    with pytest.raises(ModelUnavailable, match=r"no output tensor 'LOGITS'; its outputs are: PROBABILITIES "
                                               r"\(FP32 \[-1, -1\]\)"):
        make(output_tensor="LOGITS")
    with pytest.raises(ModelUnavailable, match=r"no input tensor 'input_1'; its inputs are: IMAGE \(UINT8 .*"
                                               r"IMAGE_BYTES \(BYTES"):
        make(input_tensor="input_1")
    with pytest.raises(ModelUnavailable, match="it takes UINT8 pixels"):
        make(mean=[0.5, 0.5, 0.5])


def test_the_servers_own_4xx_words_are_quoted(make: Make, proxy: FakeServer) -> None:
    # The worker's envelope, at load: the model it does not serve.
    with pytest.raises(ModelUnavailable) as not_ready:
        make(model="no-such-model")
    assert "HTTP 404" in not_ready.value.message and "'no-such-model'" in not_ready.value.message
    assert (not_ready.value.status_code, not_ready.value.code) == (503, "upstream_not_ready")
    with pytest.raises(ModelUnavailable, match=r"HTTP 404\): \".*no-such-model.*\"") as unknown:
        make(model="no-such-model", check_ready=False)
    assert unknown.value.code == "upstream_rejected"
    # Triton's {"error": "..."} on an infer request.
    runtime = make(base_url=proxy.base_url)
    proxy.fail(400, times=1)
    with pytest.raises(ModelUnavailable) as rejected:
        runtime.classify(images()[:1])
    assert f'(HTTP 400): "{TRITON_ERROR}"' in rejected.value.message
    assert "catalog entry" in rejected.value.message
    error = rejected.value
    # Misconfigured: no retry of this model, but a breaker failure and the route's next model.
    assert (error.status_code, error.code, error.retryable, error.breaker_failure) == (
        503, "upstream_rejected", False, True)


def test_5xx_and_timeouts_are_retryable_breaker_failures(make: Make, proxy: FakeServer) -> None:
    runtime = make(base_url=proxy.base_url, timeout_s=1)
    proxy.fail(500, times=1)
    with pytest.raises(UpstreamError) as failed:
        runtime.classify(images()[:1])
    assert '(HTTP 500): "failed to run the model: out of memory"' in failed.value.message
    assert (failed.value.status_code, failed.value.retryable, failed.value.breaker_failure) == (502, True, True)
    proxy.delay_s = 2.5
    started = time.perf_counter()
    try:
        with pytest.raises(UpstreamTimeout) as slow:
            runtime.classify(images()[:1])
    finally:
        proxy.heal()
    assert slow.value.status_code == 504 and slow.value.retryable and time.perf_counter() - started < 2.5
    assert runtime.classify(images()[:1]).shape == (1, 7)  # and back


def test_an_upstream_that_is_down_is_a_clear_503_then_a_retryable_502(make: Make, worker: WorkerProcess) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelUnavailable) as down:
        make(base_url=nobody)
    assert (down.value.status_code, down.value.code, down.value.breaker_failure) == (503, "upstream_not_ready", True)
    assert "could not be reached" in down.value.message and nobody in down.value.message
    with proxy_to(worker.url) as gone:
        runtime = make(base_url=gone.base_url)
    with pytest.raises(UpstreamError) as unreachable:  # the proxy is gone: the server went away after the load
        runtime.classify(images()[:1])
    error = unreachable.value
    assert (error.status_code, error.code, error.retryable, error.breaker_failure) == (
        502, "upstream_unreachable", True, True)


def test_the_workers_token_is_needed(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "not-the-token")
    with pytest.raises(UpstreamAuthFailed):
        make()


def test_a_catalog_entry_served_by_the_model_manager(worker: WorkerProcess, tmp_path: Path,
                                                     local: OnnxVisionRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator writes (docs/scaling.md): a catalog YAML entry, loaded and batched by the manager."""
    monkeypatch.setenv(ENV, TOKEN)
    entry = {"models": [{"id": "mango-remote", "tasks": ["classify"], "runtime": "oip-v2", "license": "MIT",
                         "source": {"kind": "builtin"}, "max_concurrent": 4,
                         "batching": {"max_batch_size": 8, "max_wait_ms": 5},
                         "params": {"base_url": worker.url, "model": MODEL, "api_key_env": ENV}}]}
    (tmp_path / "remote.yaml").write_text(json.dumps(entry))
    manager = ModelManager(Catalog.load([tmp_path]), ModelRepository(tmp_path / "models"))
    batch = images()

    async def run() -> list[np.ndarray]:
        try:
            loaded = await manager.load("mango-remote")
            assert (await loaded.info()).labels == local.labels
            rows = await asyncio.gather(*(loaded.classify([image]) for image in batch))
            return [row for result in rows for row in result]
        finally:
            await manager.close()

    np.testing.assert_allclose(np.stack(asyncio.run(run())), local.classify(batch), atol=1e-5)


def test_a_triton_onnx_model_gets_the_tensor_onnx_runtime_takes(local: OnnxVisionRuntime) -> None:
    """A Triton or KServe model wants normalised floats of a fixed size: declared with onnx_vision's
    params, the FP32 NCHW tensor on the wire is the one ONNX Runtime takes here, and the model run
    on those very bytes answers as the local runtime does. The metadata is Triton's for an ONNX
    model with max_batch_size 8 (a batch axis of -1), then 0 (no batch axis)."""
    mango = local.params
    params = {"base_url": "http://triton:8000", "model": "mango_onnx", "datatype": "FP32", "scores": "logits",
              **{k: mango[k] for k in ("resize", "interpolation", "scale", "mean", "std")}}
    spec = ModelSpec.model_validate({"id": "mango-triton", "tasks": ["classify"], "runtime": "oip-v2",
                                     "license": "MIT", "source": {"kind": "builtin"}, "params": params})

    def adopted(shape: list[int], **more: Any) -> OipV2Runtime:
        runtime = OipV2Runtime(spec.model_copy(update={"params": {**params, **more}}), None)
        runtime._check_more_params()
        runtime._adopt({"name": "mango_onnx", "versions": ["1"], "platform": "onnxruntime_onnx",
                        "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
                        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [*shape[:-3], 7]}]})
        return runtime

    batch = images()
    runtime = adopted([-1, 3, 224, 224])
    assert (runtime.input_tensor, runtime.output_tensor, runtime.layout, runtime.batched) == (
        "input", "logits", "NCHW", True)
    (request,) = runtime.encode(batch)  # every photo is 224x224 once resized: one request
    assert request.header_length is not None
    head = json.loads(request.body[:request.header_length])
    assert head["inputs"][0]["shape"] == [4, 3, 224, 224] and head["inputs"][0]["datatype"] == "FP32"
    tensor = np.frombuffer(request.body[request.header_length:], dtype="<f4").reshape(4, 3, 224, 224)
    np.testing.assert_array_equal(tensor, local.preprocess(batch))
    np.testing.assert_allclose(local.run_tensor(tensor.copy()), local.classify(batch), atol=1e-6)

    unbatched = adopted([3, 224, 224]).encode(batch)
    assert len(unbatched) == 4 and all(json.loads(r.body[:r.header_length])["inputs"][0]["shape"] == [3, 224, 224]
                                       for r in unbatched if r.header_length is not None)
    with pytest.raises(ModelUnavailable, match=r"takes 256x256 images but params\.resize/crop make 224x224"):
        adopted([-1, 3, 256, 256])
    with pytest.raises(ModelUnavailable, match="declare the preprocessing"):
        adopted([-1, 3, 224, 224], resize=None)


def test_the_catalog_examples_in_docs_scaling_are_valid() -> None:
    """Every YAML example of docs/scaling.md is a valid catalog entry (or route) of a registered
    runtime able to do its tasks, and its oip-v2 params are ones the parameter table documents."""
    import re

    import yaml

    from kaset.registry.catalog import RouteSpec
    from kaset.runtimes import runtime_class
    from kaset.runtimes.base import TASK_CONTRACTS

    text = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")
    documented = {name for row in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", text, re.M)
                  for name in re.findall(r"`(\w+)`", row)}
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    specs = [ModelSpec.model_validate(m) for block in blocks for m in block.get("models", [])]
    routes = [RouteSpec.model_validate(r) for block in blocks for r in block.get("routes", [])]
    assert {s.runtime for s in specs} == {"openai-compatible", "oip-v2"} and len(routes) == 1
    for spec in specs:
        assert all(issubclass(runtime_class(spec.runtime), TASK_CONTRACTS[t]) for t in spec.tasks)
        if spec.runtime == "oip-v2":
            assert set(spec.params) <= documented, set(spec.params) - documented
