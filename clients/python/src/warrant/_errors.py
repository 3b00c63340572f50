"""The exceptions the SDK raises. Everything is a `WarrantError`.

    WarrantError
    ├── ApiError                 intake answered 4xx/5xx: .status, .code, .message, .body
    │   ├── BadRequest           400 (invalid_action, invalid_field, …)
    │   ├── AuthenticationError  401 (missing_token, invalid_token, …)
    │   ├── PermissionDenied     403 (wrong_principal_kind, principal_mismatch, …)
    │   ├── NotFound             404 (unknown_instance, …)
    │   ├── Conflict             409
    │   │   ├── InstanceExists   409 instance_exists: the id is another proposal's
    │   │   └── Refused          409 on a claim: the fold refused it (.code is the refusal code)
    │   └── ServerError          500 and other 5xx that are not retried
    ├── Unavailable              503/502/504 or no connection, after every retry
    ├── NotAuthorized            the instance ended without authority to run: .status, .code, .instance_id, .record
    │   ├── Rejected             REJECTED
    │   ├── Expired              EXPIRED
    │   └── Withdrawn            WITHDRAWN
    └── WaitTimeout              the wait's own timeout passed: .instance_id, .record
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "WarrantError",
    "ApiError",
    "BadRequest",
    "AuthenticationError",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "InstanceExists",
    "Refused",
    "ServerError",
    "Unavailable",
    "NotAuthorized",
    "Rejected",
    "Expired",
    "Withdrawn",
    "WaitTimeout",
]


class WarrantError(Exception):
    """Base class of every error this package raises."""


class ApiError(WarrantError):
    """Intake answered with an error: `{"error": {"code", "message"}}`."""

    def __init__(self, status: int, code: str | None, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    @property
    def event(self) -> dict[str, Any] | None:
        """Where the request landed on the log, when it did (`{event_id, partition, offset}`)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("event"), dict):
            return dict(self.body["event"])
        return None


class BadRequest(ApiError):
    """400: the request is wrong and a retry would be refused the same way."""


class AuthenticationError(ApiError):
    """401: the token (or signature) is missing or unknown."""


class PermissionDenied(ApiError):
    """403: the token is valid but may not do this."""


class NotFound(ApiError):
    """404: no such instance (or route)."""


class Conflict(ApiError):
    """409: decided or refused; never retried."""


class InstanceExists(Conflict):
    """409 `instance_exists`: the chosen instance id holds another proposal."""


class Refused(Conflict):
    """409 on a claim: the fold refused to grant. `.code` is the refusal code
    (`NotAuthorized`, `Expired`, `NoExecutionsLeft`, `DigestMismatch`,
    `AlreadyFinal`, ...)."""

    def __init__(
        self, status: int, code: str | None, message: str, body: Any = None, *, instance_id: str
    ) -> None:
        super().__init__(status, code, message, body)
        self.instance_id = instance_id


class ServerError(ApiError):
    """A 5xx that is not worth retrying (500 `internal` is a bug in intake)."""


class Unavailable(WarrantError):
    """Intake could not be reached, or kept answering 503, for every attempt.

    `.status`/`.code`/`.message`/`.body` describe the last answer (`status`
    is None when there was no answer at all); `.attempts` counts requests sent.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: Any = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.attempts = attempts


class NotAuthorized(WarrantError):
    """The instance reached a status from which the action may not run."""

    def __init__(
        self,
        instance_id: str,
        status: str | None,
        record: dict[str, Any] | None,
        code: str | None = None,
    ) -> None:
        super().__init__(
            f"instance {instance_id} is {status}" + (f" ({code})" if code else "")
        )
        self.instance_id = instance_id
        self.status = status
        self.code = code
        self.record = record


class Rejected(NotAuthorized):
    """A reviewer rejected the proposal."""


class Expired(NotAuthorized):
    """A decision or grant deadline passed."""


class Withdrawn(NotAuthorized):
    """The proposer withdrew the proposal."""


class WaitTimeout(WarrantError):
    """`wait` gave up: the record did not satisfy the condition in time.

    `.record` is the last record seen (None if the instance was never seen).
    """

    def __init__(self, instance_id: str, record: dict[str, Any] | None, timeout: float) -> None:
        status = record.get("status") if record else None
        super().__init__(f"instance {instance_id} still {status} after {timeout:g} s")
        self.instance_id = instance_id
        self.record = record
        self.last_record = record
        self.timeout = timeout
