"""Seconds spent inside models for the current request.

The gateway's middleware opens a bucket per request; every model call adds to it, wherever the
model runs (`kaset.registry.loaded_model` in this process, `kaset.workers.remote` on a worker),
and the middleware subtracts the total from the request's wall time to report its own overhead
(the x-kaset-overhead-ms header).
"""

from __future__ import annotations

import contextvars

# A one-item list so calls in other tasks of the same request add to the same total.
inference_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "inference_seconds", default=None
)


def add_inference_time(seconds: float) -> None:
    """Count `seconds` of model time against the current request (nothing outside a request)."""
    bucket = inference_seconds.get()
    if bucket is not None:
        bucket[0] += seconds
