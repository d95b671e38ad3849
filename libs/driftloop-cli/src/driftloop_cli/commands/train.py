"""`driftloop train MODEL`: ask the trainer for a new model version and follow it.

The request goes on `training.requested` like drift's own. Unless `--no-wait`,
the command then follows the run until the registry reports the version
(`models.registered`) or the trainer reports a failure (`training.failed`),
matching on the request id. It starts reading those topics from their end
before publishing, so an answer can never slip past unseen.

Exit codes: 0 when the request was sent (`--no-wait`) or the version was
registered; 1 when training failed or the broker is unreachable; 3 on timeout
(the run may still finish; its request id is printed).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.kafka import Publisher, Topics, tail
from driftloop_core.settings import Settings, load_settings
from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

EXIT_TIMEOUT = 3
_FOLLOWED = (Topics.MODELS_TRAINED, Topics.MODELS_REGISTERED, Topics.TRAINING_FAILED)


@dataclass
class Outcome:
    """What became of a request: `registered` or `failed`, or None on timeout."""

    request_id: str
    kind: str | None = None
    trained: events_pb2.ModelTrained | None = None
    registered: events_pb2.ModelRegistered | None = None
    failed: events_pb2.TrainingFailed | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": self.request_id, "outcome": self.kind or "timeout"}
        if self.trained is not None:
            out["metrics"] = dict(self.trained.metrics)
            out["sha256"] = self.trained.artifact.sha256
        if self.registered is not None:
            out["model"] = self.registered.model
            out["version"] = self.registered.version
            out["status"] = common_pb2.ModelVersionStatus.Name(self.registered.status)
            out["reason"] = self.registered.reason
            out["metrics"] = dict(self.registered.metrics)
            out["sha256"] = self.registered.artifact.sha256
        if self.failed is not None:
            out["stage"] = self.failed.stage
            out["reason"] = self.failed.reason
        return out


def training_request(model: str, reason: str, last_n: int | None) -> events_pb2.TrainingRequested:
    request = events_pb2.TrainingRequested(
        request_id=uuid.uuid4().hex,
        model=model,
        reason=reason,
        trigger=events_pb2.TRAINING_TRIGGER_MANUAL,
        requested_by=getpass.getuser(),
    )
    if last_n is not None:
        request.window.last_n = last_n
    request.requested_at.FromDatetime(datetime.now(UTC))
    return request


async def _tail(settings: Settings) -> Any:
    """A group-less consumer positioned at the current end of the followed topics."""
    return await tail(settings, _FOLLOWED, from_end=True, client_suffix="train")


def _decode(topic: str, value: bytes) -> Any:
    message: Any = {
        Topics.MODELS_TRAINED: events_pb2.ModelTrained,
        Topics.MODELS_REGISTERED: events_pb2.ModelRegistered,
        Topics.TRAINING_FAILED: events_pb2.TrainingFailed,
    }[topic]()
    message.ParseFromString(value)
    return message


async def _request_and_follow(
    settings: Settings,
    request: events_pb2.TrainingRequested,
    *,
    wait: bool,
    timeout_s: float,
    show: Any,
) -> Outcome:
    outcome = Outcome(request.request_id)
    consumer = await _tail(settings) if wait else None
    try:
        async with Publisher(settings) as publisher:
            await publisher.publish_event(request, key=request.model)
        if consumer is None:
            outcome.kind = "requested"
            return outcome
        show("waiting for the trainer")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=250)
            for tp, messages in batches.items():
                for message in messages:
                    event = _decode(tp.topic, message.value or b"")
                    if event.request_id != request.request_id:
                        continue
                    if isinstance(event, events_pb2.ModelTrained):
                        outcome.trained = event
                        auc = event.metrics.get("roc_auc")
                        show(
                            "trained"
                            + (f" (roc_auc {auc:.3f})" if auc is not None else "")
                            + ", waiting for the registry"
                        )
                    elif isinstance(event, events_pb2.ModelRegistered):
                        outcome.registered, outcome.kind = event, "registered"
                        return outcome
                    else:
                        outcome.failed, outcome.kind = event, "failed"
                        return outcome
        return outcome
    finally:
        if consumer is not None:
            await consumer.stop()


def train(
    model: Annotated[str, typer.Argument(help="Model (feature set) name.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why; recorded with the request.")
    ] = "manual request",
    last_n: Annotated[
        int | None,
        typer.Option("--last-n", min=1, help="Train on the N latest labelled rows (default all)."),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Send the request and return at once.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for the outcome.")
    ] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Request a training run; wait until its version is registered or it fails."""
    settings = load_settings().for_service("cli")
    request = training_request(model, reason, last_n)
    status = err.status(f"training {escape(model)}: sending request", spinner="dots")

    def show(text: str) -> None:
        status.update(f"training {escape(model)}: {escape(text)}")

    try:
        with status:
            outcome = asyncio.run(
                _request_and_follow(
                    settings, request, wait=not no_wait, timeout_s=timeout, show=show
                )
            )
    except (KafkaError, OSError) as error:
        err.print(f"[red]train failed:[/] broker unreachable: {escape(str(error))}")
        raise typer.Exit(1) from None

    if as_json:
        print(json.dumps(outcome.as_dict()))
    elif outcome.kind == "requested":
        console.print(f"requested training of {escape(model)}: request id {request.request_id}")
    elif outcome.registered is not None:
        registered = outcome.registered
        status_name = common_pb2.ModelVersionStatus.Name(registered.status)
        console.print(
            f"{escape(registered.model)} version [bold]{registered.version}[/] registered "
            f"as {status_name.removeprefix('MODEL_VERSION_STATUS_').lower()}: "
            f"{escape(registered.reason)}",
            soft_wrap=True,
        )
    elif outcome.failed is not None:
        err.print(
            f"[red]training failed[/] at stage {escape(outcome.failed.stage)}: "
            f"{escape(outcome.failed.reason)} (request id {request.request_id})",
            soft_wrap=True,
        )
    else:
        err.print(
            f"[yellow]no outcome within {timeout:g}s[/] (request id {request.request_id}"
            + (", trained, not yet registered" if outcome.trained is not None else "")
            + ")"
        )
    if outcome.kind == "failed":
        raise typer.Exit(1)
    if outcome.kind is None:
        raise typer.Exit(EXIT_TIMEOUT)
