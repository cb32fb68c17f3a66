"""The Open Inference Protocol (KServe v2) on the wire: a tensor into an infer request, a reply
back into the output tensor. `kaset.runtimes.oip_v2` builds the tensor from the images and
speaks to the server; this module only knows the protocol.

Requests use the binary tensor data extension (the JSON head, the raw little-endian bytes, the
head's length in `Inference-Header-Content-Length`), byte for byte what tritonclient's
`InferInput(...).set_data_from_numpy(binary_data=True)` and `InferRequestedOutput(binary_data=True)`
build (tests/runtimes/test_oip_v2.py compares), or plain JSON (`binary_input: false`). Replies are
read binary or JSON alike; a BYTES output (the classification extension's "score:index:label"
strings) as a list of byte strings. A reply that cannot be read raises `BadReply`, whose text
says what the server sent, for the runtime's error.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
SCORE_TYPES = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8"}


class BadReply(ValueError):
    """A reply that is not what the protocol says; the text completes "the server sent ..."."""


@dataclass
class WireRequest:
    """One infer request as it goes on the wire."""

    rows: list[int]  # the images of the call it carries, in tensor order
    body: bytes
    header_length: int | None  # the JSON head's length when binary tensor data follows it


def infer_request(rows: list[int], tensor: np.ndarray, *, input_tensor: str | None, datatype: str | None,
                  output_tensor: str | None, binary_input: bool, binary_output: bool,
                  classification: int = 0) -> WireRequest:
    """The request that sends `tensor` (little-endian, contiguous) as the input and asks for the
    output, with `classification` > 0 as that many "score:index:label" strings."""
    # Key order and the compact JSON are tritonclient's, so the bytes are the same as its own.
    described: dict[str, Any] = {"name": input_tensor, "shape": list(tensor.shape), "datatype": datatype}
    raw = tensor.tobytes()
    if binary_input:
        described["parameters"] = {"binary_data_size": len(raw)}
    else:
        described["data"] = tensor.reshape(-1).tolist()
    output: dict[str, Any] = {"classification": classification} if classification else {}
    output["binary_data"] = binary_output
    head = json.dumps({"inputs": [described], "outputs": [{"name": output_tensor, "parameters": output}]},
                      separators=(",", ":")).encode()
    return WireRequest(rows, head + raw, len(head)) if binary_input else WireRequest(rows, head, None)


def request_headers(request: WireRequest) -> dict[str, str]:
    """The content headers of a request: its type, and the JSON head's length when binary data follows."""
    if request.header_length is None:
        return {"Content-Type": "application/json"}
    return {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(request.header_length)}


def read_output(body: bytes, header_length: str | None, name: str | None) -> tuple[Any, str, Any]:
    """The output tensor `name` of a reply: (values, datatype, shape), binary or JSON."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadReply(f"an {HEADER_LENGTH} of {header_length!r} for {len(body)} bytes")
        size = int(header_length)
    head = json_object(body[:size])
    offset = size
    outputs: list[Any] = head["outputs"] if isinstance(head.get("outputs"), list) else []
    for output in outputs:
        if not isinstance(output, dict):
            continue
        parameters: dict[str, Any] = output["parameters"] if isinstance(output.get("parameters"), dict) else {}
        length = parameters.get("binary_data_size")
        raw = body[offset:offset + length] if isinstance(length, int) else None
        offset += length if isinstance(length, int) else 0
        if output.get("name") != name:
            continue
        datatype, shape = str(output.get("datatype", "")).upper(), output.get("shape")
        try:
            if datatype == "BYTES":
                return (byte_strings(raw) if raw is not None else list(_flat(output.get("data")))), datatype, shape
            if raw is not None:
                return np.frombuffer(raw, dtype=SCORE_TYPES[datatype]), datatype, shape
            return np.asarray(list(_flat(output.get("data"))), dtype=np.float64), datatype, shape
        except (KeyError, ValueError, TypeError, struct.error):
            raise BadReply(f"an output '{name}' of {datatype} that cannot be read") from None
    names = ", ".join(str(o.get("name")) for o in outputs if isinstance(o, dict)) or "none"
    raise BadReply(f"a reply without the output '{name}' (it has: {names})")


def json_object(body: bytes) -> dict[str, Any]:
    reply = json_or_none(body)
    if not isinstance(reply, dict):
        raise BadReply("a reply that is not a JSON object")
    return reply


def json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None


def tensors(value: Any) -> dict[str, dict[str, Any]]:
    """The tensors of a model's metadata (its `inputs` or `outputs`) by name."""
    listed = value if isinstance(value, list) else []
    return {str(t["name"]): t for t in listed if isinstance(t, dict) and "name" in t}


def byte_strings(raw: bytes) -> list[bytes]:
    """A BYTES tensor in the binary extension: each element a 4-byte little-endian length, then bytes."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items


def _flat(data: Any) -> Any:
    for item in data if isinstance(data, list) else []:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item
