"""One backtest from a file to its report: read, replay, compare."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from driftloop_core.featureset import FeatureSet
from driftloop_drift.config import DriftSettings

from driftloop_cli.backtest.engine import Backtest, LoopOptions
from driftloop_cli.backtest.reference import compare
from driftloop_cli.backtest.report import backtest_report
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
    progress: Callable[[str, int], None] | None = None,
) -> tuple[Backtest, dict[str, Any]]:
    """Replay `stream` through the loop and river; the backtest and its report.

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
    backtest = Backtest(featureset, drift or DriftSettings(), options)
    backtest.run(stream.events, None if progress is None else lambda n: progress("loop", n))
    delay_events = math.ceil(options.label_delay_s * options.rate)
    reference = compare(
        stream.events,
        backtest.timeline,
        delay_events,
        progress=None if progress is None else lambda n: progress("river", n),
    )
    report = backtest_report(backtest, stream, reference, source=source, change_at=change_at)
    return backtest, report
