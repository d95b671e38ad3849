"""`driftloop predict MODEL --entity ID --features JSON`: one prediction by hand.

A thin client of `driftloop.v1.Predictor/Predict` on the inference endpoint.
`--features` is a JSON object of the event's own values (numbers, strings);
the server fills the rest from the entity's online features. The answer names
who gave it: a registered version (`v3`) or an online learner (`online:arf`,
with model_version 0). Exit code 1 with the server's status and message when
the call fails, 2 for bad arguments.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime
from typing import Annotated, Any

import grpc
import grpc.aio
import typer
from driftloop.v1 import common_pb2, predictor_pb2, predictor_pb2_grpc
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import load_settings
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from driftloop_cli.rpc import failure

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _feature_value(name: str, value: Any) -> common_pb2.FeatureValue:
    if isinstance(value, bool) or value is None:
        raise typer.BadParameter(f"--features: {name}: expected a number or a string")
    if isinstance(value, int):
        return common_pb2.FeatureValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.FeatureValue(float_value=value)
    if isinstance(value, str):
        return common_pb2.FeatureValue(string_value=value)
    raise typer.BadParameter(f"--features: {name}: expected a number or a string")


def _plain(value: common_pb2.FeatureValue) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result = getattr(value, kind)
    if isinstance(result, float) and math.isnan(result):
        return None
    return result


def predict(
    model: Annotated[str, typer.Argument(help="Model name (as served).")],
    entity: Annotated[
        str, typer.Option("--entity", help="Entity id whose online features to use.")
    ],
    features: Annotated[
        str, typer.Option("--features", help='The event\'s own values, JSON: {"amount": 12.5}')
    ] = "{}",
    event_id: Annotated[str, typer.Option("--event-id", help="Event id to record.")] = "",
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            help="Model version (default: who answers now, the champion or an online learner).",
        ),
    ] = None,
    event_time: Annotated[
        str | None,
        typer.Option("--event-time", help="RFC 3339 event time (features as of then)."),
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Inference address (default from settings).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict for one event of an entity."""
    try:
        given = json.loads(features)
    except json.JSONDecodeError as error:
        err.print(f"[red]--features: not JSON: {escape(str(error))}[/]")
        raise typer.Exit(2) from None
    if not isinstance(given, dict):
        err.print("[red]--features: expected a JSON object[/]")
        raise typer.Exit(2)
    try:
        values = {str(k): _feature_value(str(k), v) for k, v in given.items()}
    except typer.BadParameter as error:
        err.print(f"[red]{escape(str(error))}[/]")
        raise typer.Exit(2) from None
    request = predictor_pb2.PredictRequest(
        model=model, entity_id=entity, event_id=event_id, features=values
    )
    if version is not None:
        request.version = version
    if event_time:
        try:
            request.event_time.FromDatetime(
                datetime.fromisoformat(event_time.replace("Z", "+00:00"))
            )
        except ValueError as error:
            err.print(f"[red]--event-time: {escape(str(error))}[/]")
            raise typer.Exit(2) from None
    settings = load_settings()
    target = endpoint or settings.endpoints.inference

    async def call() -> predictor_pb2.PredictResponse:
        async with open_channel(target, settings) as channel:
            reply: predictor_pb2.PredictResponse = await predictor_pb2_grpc.PredictorStub(
                channel
            ).Predict(request, timeout=10)
            return reply

    try:
        reply = asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        err.print(f"[red]{escape(failure('inference', target, error))}[/]")
        raise typer.Exit(1) from None
    used: dict[str, Any] = {k: _plain(v) for k, v in sorted(reply.features_used.items())}
    document: dict[str, Any] = {
        "event_id": reply.event_id,
        "model": reply.model,
        "model_version": reply.model_version,
        "learner": reply.learner,
        "label": reply.label,
        "probability": None if math.isnan(reply.probability) else reply.probability,
        "features_used": used,
        "defaults_applied": list(reply.defaults_applied),
    }
    if as_json:
        print(json.dumps(document, sort_keys=True))
        return
    # An online learner answered: model_version is 0 and `learner` names it.
    answerer = reply.learner or f"v{reply.model_version}"
    console.print(
        f"{reply.model} {answerer}: label [bold]{reply.label}[/] "
        f"probability {reply.probability:.4f}"
    )
    table = Table("feature", "value", "source")
    defaults = set(reply.defaults_applied)
    for name, value in used.items():
        table.add_row(name, escape(str(value)), "default" if name in defaults else "")
    console.print(table)
