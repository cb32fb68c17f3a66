"""Errors that reach clients, each mapped to an HTTP status and an OpenAI error envelope.

Runtimes and services raise these; the API layer turns them into
`{"error": {"message", "type", "param", "code"}}` responses.
"""

from __future__ import annotations


class KasetError(Exception):
    """Base class: a problem a client can act on."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

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

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(KasetError):
    """The request is well-formed but its content is wrong (bad value, corrupt file)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(KasetError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(KasetError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFound(KasetError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(KasetError):
    """The request clashes with the current state (a name already taken, the last admin)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(KasetError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(KasetError):
    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"


class ValidationFailed(KasetError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "validation_error"


class ModelUnavailable(KasetError):
    """The model exists in the catalog but cannot serve now (not installed, failed to load)."""

    status_code = 503
    error_type = "server_error"
    code = "model_unavailable"


class Overloaded(KasetError):
    status_code = 503
    error_type = "server_error"
    code = "overloaded"


class RateLimited(KasetError):
    """A caller's own limit or quota ran out (requests per minute, concurrency, a daily budget).

    `limit` is the rate-limit headers' value set: x-ratelimit-limit / -remaining / -reset
    describe the limit that refused the request, and Retry-After says when to come back.
    """

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

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


# --- external providers (OpenAI-compatible servers, Gemini) -------------------------------------


class UpstreamError(KasetError):
    """An external provider failed to answer (5xx, unreachable, malformed reply). The gateway
    itself is fine, hence 502 Bad Gateway rather than 500."""

    status_code = 502
    error_type = "server_error"
    code = "upstream_error"


class UpstreamAuthFailed(UpstreamError, ModelUnavailable):
    """The provider refused this server's credentials. It is the operator's configuration, not
    the client's key, that is wrong, so the model is unavailable (503) until the key is fixed."""

    status_code = 503
    error_type = "server_error"
    code = "upstream_auth_failed"


class UpstreamRateLimited(UpstreamError):
    """The provider said 429. `retry_after` (seconds) is passed on when the provider gave one."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "upstream_rate_limited"

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
