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


class ChecksumMismatch(KasetError):
    """A model file does not match the sha256 recorded in the catalog."""

    status_code = 500
    error_type = "server_error"
    code = "checksum_mismatch"
