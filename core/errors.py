"""Domain errors that carry their own HTTP status, so the API maps them without a lookup table."""

from __future__ import annotations


class DomainError(Exception):
    status_code = 400
    title = "Bad request"

    def __init__(self, detail: str, headers: dict[str, str] | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class NotFound(DomainError):
    status_code = 404
    title = "Not found"


class Conflict(DomainError):
    status_code = 409
    title = "Conflict"


class Invalid(DomainError):
    status_code = 422
    title = "Unprocessable content"


class Forbidden(DomainError):
    status_code = 403
    title = "Forbidden"


class Unauthorized(DomainError):
    status_code = 401
    title = "Unauthorized"


class BadRequest(DomainError):
    status_code = 400
    title = "Bad request"


class PayloadTooLarge(DomainError):
    status_code = 413
    title = "Content too large"


class UnsupportedMedia(DomainError):
    status_code = 415
    title = "Unsupported media type"


class TooManyRequests(DomainError):
    status_code = 429
    title = "Too many requests"


class Unavailable(DomainError):
    """A service this answer depends on (the proof store) cannot be reached; retrying later may work."""

    status_code = 503
    title = "Service unavailable"
