"""Errors that reach clients, each mapped to an HTTP status and an OpenAI error envelope.

Runtimes and services raise these; the API layer turns them into
`{"error": {"message", "type", "param", "code"}}` responses. A kaset worker's answers to its
gateway may add `retryable` and `breaker_failure` after those four (`envelope(faults=True)`),
which the gateway's `WorkerError` honours.

Each class says whose fault it is, so routing never guesses from statuses or code strings:

- `retryable`: the failure is transient; the same call a moment later, or on another model,
  may succeed (timeouts, overload, rate limits, an upstream's 5xx).
- `breaker_failure`: the server or the upstream failed, not the request; it counts against
  that upstream's circuit breaker (engine crashes, timeouts, failed loads, an upstream's 5xx).

Neither: the request is the caller's own problem (bad content, auth, not found, the caller's
own rate limit) and is returned at once; no other model and no retry would change it, and a
thousand such requests never open a breaker. A router moves a call to its next model when
either flag is set (kaset.registry.fallbacks). Exceptions that are not KasetErrors and escape an
engine (RuntimeError, OSError from a C library) are the server's fault: `faults()` says both.
So code that decodes a client's content must raise InvalidRequest on bad input where it
decodes, never let the decoder's own exception out.
"""

from __future__ import annotations


class KasetError(Exception):
    """Base class: a problem a client can act on. This base itself is a server error (500)."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None
    retryable: bool = True
    breaker_failure: bool = True

    @staticmethod
    def faults_of_status(status: int) -> tuple[bool, bool]:
        """(retryable, breaker_failure) that a bare HTTP status implies, for an error whose class
        does not say: a subclass that sets its own status and not the flags (as some modules
        above this one do), or a worker's answer without them. What each status always meant
        to routing."""
        if status in (408, 504):
            return True, True  # a timeout
        if status == 429:
            return True, False  # busy: a queue or an upstream's limit (the caller's own is RateLimited)
        if status == 503:
            return False, True  # unavailable: not installed, failed to load
        if status >= 500:
            return True, True
        return False, False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "status_code" in own and isinstance(own["status_code"], int):
            retryable, breaker_failure = KasetError.faults_of_status(own["status_code"])
            if "retryable" not in own:
                cls.retryable = retryable
            if "breaker_failure" not in own:
                cls.breaker_failure = breaker_failure

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def headers(self) -> dict[str, str] | None:
        """Extra response headers (Retry-After on 429s); none by default."""
        return None

    def envelope(self, *, faults: bool = False) -> dict[str, dict[str, str | bool | None]]:
        """OpenAI's error envelope; with `faults`, the two flags after its four keys (for a
        worker's gateway: clients get exactly OpenAI's keys)."""
        error: dict[str, str | bool | None] = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        if faults:
            error["retryable"] = self.retryable
            error["breaker_failure"] = self.breaker_failure
        return {"error": error}


def faults(exc: BaseException) -> tuple[bool, bool]:
    """(retryable, breaker_failure) of any exception: a KasetError's own; any other Exception
    escaping an engine is the server's fault (both); a cancellation proves nothing (neither)."""
    if isinstance(exc, KasetError):
        return exc.retryable, exc.breaker_failure
    if isinstance(exc, Exception):
        return True, True
    return False, False


class InvalidRequest(KasetError):
    """The request is well-formed but its content is wrong (bad value, corrupt file)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    retryable = False
    breaker_failure = False


class AuthenticationFailed(KasetError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"
    retryable = False
    breaker_failure = False


class PermissionDenied(KasetError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"
    retryable = False
    breaker_failure = False


class NotFound(KasetError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"
    retryable = False
    breaker_failure = False


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(KasetError):
    """The request clashes with the current state (a name already taken, the last admin)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"
    retryable = False
    breaker_failure = False


class PayloadTooLarge(KasetError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"
    retryable = False
    breaker_failure = False


class UnsupportedMediaType(KasetError):
    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"
    retryable = False
    breaker_failure = False


class ValidationFailed(KasetError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "validation_error"
    retryable = False
    breaker_failure = False


class ModelUnavailable(KasetError):
    """The model exists in the catalog but cannot serve now (not installed, failed to load)."""

    status_code = 503
    error_type = "server_error"
    code = "model_unavailable"
    # Not installed, failed to load, misconfigured: the server's fault, but no quick retry of
    # this model would help (a route still moves on to its next one).
    retryable = False
    breaker_failure = True


class Overloaded(KasetError):
    status_code = 503
    error_type = "server_error"
    code = "overloaded"
    # Busy, not broken: worth another try, never a breaker failure.
    retryable = True
    breaker_failure = False


class RateLimited(KasetError):
    """A caller's own limit or quota ran out (requests per minute, concurrency, a daily budget).

    `limit` is the rate-limit headers' value set: x-ratelimit-limit / -remaining / -reset
    describe the limit that refused the request, and Retry-After says when to come back.
    """

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    # The caller's own limit: no retry here and no other model would lift it.
    retryable = False
    breaker_failure = False

    def __init__(self, message: str, *, retry_after: float, limit: int, remaining: int = 0,
                 scope: str = "", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.scope = scope

    @property
    def headers(self) -> dict[str, str]:
        seconds = str(max(1, -int(-self.retry_after // 1)))
        return {"Retry-After": seconds, "x-ratelimit-limit": str(self.limit),
                "x-ratelimit-remaining": str(max(self.remaining, 0)), "x-ratelimit-reset": seconds}


class StoreUnavailable(KasetError):
    """A shared store the request needs (Redis) is unreachable."""

    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"
    # The server's own store, not a model's upstream: a later try may succeed; no model's breaker.
    retryable = True
    breaker_failure = False

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class LimitsUnavailable(StoreUnavailable):
    """The shared rate-limit store is unreachable and the server is set to refuse rather than
    serve unmetered (KASET_LIMITS_ON_STORAGE_ERROR=reject)."""

    code = "limits_unavailable"


class ChecksumMismatch(KasetError):
    """A model file does not match the sha256 recorded in the catalog."""

    status_code = 500
    error_type = "server_error"
    code = "checksum_mismatch"
    # The file on disk is wrong: it will be just as wrong on a retry.
    retryable = False
    breaker_failure = True


# --- external providers (OpenAI-compatible servers, Gemini) -------------------------------------


class UpstreamError(KasetError):
    """An external provider failed to answer (5xx, unreachable, malformed reply). The gateway
    itself is fine, hence 502 Bad Gateway rather than 500."""

    status_code = 502
    error_type = "server_error"
    code = "upstream_error"
    retryable = True
    breaker_failure = True


class UpstreamAuthFailed(UpstreamError, ModelUnavailable):
    """The provider refused this server's credentials. It is the operator's configuration, not
    the client's key, that is wrong, so the model is unavailable (503) until the key is fixed."""

    status_code = 503
    error_type = "server_error"
    code = "upstream_auth_failed"
    # The operator's key: counts against the upstream, and no retry fixes it.
    retryable = False
    breaker_failure = True


class UpstreamRateLimited(UpstreamError):
    """The provider said 429. `retry_after` (seconds) is passed on when the provider gave one."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "upstream_rate_limited"
    # The provider is busy (with this server's calls), not broken.
    retryable = True
    breaker_failure = False

    def __init__(self, message: str, *, retry_after: float | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """Response headers for the client: Retry-After in whole seconds (rounded up)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, -int(-self.retry_after // 1)))}


class UpstreamTimeout(UpstreamError):
    """The provider did not answer within the model's `timeout_s`."""

    status_code = 504
    error_type = "server_error"
    code = "upstream_timeout"
    retryable = True
    breaker_failure = True
