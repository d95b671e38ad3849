"""`driftloop topics create`: the topics of DESIGN.md on any Kafka cluster.

`driftloop up` creates them on the embedded broker itself; against Apache Kafka
(Compose) this command runs once before the services start, since every topic
must exist with the right partition count before anyone subscribes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from driftloop_core.kafka.topics import default_topic_specs, ensure_topics
from driftloop_core.settings import load_settings
from rich.console import Console

app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@app.command("create")
def create(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create every Driftloop topic that is missing (idempotent); check partition counts."""
    settings = load_settings()
    specs = default_topic_specs(settings.kafka)
    try:
        created = asyncio.run(ensure_topics(settings.kafka, specs))
    except (RuntimeError, OSError) as error:
        err.print(f"[red]topics create failed:[/] {error}")
        raise typer.Exit(1) from None
    existing = [spec.name for spec in specs if spec.name not in created]
    if as_json:
        print(json.dumps({"created": created, "existing": existing}))
        return
    for name in created:
        console.print(f"created  {name}")
    for name in existing:
        console.print(f"exists   {name}")
