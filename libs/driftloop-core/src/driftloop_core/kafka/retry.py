"""Transient or not, decided once; retried with backoff by tenacity.

A database that blinks, a full or unmounted disk, a refused connection, a
broker leader election or an unavailable gRPC peer are passing: the work is
retried with exponential backoff and full jitter. Anything else is a refusal
or a bug and is not retried here. Consumers retry transient errors for as long
as they run (`forever=True`); publishers give up after `retry_attempts`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from aiokafka.errors import KafkaError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)

from driftloop_core.kafka.record import TransientError
from driftloop_core.settings import KafkaSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")

_KAFKA_TRANSIENT = frozenset(
    {
        "KafkaTimeoutError",
        "RequestTimedOutError",
        "NotLeaderForPartitionError",
        "LeaderNotAvailableError",
        "KafkaConnectionError",
        "NodeNotReadyError",
        "CoordinatorNotAvailableError",
        "NotCoordinatorError",
    }
)
# SQLAlchemy's connection-level errors, by name: the core does not depend on it.
_DATABASE_TRANSIENT = frozenset({"OperationalError", "InterfaceError", "DisconnectionError"})
# gRPC status codes a retry can cure.
_GRPC_TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})


class Stopped(Exception):
    """The work was still failing transiently when the caller asked to stop."""


def is_transient(error: BaseException) -> bool:
    """Whether retrying later can make `error` go away (its causes are asked too)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_itself(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient_itself(error: BaseException) -> bool:
    if isinstance(error, TransientError | ConnectionError | TimeoutError):
        return True
    if isinstance(error, KafkaError):
        return bool(getattr(error, "retriable", False)) or type(error).__name__ in _KAFKA_TRANSIENT
    if isinstance(error, sqlite3.OperationalError):
        return True
    # A filesystem error (disk full, I/O error, a mount gone); a missing or
    # forbidden path is a fact about the input, not a passing state.
    if isinstance(error, OSError) and not isinstance(
        error, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError
    ):
        return True
    kind = type(error)
    if kind.__module__.startswith("sqlalchemy") and kind.__name__ in _DATABASE_TRANSIENT:
        return True
    code = getattr(error, "code", None)
    if callable(code) and kind.__module__.startswith("grpc"):
        name = getattr(code(), "name", "")
        return name in _GRPC_TRANSIENT
    return False


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "retrying",
            what=what,
            attempt=state.attempt_number,
            error=repr(error),
            delay_s=round(state.next_action.sleep if state.next_action else 0.0, 3),
        )

    return before_sleep


def retrying(
    kafka: KafkaSettings,
    what: str,
    *,
    forever: bool = False,
    when: Callable[[BaseException], bool] = is_transient,
) -> AsyncRetrying:
    """`async for attempt in retrying(...): with attempt: ...` with Driftloop's backoff."""
    return AsyncRetrying(
        retry=retry_if_exception(when),
        stop=stop_never if forever else stop_after_attempt(kafka.retry_attempts),
        wait=wait_random_exponential(
            multiplier=kafka.retry_backoff_initial_s, max=kafka.retry_backoff_max_s
        ),
        before_sleep=_log_retry(what),
        reraise=True,
    )


async def until_done(
    kafka: KafkaSettings,
    what: str,
    work: Callable[[], Awaitable[T]],
    stopping: asyncio.Event,
) -> T:
    """Run `work`, retrying transient errors with backoff until it succeeds; raise
    `Stopped` if `stopping` is set while it still fails (the caller then leaves
    its offset uncommitted)."""

    def retry_while_running(error: BaseException) -> bool:
        return is_transient(error) and not stopping.is_set()

    try:
        async for attempt in retrying(kafka, what, forever=True, when=retry_while_running):
            with attempt:
                return await work()
    except Exception as error:
        if stopping.is_set() and is_transient(error):
            raise Stopped(what) from error
        raise
    raise AssertionError("unreachable")  # tenacity returns or raises above
