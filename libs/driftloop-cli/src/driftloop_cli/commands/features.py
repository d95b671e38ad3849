"""`driftloop features get ENTITY`: what the online store holds for an entity."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import grpc
import typer
from driftloop.v1 import features_pb2, features_pb2_grpc
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import Settings, load_settings
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from driftloop_cli.rpc import failure

app = typer.Typer(help="The feature store.", no_args_is_help=True)
console = Console(highlight=False)

_STATUS_NAMES = {
    features_pb2.FEATURE_STATUS_PRESENT: "present",
    features_pb2.FEATURE_STATUS_NOT_FOUND: "not_found",
    features_pb2.FEATURE_STATUS_STALE: "stale",
}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else None


async def _lookup(
    settings: Settings, endpoint: str, entity: str, names: list[str]
) -> features_pb2.EntityFeatures:
    async with open_channel(endpoint, settings) as channel:
        stub = features_pb2_grpc.FeatureServiceStub(channel)
        reply = await stub.GetOnlineFeatures(
            features_pb2.GetOnlineFeaturesRequest(entity_ids=[entity], feature_names=names),
            timeout=5,
        )
        return reply.entities[0]


@app.command("get")
def get(
    entity: Annotated[str, typer.Argument(help="Entity id, e.g. a customer id.")],
    features: Annotated[
        str, typer.Option("--features", help="Comma-separated feature names (default: all).")
    ] = "",
    endpoint: Annotated[
        str | None, typer.Option(help="FeatureService address (default from settings).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the entity's online features, their status and last update (event time)."""
    settings = load_settings()
    target = endpoint or settings.endpoints.features
    names = [n.strip() for n in features.split(",") if n.strip()]
    try:
        found = asyncio.run(_lookup(settings, target, entity, names))
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{escape(failure('features', target, error))}[/]")
        raise typer.Exit(1) from None
    values = {name: _value(value) for name, value in found.values.items()}
    statuses = {name: _STATUS_NAMES.get(s, "unknown") for name, s in found.statuses.items()}
    updated_at = (
        found.updated_at.ToDatetime().isoformat(timespec="milliseconds") + "Z"
        if found.HasField("updated_at")
        else None
    )
    if as_json:
        document = {
            "entity_id": found.entity_id,
            "features": values,
            "updated_at": updated_at,
            "status": statuses,
        }
        print(json.dumps(document, sort_keys=True))
        return
    table = Table("feature", "value", "status", title=f"{entity} (updated {updated_at or '-'})")
    for name in sorted(statuses):
        table.add_row(name, "" if name not in values else str(values[name]), statuses[name])
    console.print(table)
