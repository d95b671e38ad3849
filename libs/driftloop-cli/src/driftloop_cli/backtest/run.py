"""One backtest from a file to its report: read, replay, compare."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from driftloop_core.featureset import FeatureSet
from driftloop_core.settings import Settings
from driftloop_drift.config import DriftSettings

from driftloop_cli.backtest.engine import Backtest, LoopOptions
from driftloop_cli.backtest.reference import compare
from driftloop_cli.backtest.report import backtest_report, in_process_details
from driftloop_cli.backtest.stack import StackOptions, StackReplay
from driftloop_cli.backtest.stream import Stream


class BacktestError(ValueError):
    """Options that cannot make a backtest of this stream."""


def run_backtest(
    stream: Stream,
    featureset: FeatureSet,
    options: LoopOptions,
    *,
    source: str,
    drift: DriftSettings | None = None,
    change_at: int | None = None,
    stack: Settings | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Replay `stream` through the loop (in process, or through the running stack
    that `stack` settings point at) and river; the report.

    `progress(stage, done)` is called as events are replayed ("loop", then "river").
    """
    if featureset.model.task != "binary_classification":
        raise BacktestError(
            f"feature set {featureset.name}: backtests cover binary_classification, "
            f"not {featureset.model.task}"
        )
    if not stream.events:
        raise BacktestError(f"{source}: no labelled observation to replay")
    if change_at is not None and not 0 <= change_at < len(stream.events):
        raise BacktestError(
            f"--change-at: {change_at} is not an event index (0 to {len(stream.events) - 1})"
        )
    delay_events = math.ceil(options.label_delay_s * options.rate)
    if stack is not None:
        replay = StackReplay(
            stack,
            featureset,
            stream,
            StackOptions(rate=options.rate, label_delay_s=options.label_delay_s),
            None if progress is None else lambda n: progress("loop", n),
        )
        timeline = asyncio.run(replay.run())
        details = None
    else:
        backtest = Backtest(featureset, drift or DriftSettings(), options)
        timeline = backtest.run(
            stream.events, None if progress is None else lambda n: progress("loop", n)
        )
        details = in_process_details(backtest)
    reference = compare(
        stream.events,
        timeline,
        delay_events,
        change_at=change_at,
        progress=None if progress is None else lambda n: progress("river", n),
    )
    return backtest_report(
        timeline,
        stream,
        reference,
        featureset=featureset.name,
        source=source,
        mode="in-process" if stack is None else "stack",
        rate=options.rate,
        label_delay_s=options.label_delay_s,
        change_at=change_at,
        details=details,
    )
