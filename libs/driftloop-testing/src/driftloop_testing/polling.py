"""Waiting on other processes and tasks, which cannot signal a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None],
    timeout_s: float = 20.0,
    what: str = "the condition",
    *,
    interval_s: float = 0.2,
) -> T:
    """Poll `check` (sync or async) until it returns something truthy, and return
    it; fail after `timeout_s`, naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        result = check()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}"
            )
        await asyncio.sleep(interval_s)


def wait_until(
    check: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.5,
    tolerate: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for synchronous tests; errors of the `tolerate` types (a
    server still starting) count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except tolerate as error:
            last = error
        else:
            if last:
                return last  # type: ignore[no-any-return]
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")
