"""`driftloop ingest FILE`: send a file of JSON lines through ingestion's `IngestStream`.

The file is streamed, never loaded whole, with a progress bar on stderr; the
server validates every line exactly as it validates `events.raw`. Blank lines
are skipped; every rejection is reported with its line number in the file.
With `DRIFTLOOP_INGEST_TOKEN` set, the stream carries `authorization: Bearer
<token>`, which ingestion then requires.

Exit codes: 0 when the stream completed, even if some lines were rejected
(they are printed, and `--json` lists them); 1 when it could not complete
(ingestion unreachable, the broker refused the events, the file unreadable
midway). Rejections are data problems to read, not a failed command, so a
script that must fail on them checks `rejected` in the `--json` output.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import grpc
import grpc.aio
import typer
from driftloop.v1 import ingest_pb2, ingest_pb2_grpc
from driftloop_core.grpc.auth import bearer_metadata
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import Settings, load_settings
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from driftloop_cli.rpc import failure

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _lines(
    handle: IO[bytes], line_numbers: list[int], progress: Progress, task: Any
) -> Iterator[str]:
    """Non-blank lines as text; records each one's line number (1-based)."""
    for number, raw in enumerate(handle, start=1):
        progress.advance(task, len(raw))
        text = raw.decode("utf-8", errors="replace").strip()
        if text:
            line_numbers.append(number)
            yield text


async def _stream(
    settings: Settings, endpoint: str, lines: Iterator[str]
) -> ingest_pb2.IngestStreamResponse:
    async def requests() -> AsyncIterator[ingest_pb2.IngestStreamRequest]:
        for line in lines:
            yield ingest_pb2.IngestStreamRequest(json=line)

    async with open_channel(endpoint, settings) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        token = settings.ingest_token.get_secret_value() if settings.ingest_token else None
        response: ingest_pb2.IngestStreamResponse = await stub.IngestStream(
            requests(), metadata=bearer_metadata(token)
        )
        return response


def _report(response: ingest_pb2.IngestStreamResponse, line_numbers: list[int]) -> dict[str, Any]:
    def line_of(index: int) -> int:
        return line_numbers[index] if 0 <= index < len(line_numbers) else index + 1

    return {
        "accepted": response.accepted,
        "rejected": response.rejected,
        "duplicates": response.duplicates,
        "published": response.accepted - response.duplicates,
        "rejections": [
            {
                "line": line_of(rejection.index),
                "index": rejection.index,
                "event_id": rejection.event_id,
                "field": rejection.field,
                "rule": rejection.rule,
                "reason": rejection.reason,
            }
            for rejection in response.rejections
        ],
    }


def ingest(
    file: Annotated[
        Path,
        typer.Argument(help="JSON lines, one event per line; '-' reads standard input."),
    ],
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", help="IngestService HOST:PORT (default from settings)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Stream events through ingestion; print accepted, rejected and duplicate counts
    and every rejection with its line number. Exits 0 once the stream completed."""
    settings = load_settings()
    target = endpoint or settings.endpoints.ingestion
    from_stdin = str(file) == "-"
    if not from_stdin and not file.is_file():
        err.print(f"[red]no such file:[/] {escape(str(file))}")
        raise typer.Exit(2)
    line_numbers: list[int] = []
    progress = Progress(
        TextColumn("[bold]ingest[/]"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    try:
        with progress, sys.stdin.buffer if from_stdin else file.open("rb") as handle:
            size = None if from_stdin else file.stat().st_size
            task = progress.add_task("ingest", total=size)
            response = asyncio.run(
                _stream(settings, target, _lines(handle, line_numbers, progress, task))
            )
    except grpc.aio.AioRpcError as error:
        err.print(f"[red]ingest failed:[/] {escape(failure('ingestion', target, error))}")
        raise typer.Exit(1) from None
    except OSError as error:
        err.print(f"[red]cannot read {escape(str(file))}:[/] {error.strerror}")
        raise typer.Exit(1) from None

    report = _report(response, line_numbers)
    if as_json:
        print(json.dumps(report))
        return
    console.print(
        f"accepted [green]{report['accepted']}[/] "
        f"(published {report['published']}, duplicates {report['duplicates']}), "
        f"rejected [{'red' if report['rejected'] else 'green'}]{report['rejected']}[/]"
    )
    for rejection in report["rejections"]:
        event = f" (event_id {escape(rejection['event_id'])})" if rejection["event_id"] else ""
        console.print(
            f"line {rejection['line']}: [red]{rejection['rule']}[/] "
            f"{escape(rejection['reason'])}{event}",
            soft_wrap=True,
        )
    if report["rejections"]:
        listed = len(report["rejections"])
        if listed < report["rejected"]:
            console.print(f"(first {listed} of {report['rejected']} rejections listed)")
