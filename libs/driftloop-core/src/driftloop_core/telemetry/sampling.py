"""Which traces are kept: every trace of the loop, a share of the per-event ones.

Two kinds of traces start in a Driftloop process. Per-event traces begin where
a request or a record comes in from outside (a gRPC call, a Kafka record with
no trace context, a client call of the CLI): there is one per event, and on a
busy stream recording and exporting them costs more than the work they
describe. The loop's traces begin inside a service (a drift detection, a
training run, a model swap): a handful an hour, and they are what an SRE
follows. `LoopFirstSampler` keeps every trace of the second kind and a ratio
(`DRIFTLOOP_TRACE_SAMPLE_RATIO`, 1.0 by default) of the first; a span with a
parent follows its parent's decision, across processes too, so a per-event
trace is kept or dropped whole. The decision is by trace id, so every process
agrees on it. `OTEL_TRACES_SAMPLER`, when set, replaces this sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

# Span kinds that start a trace for something that came from outside.
_PER_EVENT = frozenset({SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.CLIENT, SpanKind.PRODUCER})


class LoopFirstSampler(Sampler):
    """The root sampler: per-event roots at `ratio`, every other root kept."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._per_event = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        chosen = self._per_event if kind in _PER_EVENT else ALWAYS_ON
        return chosen.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"LoopFirstSampler{{per-event ratio {self.ratio}}}"


def loop_first(ratio: float) -> Sampler:
    """Spans with a parent follow it; roots as `LoopFirstSampler` decides."""
    return ParentBased(root=LoopFirstSampler(ratio))
