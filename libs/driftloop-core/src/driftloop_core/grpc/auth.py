"""Bearer tokens on gRPC calls: `authorization: Bearer <token>` metadata.

One check for every servicer that guards a method with a shared secret (the
registry's admin token on Promote and Rollback, ingestion's token on Ingest and
IngestStream), compared in constant time so the answer's timing tells a caller
nothing about how much of a guess was right. Clients send the header with
:func:`bearer_metadata`.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc
import grpc.aio

__all__ = ["bearer_metadata", "require_bearer"]

AUTHORIZATION = "authorization"


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``; empty when there is none."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


def _presented(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION and isinstance(value, str):
            scheme, _, presented = value.partition(" ")
            return presented.strip() if scheme.lower() == "bearer" else None
    return None


async def require_bearer(
    context: grpc.aio.ServicerContext[Any, Any], token: str | None, variable: str
) -> None:
    """Abort the call with UNAUTHENTICATED unless it carries ``token``.

    Does nothing when ``token`` is None or empty (the method is open). ``variable``
    names the setting that holds the token, for the caller's error message.
    """
    if not token:
        return
    presented = _presented(context)
    if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"authorization: a valid 'Bearer <{variable}>' is required",
        )
