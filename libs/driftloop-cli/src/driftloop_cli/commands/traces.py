"""`driftloop traces`: read a trace from the local OTLP-JSON store as a tree.

With no collector configured every service appends its spans to
`DRIFTLOOP_HOME/traces/<service>.jsonl`; this command joins them, so an SRE on
the embedded stack can follow one event or one retrain loop across services.
Spans linked from another trace (a consumer batch, a background model swap) are
pulled in with the trace they link to, so a loop reads as one tree.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from driftloop_core.settings import load_settings
from driftloop_core.telemetry.reader import SpanRecord, read_spans
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# The first hop of a retrain loop: the drift service publishing DriftDetected;
# its last hop: inference swapping the new version in.
LOOP_START = "send drift.detected"
LOOP_END = "inference.model_swap"


def connected(spans: list[SpanRecord], trace_id: str) -> list[SpanRecord]:
    """The spans of ``trace_id`` and of every trace linked to or from it directly.

    One hop only: a consumer batch links to many traces, and following links
    further would pull in every event the batch held."""
    seen = {trace_id}
    for span in spans:
        for link in span["links"]:
            if span["trace_id"] == trace_id:
                seen.add(link["trace_id"])
            elif link["trace_id"] == trace_id:
                seen.add(span["trace_id"])
    return [span for span in spans if span["trace_id"] in seen]


def last_loop(spans: list[SpanRecord]) -> str | None:
    """The newest detection whose trace reached a model swap, else the newest detection
    (a detection held back by the cooldown starts no training)."""
    starts = sorted(
        (span for span in spans if span["name"] == LOOP_START),
        key=lambda span: span["start_ns"],
        reverse=True,
    )
    for start in starts:
        if any(span["name"] == LOOP_END for span in connected(spans, start["trace_id"])):
            return start["trace_id"]
    return starts[0]["trace_id"] if starts else None


def _parent(span: SpanRecord, ids: set[str]) -> str | None:
    """The span's parent, or the span it links to when it starts a linked trace."""
    if span["parent_id"] in ids:
        return span["parent_id"]
    for link in span["links"]:
        if link["span_id"] in ids:
            return link["span_id"]
    return None


def as_rows(spans: Iterable[SpanRecord]) -> list[dict[str, Any]]:
    ordered = sorted(spans, key=lambda span: (span["start_ns"], span["span_id"]))
    ids = {span["span_id"] for span in ordered}
    return [
        {
            "service": span["service"],
            "name": span["name"],
            "span_id": span["span_id"],
            "parent_id": _parent(span, ids),
            "trace_id": span["trace_id"],
            "start": datetime.fromtimestamp(span["start_ns"] / 1e9, UTC).isoformat(),
            "duration_ms": round((span["end_ns"] - span["start_ns"]) / 1e6, 3),
            "status": span["status"],
        }
        for span in ordered
    ]


def render(trace_id: str, rows: list[dict[str, Any]]) -> Tree:
    tree = Tree(f"[bold]trace {trace_id}[/]")
    nodes: dict[str, Tree] = {}
    for row in rows:
        parent = nodes.get(row["parent_id"]) if row["parent_id"] else None
        colour = "red" if row["status"] == "ERROR" else "cyan"
        label = f"[{colour}]{row['service']}[/]  {row['name']}  [dim]{row['duration_ms']:.1f} ms[/]"
        nodes[row["span_id"]] = (parent or tree).add(label)
    return tree


def summary(spans: list[SpanRecord], limit: int) -> Table:
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    table = Table("trace id", "root", "services", "spans", "ms", title="recent traces")
    recent = sorted(by_trace.items(), key=lambda item: -max(s["end_ns"] for s in item[1]))
    for trace_id, members in recent[:limit]:
        root = min(members, key=lambda span: span["start_ns"])
        duration = (max(s["end_ns"] for s in members) - root["start_ns"]) / 1e6
        services = ",".join(sorted({s["service"] for s in members}))
        table.add_row(trace_id, root["name"], services, str(len(members)), f"{duration:.1f}")
    return table


def traces(
    trace_id: Annotated[str | None, typer.Argument(help="Trace id (32 hex digits).")] = None,
    last_loop_: Annotated[
        bool, typer.Option("--last-loop", help="The most recent retrain loop (DriftDetected on).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option(help="Traces listed when no trace is given.")] = 20,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="The state folder whose traces to read (default DRIFTLOOP_HOME; "
            "the demo's is .driftloop/demo).",
        ),
    ] = None,
) -> None:
    """Show a trace as a tree of services and durations, from the local span store."""
    settings = load_settings() if home is None else load_settings(home=home)
    spans = read_spans(settings.traces_dir)
    if last_loop_:
        trace_id = last_loop(spans)
        if trace_id is None:
            err.print(f"no retrain loop in {settings.traces_dir} (no '{LOOP_START}' span)")
            raise typer.Exit(1)
    if trace_id is None:
        if as_json:
            print(json.dumps({"trace_ids": sorted({span["trace_id"] for span in spans})}))
        else:
            console.print(summary(spans, limit))
        return
    rows = as_rows(connected(spans, trace_id))
    if not rows:
        err.print(f"trace {trace_id} not found in {settings.traces_dir}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({"trace_id": trace_id, "spans": rows}))
    else:
        console.print(render(trace_id, rows))
