"""Online drift detectors whose state can be rebuilt exactly from their inputs.

river's detectors are not pickled (no pickle on the data path). Each monitor
keeps, as plain data, the inputs it was fed since its last reset, and a
restarted service rebuilds the river detector by replaying them: ADWIN and DDM
are deterministic, KSWIN runs with a fixed seed. The kept inputs are bounded:
when they outgrow `history_limit`, the detector is rebuilt from the most recent
half (a "rebase"), which the live service and a recovering one do alike, so
the rebuilt detector is still the one that was running.

A monitor that fires starts over empty: the change it saw is reported once,
and it fires again only on new evidence.

Only finite numbers are compared: NaN and infinities are no values of a
distribution (an infinity would sit in an end bin, or skew a KS test), so
every monitor skips them, and so does a reference built from live values. The
engine counts them before they get here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from driftloop.v1 import common_pb2
from driftloop_core.featureset import KswinSpec, PerformanceDriftSpec, PsiSpec
from river import drift as river_drift
from river.drift import binary as river_binary

from driftloop_drift.domain.changepoint import categorical_change_point

# Floor for a bin's share when computing PSI, so an empty bin costs a finite amount.
PSI_EPSILON = 1e-4
OTHER_CATEGORY = "\x00other"
# Bins of a reference built from live values.
REFERENCE_BINS = 10


def _river(factory: Any, **params: Any) -> Any:
    """A river detector (river is untyped: its objects are used as `Any`)."""
    return factory(**params)


@dataclass(frozen=True)
class Point:
    """One input of a detector: which event, when, and the value it contributed."""

    event_id: str
    event_time_ms: int
    value: float | str

    def to_json(self) -> list[Any]:
        return [self.event_id, self.event_time_ms, self.value]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Point:
        return cls(str(data[0]), int(data[1]), data[2])


@dataclass(frozen=True)
class Alarm:
    """A detector fired: its statistic, the threshold it crossed and the window it saw."""

    detector: str
    feature: str  # empty for performance drift
    statistic: float
    threshold: float
    size: int
    first: Point
    last: Point
    # The detector's own estimate of where in its window the change began, if it has one.
    change: Point | None = None

    @property
    def is_performance(self) -> bool:
        return not self.feature


class Monitor(Protocol):
    detector: str
    feature: str

    def update(self, point: Point) -> Alarm | None: ...

    def history(self) -> Any: ...

    @property
    def statistic(self) -> float | None: ...


class PerformanceMonitor:
    """ADWIN (or DDM) on a model's 0/1 error stream."""

    def __init__(self, spec: PerformanceDriftSpec, history_limit: int) -> None:
        self.detector = spec.detector
        self.feature = ""
        self._spec = spec
        self._limit = history_limit
        self._log: list[Point] = []
        self._river = self._fresh()

    def _fresh(self) -> Any:
        if self._spec.detector == "ddm":
            return _river(
                river_binary.DDM,
                warm_start=self._spec.warm_start,
                drift_threshold=self._spec.drift_threshold,
            )
        return _river(river_drift.ADWIN, delta=self._spec.delta)

    @property
    def threshold(self) -> float:
        return self._spec.drift_threshold if self._spec.detector == "ddm" else self._spec.delta

    @property
    def statistic(self) -> float | None:
        """The error rate the detector currently estimates."""
        if not self._log:
            return None
        if self._spec.detector == "adwin":
            return float(self._river.estimation)
        return sum(float(p.value) for p in self._log) / len(self._log)

    def update(self, point: Point) -> Alarm | None:
        self._log.append(point)
        self._river.update(int(point.value))
        if not self._river.drift_detected:
            if len(self._log) > self._limit:
                self.replay(self._log[-(self._limit // 2) :])
            return None
        if self._spec.detector == "adwin":
            # ADWIN drops the part of its window that differs from the rest: what
            # it keeps starts at its estimate of the change point.
            width = min(max(int(self._river.width), 1), len(self._log))
            window = self._log[-width:]
            statistic = float(self._river.estimation)
        else:
            window = self._log
            statistic = sum(float(p.value) for p in window) / len(window)
        alarm = Alarm(
            self.detector, "", statistic, self.threshold, len(window), window[0], window[-1]
        )
        self.replay([])
        return alarm

    def replay(self, points: Iterable[Point]) -> None:
        """Start over from `points`, as if they were all this detector had seen."""
        self._river = self._fresh()
        self._log = list(points)
        for point in self._log:
            self._river.update(int(point.value))

    def correct(self, event_id: str, error: int) -> bool:
        """Give the input of `event_id` its corrected error bit and rebuild the
        detector from its inputs, as if it had been fed that bit; False when the
        event is not among its inputs (or already has that bit)."""
        for position, point in enumerate(self._log):
            if point.event_id == event_id:
                if point.value == error:
                    return False
                corrected = list(self._log)
                corrected[position] = Point(event_id, point.event_time_ms, error)
                self.replay(corrected)
                return True
        return False

    def history(self) -> list[list[Any]]:
        return [point.to_json() for point in self._log]


class Binning:
    """Maps a feature's values to the bins of its reference distribution."""

    def __init__(self, reference: common_pb2.ReferenceDistribution) -> None:
        self.numeric = reference.WhichOneof("kind") == "numeric"
        if self.numeric:
            edges = np.asarray(reference.numeric.edges, dtype=np.float64)
            if len(edges) < 2 or len(reference.numeric.fractions) != len(edges) - 1:
                raise ValueError("numeric reference needs n+1 edges for n fractions")
            self._edges = edges
            self.expected = np.asarray(reference.numeric.fractions, dtype=np.float64)
            self._categories: dict[str, int] = {}
        else:
            names = sorted(reference.categorical.frequencies)
            if not names:
                raise ValueError("categorical reference has no categories")
            self._categories = {name: i for i, name in enumerate(names)}
            shares = [reference.categorical.frequencies[name] for name in names]
            # Categories never seen in training share one extra bin, expected empty.
            self.expected = np.asarray([*shares, 0.0], dtype=np.float64)

    @property
    def bins(self) -> int:
        return len(self.expected)

    def bin_of(self, value: float | str) -> int | None:
        if self.numeric:
            if isinstance(value, str) or not math.isfinite(value):
                return None
            index = int(np.searchsorted(self._edges, value, side="right")) - 1
            return min(max(index, 0), self.bins - 1)
        if not isinstance(value, str):
            return None
        return self._categories.get(value, self.bins - 1)


def psi(expected: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]) -> float:
    """Population stability index of observed bin counts against expected shares."""
    total = float(counts.sum())
    if total == 0:
        return 0.0
    actual = np.maximum(counts / total, PSI_EPSILON)
    reference = np.maximum(expected, PSI_EPSILON)
    return float(np.sum((actual - reference) * np.log(actual / reference)))


def live_reference(
    values: Sequence[float | str], numeric: bool, bins: int = REFERENCE_BINS
) -> common_pb2.ReferenceDistribution:
    """Reference bins of live values, built as the trainer builds them from its rows:
    quantile edges for numbers, shares for categories."""
    if numeric:
        numbers = [float(v) for v in values if not isinstance(v, str) and math.isfinite(v)]
        if not numbers:
            raise ValueError("no numeric value to bin")
        array = np.asarray(numbers, dtype=np.float64)
        edges = np.unique(np.quantile(array, np.linspace(0.0, 1.0, bins + 1)))
        if len(edges) < 2:
            edges = np.asarray([edges[0], edges[0] + 1.0])
        index = np.clip(np.searchsorted(edges, array, side="right") - 1, 0, len(edges) - 2)
        counts = np.bincount(index, minlength=len(edges) - 1)
        return common_pb2.ReferenceDistribution(
            numeric=common_pb2.NumericDistribution(
                edges=[float(e) for e in edges],
                fractions=[float(c) / len(array) for c in counts],
            ),
            count=len(array),
        )
    names = [v for v in values if isinstance(v, str)]
    if not names:
        raise ValueError("no category to count")
    shares = {name: names.count(name) / len(names) for name in set(names)}
    return common_pb2.ReferenceDistribution(
        categorical=common_pb2.CategoricalDistribution(frequencies=shares), count=len(names)
    )


class PsiMonitor:
    """PSI of a feature's last `window` values against reference bins.

    The reference is the champion's (its training rows), or, when `reference`
    is None, built from the first `baseline` values this monitor is fed: for
    features whose training rows may have been computed over windows that were
    not yet full (aggregates), the first warm live values are the only
    reference known to be stationary.
    """

    detector = "psi"

    def __init__(
        self,
        feature: str,
        reference: common_pb2.ReferenceDistribution | None,
        spec: PsiSpec,
        baseline: int = 0,
        numeric: bool = True,
    ) -> None:
        self.feature = feature
        self._spec = spec
        self._numeric = numeric
        self._baseline_size = baseline
        self._baseline: list[Point] | None = None if reference is not None else []
        self._binning: Binning | None = None if reference is None else Binning(reference)
        self._window: deque[tuple[Point, int]] = deque()
        self._counts = np.zeros(0 if self._binning is None else self._binning.bins, dtype=np.int64)
        self._statistic: float | None = None

    @property
    def statistic(self) -> float | None:
        return self._statistic

    def _collect(self, point: Point) -> None:
        assert self._baseline is not None
        self._baseline.append(point)
        if len(self._baseline) < self._baseline_size:
            return
        try:
            self._binning = Binning(
                live_reference([p.value for p in self._baseline], self._numeric)
            )
        except ValueError:
            # No value in the baseline could be binned: start collecting again.
            self._baseline = []
            return
        self._counts = np.zeros(self._binning.bins, dtype=np.int64)

    def update(self, point: Point) -> Alarm | None:
        if not isinstance(point.value, str) and not math.isfinite(point.value):
            return None
        if self._binning is None:
            self._collect(point)
            return None
        index = self._binning.bin_of(point.value)
        if index is None:
            return None
        self._window.append((point, index))
        self._counts[index] += 1
        if len(self._window) > self._spec.window:
            _, dropped = self._window.popleft()
            self._counts[dropped] -= 1
        if len(self._window) < self._spec.window:
            return None
        self._statistic = psi(self._binning.expected, self._counts)
        if self._statistic <= self._spec.threshold:
            return None
        # Where in the window the bins' distribution changed, if it did within it.
        split = categorical_change_point([index for _, index in self._window], self._binning.bins)
        alarm = Alarm(
            self.detector,
            self.feature,
            self._statistic,
            self._spec.threshold,
            len(self._window),
            self._window[0][0],
            self._window[-1][0],
            None if split is None else self._window[split.index][0],
        )
        self._window.clear()
        self._counts[:] = 0
        return alarm

    def replay(self, points: Iterable[Point]) -> None:
        for point in points:
            self.update(point)

    def history(self) -> list[list[Any]]:
        # A live baseline is replayed first, so the same bins are built again.
        baseline = [point.to_json() for point in self._baseline or ()]
        return baseline + [point.to_json() for point, _ in self._window]


class KswinMonitor:
    """river's KSWIN on every `stride`-th value of a numeric feature, seeded."""

    detector = "kswin"

    def __init__(self, feature: str, spec: KswinSpec, history_limit: int) -> None:
        self.feature = feature
        self._spec = spec
        self._limit = max(history_limit, 2 * spec.window)
        self._seen = 0
        self._fed: list[Point] = []
        self._river = self._fresh()

    def _fresh(self) -> Any:
        spec = self._spec
        return _river(
            river_drift.KSWIN,
            alpha=spec.alpha,
            window_size=spec.window,
            stat_size=spec.stat_size,
            seed=spec.seed,
        )

    @property
    def statistic(self) -> float | None:
        """The p-value of the last test (drift when it falls to `alpha`)."""
        value = getattr(self._river, "p_value", None)
        return None if value is None else float(value)

    def update(self, point: Point) -> Alarm | None:
        if isinstance(point.value, str) or not math.isfinite(point.value):
            return None
        self._seen += 1
        if (self._seen - 1) % self._spec.stride:
            return None
        self._fed.append(point)
        self._river.update(float(point.value))
        if not self._river.drift_detected:
            if len(self._fed) > self._limit:
                self._rebuild(self._fed[-self._spec.window :])
            return None
        recent = self._fed[-self._spec.stat_size :]
        alarm = Alarm(
            self.detector,
            self.feature,
            float(self._river.p_value),
            self._spec.alpha,
            len(recent),
            recent[0],
            recent[-1],
        )
        self._seen = 0
        self._rebuild([])
        return alarm

    def _rebuild(self, fed: Sequence[Point]) -> None:
        self._river = self._fresh()
        self._fed = list(fed)
        for point in self._fed:
            self._river.update(float(point.value))

    def replay(self, state: dict[str, Any]) -> None:
        self._seen = int(state["seen"])
        self._rebuild([Point.from_json(item) for item in state["fed"]])

    def history(self) -> dict[str, Any]:
        return {"seen": self._seen, "fed": [point.to_json() for point in self._fed]}
