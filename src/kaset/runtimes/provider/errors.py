"""How a provider's failures become KasetErrors a client can act on, and the key kept out of them.

The class of the error says whose fault it is: the provider's 5xx, timeouts and unreachable
servers are breaker failures (UpstreamError, UpstreamTimeout), its 429 is retryable only
(UpstreamRateLimited), and its 400/413/422 about the request's own content are the caller's
(InvalidRequest, PayloadTooLarge), never counted against it. A refused key (401/403, or a body
that says so whatever the status) is UpstreamAuthFailed, and the provider's words are withheld
from it and from the log: some echo part of the key back. Every other upstream text that
reaches a client or a log line is scrubbed of the key and cut short (`scrub`).

`UpstreamErrorMapping` is mixed into `ProviderClient`; a provider runtime shapes the mapping by
overriding its hooks: `_parse_error` (the provider's error body), `_who` and `_unknown_route`
(the wording), `_error_for` (a different mapping of some statuses, as OIP v2's).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from kaset.errors import (
    InvalidRequest,
    KasetError,
    PayloadTooLarge,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from kaset.registry.catalog import ModelSpec

log = logging.getLogger("kaset.runtimes.provider")

MAX_ERROR_CHARS = 300
MAX_ERROR_BODY = 64 * 1024
REDACTED = "[redacted]"


@dataclass
class UpstreamErrorInfo:
    """What a provider's error body says, parsed by the provider-specific runtime."""

    message: str = ""
    status: str = ""  # e.g. Gemini's "RESOURCE_EXHAUSTED", OpenAI's error type/code
    auth: bool = False  # the body says the key is bad, whatever the HTTP status
    retry_after: float | None = None


class UpstreamErrorMapping:
    """The error side of a provider runtime. Mixed into `ProviderClient`, which sets the
    attributes declared here."""

    provider: ClassVar[str] = "provider"
    spec: ModelSpec
    base_url: str
    timeout_s: float
    _api_key: str | None

    # --- what subclasses implement ----------------------------------------------------------

    def _parse_error(self, body: Any) -> UpstreamErrorInfo:
        """The provider's error body, whatever its shape; `body` is parsed JSON or None."""
        return UpstreamErrorInfo()

    def _unknown_route(self) -> str:
        """What a 404 says the provider does not know, for the error message."""
        return "the route"

    def _who(self) -> str:
        return f"The provider behind model '{self.spec.id}'"

    # --- the mapping ------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """`text` without the API key, cut to a length fit for an error message."""
        if self._api_key:
            text = text.replace(self._api_key, REDACTED)
        text = " ".join(text.split())
        return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"

    @contextlib.asynccontextmanager
    async def _upstream_errors(self) -> AsyncIterator[None]:
        """Timeouts and connection failures become KasetErrors; KasetErrors pass through."""
        try:
            yield
        except KasetError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: TimeoutError | aiohttp.ClientError) -> UpstreamError:
        if isinstance(exc, TimeoutError):
            return self._timeout_error()
        return self._connection_error(exc)

    async def _http_error(self, response: aiohttp.ClientResponse) -> KasetError:
        raw = await response.content.read(MAX_ERROR_BODY)
        return self._reply_error(response.status, response.reason, raw, response.headers.get("Retry-After"))

    def _reply_error(self, status: int, reason: str | None, raw: bytes, retry_after: str | None) -> KasetError:
        """The KasetError of a reply of status >= 400: its status, reason phrase, the start of its
        body (at most MAX_ERROR_BODY bytes) and its Retry-After header."""
        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = None
        info = self._parse_error(body)
        message = self.scrub(info.message or text or reason or "")
        # Auth failures are logged without the provider's words: some echo part of the key.
        said = "(message withheld)" if status in (401, 403) or info.auth else message
        log.warning("%s %s: HTTP %d from %s (%s) %s", self.provider, self.spec.id, status,
                    self.base_url, info.status or "-", said)
        return self._error_for(status, info, message, retry_after_header(retry_after))

    def _error_for(self, status: int, info: UpstreamErrorInfo, message: str,
                   retry_after: float | None) -> KasetError:
        who = self._who()
        if status in (401, 403) or info.auth:
            # Never pass the provider's words on: some echo part of the key back.
            return UpstreamAuthFailed(
                f"{who} refused this server's API key (HTTP {status}). An operator must check the key "
                "configured for this model."
            )
        if status == 429:
            retry = retry_after if retry_after is not None else info.retry_after
            hint = f" Retry after {retry:g} s." if retry is not None else ""
            return UpstreamRateLimited(f"{who} is rate-limiting this server: {message}.{hint}", retry_after=retry)
        if status == 413:
            return PayloadTooLarge(f"{who} says the request is too large: {message}")
        if status in (400, 422):
            return InvalidRequest(f"{who} refused the request: {message}", code="upstream_invalid_request")
        if status == 404:
            return UpstreamError(f"{who} does not know {self._unknown_route()} ({message}). "
                                 "An operator must check the model's catalog entry.")
        if status in (408, 504):
            return UpstreamTimeout(f"{who} timed out (HTTP {status}): {message}")
        return UpstreamError(f"{who} failed (HTTP {status}): {message}")

    def _in_band_error(self, event: dict[str, Any]) -> KasetError:
        info = self._parse_error(event)
        code = event.get("error", {}).get("code") if isinstance(event.get("error"), dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        message = self.scrub(info.message or "error in the stream")
        said = "(message withheld)" if status in (401, 403) or info.auth else message
        log.warning("%s %s: error in the stream from %s: %s", self.provider, self.spec.id, self.base_url, said)
        return self._error_for(status, info, message, None)

    def _timeout_error(self) -> UpstreamTimeout:
        log.warning("%s %s: no answer from %s within %g s", self.provider, self.spec.id, self.base_url,
                    self.timeout_s)
        return UpstreamTimeout(f"{self._who()} did not answer within {self.timeout_s:g} s.")

    def _connection_error(self, exc: aiohttp.ClientError) -> UpstreamError:
        log.warning("%s %s: cannot reach %s: %s", self.provider, self.spec.id, self.base_url,
                    self.scrub(f"{type(exc).__name__}: {exc}"))
        return UpstreamError(f"{self._who()} could not be reached ({type(exc).__name__}).",
                             code="upstream_unreachable")

    def _bad_reply(self, what: str) -> UpstreamError:
        log.warning("%s %s: %s sent %s", self.provider, self.spec.id, self.base_url, what)
        return UpstreamError(f"{self._who()} sent {what}.")


def retry_after_header(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
