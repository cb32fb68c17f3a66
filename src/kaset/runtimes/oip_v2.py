"""Image classifiers served by an Open Inference Protocol (KServe v2) server: Triton, KServe, another Kaset.

A provider adapter, as `openai_compatible` is for chat: the model runs in another server (Triton
or KServe in the cluster, a kaset worker's `/v2`); Kaset sends it the images and reads the
scores. The HTTP plumbing (loop thread, sessions, key) is `provider.ProviderClient`'s, the
tensors on the wire `provider.oip_wire`'s; this module turns images into tensors and back.

- Load: `GET {base}/v2/models/{model}[/versions/{v}]/ready` (200 is ready, as for tritonclient's
  `is_model_ready`), then the model's metadata. What the catalog leaves out is taken from it
  (the one input, or Kaset's `IMAGE`; the one output, or `PROBABILITIES`; the datatype; the
  layout, from the axis of size 3; a batch axis, absent at rank 3 as for a Triton model with
  `max_batch_size: 0`; a fixed image size) and what it says is checked against it, so a wrong
  tensor name fails the load naming the server's tensors. Then a mid-grey probe image is
  classified: the whole path works, and its number of classes must match the labels. Labels
  come from the catalog (`labels`, or `labels_file`: a JSON list or Triton's one-per-line file)
  or else from the server's classification extension (an output asked with
  `parameters.classification = k` is "score:index:label" strings), which Kaset's `/v2` and a
  Triton model with a `label_filename` answer.
- Infer: the images as one tensor in the binary tensor data extension, byte for byte what
  tritonclient builds, or plain JSON with `binary_input` / `binary_output: false`; the protocol
  itself is `kaset.runtimes.provider.oip_wire`'s.

Images: Kaset's `/v2` takes RGB uint8 pixels of any size and preprocesses them itself. A Triton
or KServe model usually wants normalised floats of one size: the catalog declares `datatype:
FP32` (or FP16) and `onnx_vision`'s preprocessing params (resize, crop, interpolation, scale,
mean, std, channel_order), and the tensor is built as `onnx_vision` builds it. Images of
different sizes go in separate requests (a tensor has one shape), each of at most `max_batch`
images and `max_request_bytes`, sent concurrently; a photo bigger than that alone is shrunk to
fit (a server refuses a body past its limit). A catalog `batching:` entry merges concurrent
callers' images into one request.

Errors: unreachable, timeouts and 5xx are upstream errors, retryable and breaker failures. Not
ready (or unreachable) at load, and a 4xx to a request built from valid images (the catalog
entry does not match the server's model), are the model being unavailable: ModelUnavailable
(503, a breaker failure, no retry of the same model) with the codes `upstream_not_ready` and
`upstream_rejected`. Both quote the server's words: OIP's `{"error": "..."}` or Kaset's
envelope. Async-native: `aclassify` runs on the caller's loop (tensors built in a thread:
resizing is CPU work); the blocking `classify`, which the model manager and its batcher call
in the model's executor, runs the same coroutine on the runtime's loop thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import numpy as np

from kaset.errors import InvalidRequest, KasetError, ModelUnavailable, UpstreamError
from kaset.runtimes.base import ImageClassifier
from kaset.runtimes.onnx_vision import (
    DEFAULT_SCALE,
    INTERPOLATIONS,
    _channels,
    _size_param,
    center_crop,
    resized_size,
    softmax,
)
from kaset.runtimes.provider import ProviderClient, UpstreamErrorInfo
from kaset.runtimes.provider.oip_wire import (
    HEADER_LENGTH,
    BadReply,
    WireRequest,
    infer_request,
    json_object,
    json_or_none,
    read_output,
    request_headers,
    tensors,
)

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

DEFAULT_MAX_BATCH = 32
# Tensor bytes in one request: below a kaset worker's default body limit (25 MiB) and Triton's (64 MB).
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
# The probe image when nothing fixes a size (Kaset's /v2 takes any).
PROBE_SIZE = (224, 224)
PIXEL_TYPES = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}
# ModelUnavailable's codes: down or not ready at load (the load is tried again on a later
# request), and a 4xx from the server.
NOT_READY = "upstream_not_ready"
REJECTED = "upstream_rejected"


class OipV2Runtime(ProviderClient, ImageClassifier):
    """params, besides ProviderClient's (base_url: the server's root, e.g. http://triton:8000,
    a trailing /v2 is dropped; api_key_env / api_key_file: a Bearer token, e.g. a kaset worker's
    KASET_WORKER_TOKEN or a gateway key): model (the server's name, required), model_version,
    input_tensor, output_tensor, datatype (UINT8 | FP32 | FP16), layout (NHWC | NCHW), labels or
    labels_file, scores (probabilities | logits: softmax is applied), max_batch (default 32),
    max_request_bytes (default 16 MiB), binary_input / binary_output and check_ready (default
    true), and `onnx_vision`'s resize, crop, interpolation, scale, mean, std, channel_order.
    """

    provider: ClassVar[str] = "oip-v2"
    async_native: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, model_dir: Path | None) -> None:
        super().__init__(spec, model_dir)
        p = self.params
        self.base_url = self.base_url.removesuffix("/v2")
        self.model = str(p.get("model") or "")
        self.model_version = str(p.get("model_version") or "")
        self.input_tensor = str(p["input_tensor"]) if p.get("input_tensor") else None
        self.output_tensor = str(p["output_tensor"]) if p.get("output_tensor") else None
        self.datatype = str(p["datatype"]).upper() if p.get("datatype") else None
        self.layout = str(p["layout"]).upper() if p.get("layout") else None
        self.scores = str(p.get("scores", "probabilities")).lower()
        self.max_batch = int(p.get("max_batch", DEFAULT_MAX_BATCH))
        self.max_request_bytes = int(p.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))
        self.binary_input = bool(p.get("binary_input", True))
        self.binary_output = bool(p.get("binary_output", True))
        self.check_ready = bool(p.get("check_ready", True))
        self.batched = True
        self._itemsize = 1  # bytes per value of the tensor sent, set by the metadata
        self._labels: list[str] = []

    # --- params ---------------------------------------------------------------------------------

    def _check_more_params(self) -> None:
        who = f"Model '{self.spec.id}'"
        if not self.model:
            raise ModelUnavailable(f"{who}: params.model (the OIP server's model name) is missing.")
        if self.datatype is not None and self.datatype not in PIXEL_TYPES:
            raise ModelUnavailable(f"{who}: params.datatype must be one of {', '.join(PIXEL_TYPES)}.")
        if self.layout not in (None, "NHWC", "NCHW") or self.scores not in ("probabilities", "logits"):
            raise ModelUnavailable(f"{who}: params.layout must be NHWC or NCHW, params.scores probabilities "
                                   "or logits.")
        if self.max_batch < 1 or self.max_request_bytes < 1024:
            raise ModelUnavailable(f"{who}: params.max_batch must be at least 1, max_request_bytes 1024.")
        p = self.params
        try:
            resize = p.get("resize")
            self._resize_shorter = resize if isinstance(resize, int) and resize > 0 else None
            self._resize_exact = None if self._resize_shorter else _size_param(resize, "resize")
            self._crop = _size_param(p.get("crop"), "crop")
            mean, std = _channels(p.get("mean"), 0.0, "mean"), _channels(p.get("std"), 1.0, "std")
        except ValueError as exc:
            raise ModelUnavailable(f"{who}: {exc}") from None
        interpolation = str(p.get("interpolation", "bilinear")).lower()
        if interpolation not in INTERPOLATIONS or np.any(std == 0):
            raise ModelUnavailable(f"{who}: params.interpolation must be one of {INTERPOLATIONS}, params.std "
                                   "must not be zero.")
        self._interpolation = interpolation
        self._normalised = any(k in p for k in ("scale", "mean", "std"))
        scale = float(p.get("scale", DEFAULT_SCALE))
        self._mul, self._add = (scale / std).astype(np.float32), (-mean / std).astype(np.float32)
        self._bgr = str(p.get("channel_order", "RGB")).upper() == "BGR"
        self._catalog_labels = self._read_labels()

    def _read_labels(self) -> list[str] | None:
        labels, path = self.params.get("labels"), self.params.get("labels_file")
        if labels is None and path:
            try:
                text = Path(str(path)).read_text(encoding="utf-8")
                labels = json.loads(text) if str(path).endswith(".json") else [ln.strip() for ln in text.splitlines()
                                                                                 if ln.strip()]
            except (OSError, ValueError):
                raise ModelUnavailable(f"Model '{self.spec.id}': cannot read params.labels_file {path}.") from None
        if labels is not None and not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise ModelUnavailable(f"Model '{self.spec.id}': the labels must be a non-empty list of names.")
        return None if labels is None else list(labels)

    # --- lifecycle ------------------------------------------------------------------------------

    def load(self) -> None:
        """Check the params, then ask the server: ready, metadata, one probe (and the labels)."""
        super().load()
        try:
            # Up to four requests in a row (ready, metadata, probe, labels), each within timeout_s.
            self._call(self._aload(), wait_s=4 * self.timeout_s)
        except BaseException:
            self.unload()
            raise

    async def _aload(self) -> None:
        if self.check_ready:
            await self._ready()
        async with self._open("GET", self._url()) as response:
            metadata = self._json_object(await response.read())
        self._adopt(metadata)
        probe = np.full((*(self._size or PROBE_SIZE), 3), 128, dtype=np.uint8)
        scores = await self._infer(self.encode([probe])[0], 1)
        classes = scores.shape[1]
        labels = self._catalog_labels or await self._upstream_labels(probe, classes)
        if len(labels) != classes:
            raise ModelUnavailable(f"Model '{self.spec.id}': the OIP model '{self.model}' gives {classes} scores "
                                   f"per image but the catalog names {len(labels)} labels.")
        self._labels = labels

    async def _ready(self) -> None:
        """200, or ModelUnavailable (upstream_not_ready); a refused key is UpstreamAuthFailed."""
        session = self._require_session()
        try:
            async with self._upstream_errors(), session.get(self._url("ready"), headers=self._headers(),
                                                            timeout=self._timeout) as response:
                if response.status == 200:
                    return
                info = self._parse_error(json_or_none(await response.content.read(64 * 1024)))
        except UpstreamError as exc:
            # Down at load is "not ready" (503): the load is tried again on a later request.
            raise ModelUnavailable(f"{exc.message} The model '{self.spec.id}' cannot load until "
                                   f"{self.base_url} answers.", code=NOT_READY) from None
        if response.status in (401, 403):
            raise self._error_for(response.status, info, "", None)
        quoted = f': "{self.scrub(info.message)}"' if info.message else ""
        raise ModelUnavailable(f"{self._who()} says its model '{self.model}' is not ready (HTTP "
                               f"{response.status}){quoted}.", code=NOT_READY)

    def _adopt(self, metadata: dict[str, Any]) -> None:
        """The tensor names, datatype, layout, batch axis and image size: the catalog's, checked
        against the server's metadata, or the metadata's where the catalog says nothing."""
        inputs = tensors(metadata.get("inputs"))
        outputs = tensors(metadata.get("outputs"))
        self.input_tensor = self._pick("input", self.input_tensor, inputs, "IMAGE")
        self.output_tensor = self._pick("output", self.output_tensor, outputs, "PROBABILITIES")
        wanted = inputs.get(self.input_tensor, {})
        served = str(wanted.get("datatype") or "").upper() or None
        if self.datatype and served and self.datatype != served:
            raise self._mismatch(f"its input '{self.input_tensor}' is {served}, not {self.datatype}")
        self.datatype = self.datatype or served or "UINT8"
        if self.datatype not in PIXEL_TYPES:
            raise self._mismatch(f"its input '{self.input_tensor}' is {self.datatype}; this runtime sends "
                                 f"{', '.join(PIXEL_TYPES)} pixels")
        self._itemsize = np.dtype(PIXEL_TYPES[self.datatype]).itemsize
        if self.datatype == "UINT8" and self._normalised:
            raise self._mismatch("it takes UINT8 pixels, which scale/mean/std cannot apply to")
        shape = [int(d) for d in wanted.get("shape") or []]
        if shape and len(shape) not in (3, 4):
            raise self._mismatch(f"its input '{self.input_tensor}' has shape {shape}, not an image batch")
        self.batched = len(shape) != 3
        if shape and self.batched and shape[0] > 1:
            raise self._mismatch(f"it takes batches of exactly {shape[0]} images")
        if shape and self.batched and shape[0] == 1:
            self.max_batch = 1
        image = shape[1:] if self.batched else shape
        if self.layout is None:
            self.layout = "NCHW" if image and image[0] == 3 and image[-1] != 3 else "NHWC"
        spatial = (image[1:3] if self.layout == "NCHW" else image[0:2]) if image else []
        fixed = tuple(spatial) if len(spatial) == 2 and all(d > 0 for d in spatial) else None
        self._size = self._crop or self._resize_exact
        if fixed and self._size and fixed != self._size:
            raise self._mismatch(f"it takes {fixed[0]}x{fixed[1]} images but params.resize/crop make "
                                 f"{self._size[0]}x{self._size[1]}")
        if fixed and not self._size:
            raise self._mismatch(f"it takes {fixed[0]}x{fixed[1]} images: declare the preprocessing that makes "
                                 "them (params.resize, and crop)")

    def _pick(self, kind: str, named: str | None, tensors: dict[str, dict[str, Any]], kaset: str) -> str:
        listed = ", ".join(f"{n} ({t.get('datatype')} {t.get('shape')})" for n, t in tensors.items()) or "none"
        if named is not None:
            if tensors and named not in tensors:
                raise self._mismatch(f"it has no {kind} tensor '{named}'; its {kind}s are: {listed}")
            return named
        if len(tensors) == 1:
            return next(iter(tensors))
        if kaset in tensors or not tensors:
            return kaset
        raise self._mismatch(f"it has several {kind}s ({listed}): name one in params.{kind}_tensor")

    def _mismatch(self, what: str) -> ModelUnavailable:
        return ModelUnavailable(f"Model '{self.spec.id}' does not match the OIP model '{self.model}' at "
                                f"{self.base_url}: {what}.")

    async def _upstream_labels(self, probe: np.ndarray, classes: int) -> list[str]:
        """Every class's label, from the classification extension ("score:index:label")."""
        strings = await self._infer(self.encode([probe], classification=classes)[0], 1, classification=True)
        labels: dict[int, str] = {}
        for item in strings:
            parts = item.split(":", 2)
            if len(parts) == 3 and parts[1].isdigit():
                labels[int(parts[1])] = parts[2]
        if sorted(labels) != list(range(classes)):
            raise ModelUnavailable(f"Model '{self.spec.id}': the OIP model '{self.model}' does not name its "
                                   f"classes (it answered {strings[:2]}); put params.labels or labels_file in "
                                   "the catalog.")
        return [labels[i] for i in range(classes)]

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    # --- classify -------------------------------------------------------------------------------

    def classify(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self._labels)), dtype=np.float32)
        requests = self.encode(images)  # CPU work, in the calling (executor) thread
        return self._call(self._run(requests, len(images)))

    async def aclassify(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self._labels)), dtype=np.float32)
        requests = await asyncio.to_thread(self.encode, images)
        return await self._run(requests, len(images))

    async def _run(self, requests: list[WireRequest], count: int) -> np.ndarray:
        results = await _all([self._infer(r, len(r.rows)) for r in requests])
        probabilities = np.empty((count, len(self._labels)), dtype=np.float32)
        for request, scores in zip(requests, results, strict=True):
            if scores.shape[1] != len(self._labels):
                raise self._bad_reply(f"{scores.shape[1]} scores per image for a model with {len(self._labels)} "
                                      "labels")
            probabilities[request.rows] = scores
        return probabilities

    # --- the wire format ------------------------------------------------------------------------

    def encode(self, images: list[np.ndarray], classification: int = 0) -> list[WireRequest]:
        """The infer requests that carry `images`: images of one size, at most max_batch of them
        and max_request_bytes of tensor in each."""
        pixels = [self._preprocess(image) for image in images]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for row, array in enumerate(pixels):
            by_shape.setdefault(array.shape, []).append(row)
        step = self.max_batch if self.batched else 1
        requests = []
        for shape, rows in by_shape.items():
            per_request = max(1, min(step, self.max_request_bytes // (int(np.prod(shape)) * self._itemsize)))
            requests += [self._request(rows[i:i + per_request], pixels, classification)
                         for i in range(0, len(rows), per_request)]
        return requests

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise InvalidRequest(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        target = resized_size(height, width, self._resize_shorter) if self._resize_shorter else self._resize_exact
        if target is None and height * width * 3 * self._itemsize > self.max_request_bytes:
            # Sent as it is, this photo alone would pass the server's body limit (a kaset worker
            # refuses more than KASET_MAX_UPLOAD_BYTES): shrink it to fit, keeping its shape.
            factor = (self.max_request_bytes / (height * width * 3 * self._itemsize)) ** 0.5
            target = (max(1, int(height * factor)), max(1, int(width * factor)))
        if target is not None and target != (height, width):
            resample = getattr(Image.Resampling, self._interpolation.upper())
            image = np.asarray(Image.fromarray(image).resize((target[1], target[0]), resample))
        return center_crop(image, *self._crop) if self._crop is not None else image

    def _request(self, rows: list[int], pixels: list[np.ndarray], classification: int) -> WireRequest:
        batch = np.stack([pixels[r] for r in rows])
        if self._bgr:
            batch = batch[..., ::-1]
        tensor: np.ndarray = batch
        if self.datatype != "UINT8":
            floats = batch.astype(np.float32) * self._mul + self._add
            tensor = floats.astype(PIXEL_TYPES[self.datatype or "FP32"])
        if self.layout == "NCHW":
            tensor = tensor.transpose(0, 3, 1, 2)
        if not self.batched:
            tensor = tensor[0]
        tensor = np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<"))
        return infer_request(rows, tensor, input_tensor=self.input_tensor, datatype=self.datatype,
                             output_tensor=self.output_tensor, binary_input=self.binary_input,
                             binary_output=self.binary_output, classification=classification)

    def _url(self, suffix: str = "") -> str:
        url = f"{self.base_url}/v2/models/{quote(self.model, safe='')}"
        if self.model_version:
            url += f"/versions/{quote(self.model_version, safe='')}"
        return f"{url}/{suffix}" if suffix else url

    async def _infer(self, request: WireRequest, count: int, classification: bool = False) -> Any:
        """Scores (count, classes) of one request; with `classification`, its strings."""
        headers = {**self._headers(), **request_headers(request)}
        async with self._open("POST", self._url("infer"), data=request.body, headers=headers) as response:
            body = await response.read()
            length = response.headers.get(HEADER_LENGTH)
        try:
            values, datatype, shape = read_output(body, length, self.output_tensor)
        except BadReply as exc:
            raise self._bad_reply(str(exc)) from None
        if classification:
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
        if datatype == "BYTES" or not values.size or values.size % count:
            raise self._bad_reply(f"an output '{self.output_tensor}' of {datatype} {shape} for {count} image(s)")
        scores = values.astype(np.float32).reshape(count, -1)
        return softmax(scores) if self.scores == "logits" else scores

    def _json_object(self, body: bytes) -> dict[str, Any]:
        try:
            return json_object(body)
        except BadReply as exc:
            raise self._bad_reply(str(exc)) from None

    # --- errors ---------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _who(self) -> str:
        return f"The OIP server behind model '{self.spec.id}'"

    def _parse_error(self, body: Any) -> UpstreamErrorInfo:
        # OIP (Triton, KServe): {"error": "text"}; Kaset and OpenAI-style: {"error": {"message", "code"}}.
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return UpstreamErrorInfo(message=str(error.get("message") or ""), status=str(error.get("code") or ""))
        if isinstance(body, dict) and error is None and "detail" in body:
            return UpstreamErrorInfo(message=str(body["detail"]))  # a FastAPI server's own 4xx
        return UpstreamErrorInfo(message=str(error) if error is not None else "")

    def _error_for(self, status: int, info: UpstreamErrorInfo, message: str,
                   retry_after: float | None) -> KasetError:
        said = f'"{message}"' if message else "no message"
        if 400 <= status < 500 and status not in (401, 403, 408, 429) and not info.auth:
            # Valid images, refused: the entry does not match the server's model. Misconfigured,
            # so unavailable (a breaker failure) and not worth retrying on this model.
            return ModelUnavailable(f"{self._who()} refused the request for its model '{self.model}' (HTTP "
                                    f"{status}): {said}. An operator must check the model's catalog entry "
                                    "(model, tensor names, datatype, preprocessing).", code=REJECTED)
        if status >= 500 and status != 504:
            return UpstreamError(f"{self._who()} failed (HTTP {status}): {said}.")
        # 401/403 (the key; the server's words withheld), 408/504 (timeouts), 429: as for every provider.
        return super()._error_for(status, info, message, retry_after)


# --- helpers -----------------------------------------------------------------------------------


async def _all(calls: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run the calls concurrently; the first failure cancels the others and is raised as it is
    (a TaskGroup would wrap it in an ExceptionGroup, which is no KasetError)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
