"""Warrant for Python: propose actions, wait for authority, claim, run and report.

    from warrant import Client

    client = Client("http://127.0.0.1:8080", token)
    with client.guard({"kind": "deploy.restart", "target": "staging/api"}) as grant:
        restart_api()          # runs only once Warrant authorized exactly this action

See docs/python-sdk.md in the Warrant repository.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._async import AsyncClient, AsyncGuard
from ._canonical import action_digest, canonical_json
from ._core import FINAL, PAUSED, Grant, Proposal
from ._errors import (
    ApiError,
    AuthenticationError,
    BadRequest,
    Conflict,
    Expired,
    InstanceExists,
    NotAuthorized,
    NotFound,
    PermissionDenied,
    Refused,
    Rejected,
    ServerError,
    Unavailable,
    WaitTimeout,
    WarrantError,
    Withdrawn,
)
from ._sync import Client, Guard

if TYPE_CHECKING:
    from .kafka import KafkaProposer

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "Guard",
    "AsyncGuard",
    "Proposal",
    "Grant",
    "KafkaProposer",
    "action_digest",
    "canonical_json",
    "PAUSED",
    "FINAL",
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


def __getattr__(name: str) -> Any:
    # The Kafka producer needs the optional extra; import it only when asked.
    if name == "KafkaProposer":
        from .kafka import KafkaProposer

        return KafkaProposer
    raise AttributeError(f"module 'warrant' has no attribute {name!r}")
