"""Circuit breakers, one per upstream: stop calling a server that keeps failing.

The upstream of a model (`upstream_of`) is its provider's `base_url` (every model served by that
server shares it), else the model's id@version. `breaker_failures` consecutive breaker failures
(upstream 5xx, timeouts, load failures, unexpected exceptions; never 429s, overload or the
caller's own errors, however many: see "Whose fault" in `kaset.registry.fallbacks`) open it;
while open, calls to that upstream fail fast (a route skips to its next candidate, a plain model
name gets 503 `circuit_open` with Retry-After); after `breaker_cooldown_s` it is half open and
lets exactly one trial call through (others still fail fast); the trial's success closes it, its
failure opens it for another cool-down. Breaker state lives in this gateway process: replicas
each learn an upstream's health on their own (a shared store would put a network round trip on
every call to save a handful of failed calls per replica).

The router keeps one `Breaker` per upstream (`kaset.registry.fallbacks` drives them); the worker
pool keeps one per worker replica (`kaset.workers.pool`).

Why not a library for the breaker: pybreaker guards sync calls (async only through Tornado);
aiobreaker, its asyncio fork, has had no release since 2021; purgatory's async API awaits a
unit of work and a message bus on every call (more than this gateway's whole per-request
budget) and lets state be shared in Redis, which is not wanted here; circuitbreaker (fabfuel)
keeps a process-global registry and lets every concurrent call through while half open
instead of one trial. The breaker below is ~50 lines, runs on the event loop only (no locks)
and costs a dict lookup per call while no upstream has ever failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from kaset.errors import ModelUnavailable

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


class CircuitOpen(ModelUnavailable):
    """The upstream's breaker is open: calls fail fast until its cool-down ends."""

    code = "circuit_open"
    # Nothing was called, so nothing failed; after Retry-After the upstream gets a trial call.
    retryable = True
    breaker_failure = False

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, -int(-self.retry_after // 1)))}


class Breaker:
    """One upstream's circuit breaker (consecutive failures; see the module docstring)."""

    __slots__ = ("clock", "cooldown_s", "failures", "opened_at", "state", "threshold", "trial", "upstream")

    def __init__(self, upstream: str, threshold: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        # A half-open breaker's one trial call is running.
        self.trial = False

    def admit(self) -> bool:
        """Whether a call may go to the upstream now (in half-open state: the one trial call)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.state = "half_open"
            self.trial = False
        if self.trial:
            return False
        self.trial = True
        return True

    def succeeded(self) -> None:
        if self.state != "closed":
            log.info("breaker for %s closed: a call succeeded", self.upstream)
        self.state = "closed"
        self.failures = 0
        self.trial = False

    def failed(self) -> None:
        self.failures += 1
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            log.warning("breaker for %s opened after %d consecutive failure(s); failing fast for %g s",
                        self.upstream, self.failures, self.cooldown_s)
            self.state = "open"
            self.opened_at = self.clock()
            self.trial = False

    def released(self) -> None:
        """The call neither proved nor disproved the upstream (cancelled, busy, the caller's 4xx)."""
        self.trial = False

    def retry_after(self) -> float:
        """Seconds until a call may go again (the rest of the cool-down; 1 while a trial runs)."""
        if self.state == "open":
            return max(0.0, self.opened_at + self.cooldown_s - self.clock())
        return 1.0 if self.state == "half_open" else 0.0

    def current_state(self) -> BreakerState:
        """The state as a scrape should see it: open turns half-open once the cool-down is over."""
        if self.state == "open" and self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return self.state


def upstream_of(spec: ModelSpec) -> str:
    """The breaker key of a model: its provider's base URL (scheme, host, port, path; never
    credentials), else its id@version."""
    base_url = spec.params.get("base_url")
    if not base_url and spec.runtime == "gemini":
        from kaset.runtimes.gemini import DEFAULT_BASE_URL
        base_url = DEFAULT_BASE_URL
    if not isinstance(base_url, str) or not base_url:
        return spec.key
    parts = urlsplit(base_url.strip())
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"
