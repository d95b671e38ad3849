"""The `driftloop` command: runs the embedded stack and talks to its services."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from driftloop_core.broker import BrokerNotFoundError, BrokerStartError
from driftloop_core.featureset import FeatureSetError, default_featureset_path, load_featureset
from driftloop_core.logging import configure_logging
from driftloop_core.services import ServiceSpec, discover_services
from driftloop_core.settings import load_settings
from rich.console import Console
from rich.table import Table

from driftloop_cli.commands import features as features_commands
from driftloop_cli.commands import models as models_commands
from driftloop_cli.commands import topics as topics_commands
from driftloop_cli.commands.backtest import backtest
from driftloop_cli.commands.demo import demo
from driftloop_cli.commands.ingest import ingest
from driftloop_cli.commands.predict import predict
from driftloop_cli.commands.traces import traces
from driftloop_cli.commands.train import train
from driftloop_cli.status import as_json, collect
from driftloop_cli.supervisor import Supervisor

app = typer.Typer(
    name="driftloop",
    help="Driftloop: event-driven MLOps over Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(features_commands.app, name="features")
app.add_typer(models_commands.app, name="models")
app.add_typer(topics_commands.app, name="topics")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@app.command()
def up(
    featureset: Annotated[
        Path | None,
        typer.Option("--featureset", "-f", help="Feature-set YAML (default: built-in payments)."),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            "--only", help="Comma-separated services to run (default: every installed one)."
        ),
    ] = None,
    scale: Annotated[
        list[str] | None,
        typer.Option(
            "--scale",
            help="NAME=N: run N processes of a service that splits its work "
            "(features: N workers sharing its partitions and its port). Repeatable.",
        ),
    ] = None,
) -> None:
    """Start the embedded broker and every installed service, in the foreground."""
    settings = load_settings()
    configure_logging("supervisor", settings.log_level)
    path = featureset or settings.featureset or default_featureset_path()
    try:
        load_featureset(path)
    except FeatureSetError as error:
        err.print(f"[red]{error}[/]")
        raise typer.Exit(2) from None
    services = discover_services()
    if only:
        wanted = {name.strip() for name in only.split(",") if name.strip()}
        unknown = wanted - {spec.name for spec in services}
        if unknown:
            err.print(f"[red]--only: unknown services {sorted(unknown)}[/]")
            raise typer.Exit(2)
        services = [spec for spec in services if spec.name in wanted]
    try:
        services = scaled_services(services, scale or [])
    except ValueError as error:
        err.print(f"[red]--scale: {error}[/]")
        raise typer.Exit(2) from None
    supervisor = Supervisor(settings, services, featureset=path, console=console)
    try:
        code = asyncio.run(supervisor.run())
    except (BrokerNotFoundError, BrokerStartError, RuntimeError) as error:
        err.print(f"[red]driftloop up failed:[/] {error}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def scaled_services(services: list[ServiceSpec], scale: list[str]) -> list[ServiceSpec]:
    """The services with those named in `scale` ("NAME=N") run as N processes."""
    counts: dict[str, int] = {}
    for item in scale:
        name, _, count = item.partition("=")
        if not count.strip().isdigit():
            raise ValueError(f"{item!r}: expected NAME=N, e.g. features=2")
        counts[name.strip()] = int(count)
    unknown = set(counts) - {spec.name for spec in services}
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}")
    return [each for spec in services for each in spec.scaled(counts.get(spec.name, 1))]


@app.command()
def status(
    as_json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Exit 0 only when the broker and every service are ready."""
    settings = load_settings()
    statuses = asyncio.run(collect(settings))
    all_ready = all(s.ready for s in statuses)
    if as_json_output:
        console.print_json(json.dumps(as_json(statuses)))
    else:
        table = Table("service", "pid", "endpoint", "metrics", "ready")
        for s in statuses:
            mark = "[green]ready[/]" if s.ready else "[red]not ready[/]"
            table.add_row(s.name, str(s.pid or "-"), s.endpoint, s.metrics or "-", mark)
        console.print(table)
    raise typer.Exit(0 if all_ready else 1)


app.command("ingest")(ingest)
app.command("train")(train)
app.command("predict")(predict)
app.command("traces")(traces)
app.command("demo")(demo)
app.command("backtest")(backtest)


if __name__ == "__main__":
    app()
