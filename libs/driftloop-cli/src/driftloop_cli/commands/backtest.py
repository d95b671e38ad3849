"""`driftloop backtest EVENTS.jsonl`: what the loop would have done on a user's data.

Every line is the JSON a producer sends to `events.raw`, judged by the
ingestion service's rules; the stream is replayed through the drift engine,
the trainer and the registry's gate on a simulated clock (`--rate` events per
second, labels `--label-delay` seconds later), and river's ARF and HAT learn
the same events as a reference. The report (report.json, accuracy.png,
summary.md) goes to `--out`.

With `--mode stack` the same stream goes through a running `driftloop up`
instead, in real time: Predict for each event, the observation on
`events.raw`, its label after the delay, the loop's events read from their
topics.

Exit codes: 0 when the report was written; 1 when the stack failed during a
stack replay; 2 for a bad option, feature set or line (the line and the field
are named), or no ready stack for `--mode stack`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import grpc
import typer
from aiokafka.errors import KafkaError
from driftloop_core.featureset import FeatureSetError, default_featureset_path, load_featureset
from driftloop_core.settings import load_settings
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from driftloop_cli.status import collect

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# Below this many events an in-process run takes seconds: no bar.
_PROGRESS_FROM = 2000


def backtest(
    events: Annotated[Path, typer.Argument(help="Labelled JSONL stream, one raw event a line.")],
    featureset: Annotated[
        Path | None,
        typer.Option("--featureset", "-f", help="Feature-set YAML (default: as `driftloop up`)."),
    ] = None,
    rate: Annotated[
        float, typer.Option("--rate", min=0.1, help="Events per second on the simulated clock.")
    ] = 100.0,
    label_delay: Annotated[
        float, typer.Option("--label-delay", min=0.0, help="Seconds before each label arrives.")
    ] = 2.0,
    train_s: Annotated[
        float, typer.Option("--train-s", min=0.0, help="Seconds a training run takes.")
    ] = 1.5,
    change_at: Annotated[
        int | None,
        typer.Option(
            "--change-at",
            help="Event index where the concept is known to change (for false alarms).",
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="'in-process' (simulated clock) or 'stack'.")
    ] = "in-process",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for report.json, accuracy.png, summary.md.")
    ] = Path("backtest-report"),
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json's content.")] = False,
) -> None:
    """Replay a labelled JSONL stream through the loop and write a report."""
    if mode not in ("in-process", "stack"):
        err.print(f"[red]--mode: must be 'in-process' or 'stack', got {escape(mode)!r}[/]")
        raise typer.Exit(2)
    if out.exists() and not out.is_dir():
        err.print(f"[red]--out: {escape(str(out))} exists and is not a folder[/]")
        raise typer.Exit(2)
    settings = load_settings()
    if mode == "stack" and not all(s.ready for s in asyncio.run(collect(settings))):
        err.print(
            "[red]--mode stack: no ready stack; start one with "
            "`driftloop up --featureset FILE` (the same feature set) first[/]"
        )
        raise typer.Exit(2)
    path = featureset or settings.featureset or default_featureset_path()
    try:
        loaded = load_featureset(path)
    except FeatureSetError as error:
        err.print(f"[red]{escape(str(error))}[/]")
        raise typer.Exit(2) from None
    # Imported here: scikit-learn and river take seconds to load, and no other
    # command needs them.
    from driftloop_cli.backtest.engine import LoopOptions
    from driftloop_cli.backtest.report import summary_markdown, write_report
    from driftloop_cli.backtest.run import BacktestError, run_backtest
    from driftloop_cli.backtest.stream import StreamError, load_stream

    try:
        stream = load_stream(events, loaded)
    except OSError as error:
        err.print(f"[red]{escape(str(events))}: {escape(error.strerror or str(error))}[/]")
        raise typer.Exit(2) from None
    except StreamError as error:
        err.print(f"[red]{escape(str(error))}[/]")
        raise typer.Exit(2) from None
    logging.getLogger("driftloop").setLevel(logging.WARNING)
    options = LoopOptions(rate=rate, label_delay_s=label_delay, train_s=train_s)
    total = len(stream.events)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=as_json or (mode == "in-process" and total < _PROGRESS_FROM),
        transient=True,
    )
    with progress:
        loop = progress.add_task("loop", total=total)
        river = progress.add_task("river ARF, HAT", total=total, start=False)

        def advance(stage: str, done: int) -> None:
            if stage == "loop":
                progress.update(loop, completed=done)
                if done == total:
                    progress.start_task(river)
            else:
                progress.update(river, completed=done)

        try:
            report = run_backtest(
                stream,
                loaded,
                options,
                source=events.name,
                change_at=change_at,
                stack=settings if mode == "stack" else None,
                progress=advance,
            )
        except BacktestError as error:
            err.print(f"[red]{escape(str(error))}[/]")
            raise typer.Exit(2) from None
        except (KafkaError, grpc.RpcError, OSError) as error:
            err.print(f"[red]the stack failed during the replay: {escape(str(error))}[/]")
            raise typer.Exit(1) from None
    paths = write_report(report, out)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(f"wrote {', '.join(str(p) for p in paths)}\n")
    console.print(summary_markdown(report), markup=False, soft_wrap=True)
