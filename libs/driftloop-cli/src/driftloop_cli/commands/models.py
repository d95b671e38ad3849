"""`driftloop models list|show|rollout|download|promote|rollback`: the model registry by hand.

Thin clients of `driftloop.v1.RegistryService`. `download` checks the sha256 and
size of what it received before the file appears under its name, so a corrupt
transfer never leaves a plausible-looking model behind (`driftloop_cli.outputs`:
a device, FIFO or `-` is written in place instead). `promote` and
`rollback` send `authorization: Bearer <token>` from `--token` or
`DRIFTLOOP_ADMIN_TOKEN`. Exit code 1 with the server's message when a call fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import grpc
import grpc.aio
import typer
from driftloop.v1 import common_pb2, events_pb2, registry_pb2, registry_pb2_grpc
from driftloop_core.grpc.auth import bearer_metadata
from driftloop_core.grpc.client import open_channel
from driftloop_core.settings import load_settings
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from driftloop_cli.outputs import is_stdout, open_output
from driftloop_cli.rpc import failure

app = typer.Typer(help="The model registry.", no_args_is_help=True)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")

_STATUS = {
    common_pb2.MODEL_VERSION_STATUS_CANDIDATE: "candidate",
    common_pb2.MODEL_VERSION_STATUS_CHAMPION: "champion",
    common_pb2.MODEL_VERSION_STATUS_ARCHIVED: "archived",
}
_KIND = {
    events_pb2.PROMOTION_KIND_PROMOTE: "promote",
    events_pb2.PROMOTION_KIND_ROLLBACK: "rollback",
}

Endpoint = Annotated[
    str | None, typer.Option("--endpoint", help="RegistryService address (default from settings).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="DRIFTLOOP_ADMIN_TOKEN", help="Admin token for the registry."),
]


def _time(stamp: Timestamp) -> str | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def version_document(version: registry_pb2.ModelVersion) -> dict[str, Any]:
    """Every recorded field of a version, as the `--json` output shows it."""
    dataset = version.dataset
    return {
        "name": version.model,
        "version": version.version,
        "status": _STATUS.get(version.status, "unknown"),
        "champion": "champion" in version.aliases,
        "aliases": list(version.aliases),
        "status_reason": version.status_reason,
        "metrics": dict(version.metrics),
        "champion_metrics": dict(version.champion_metrics),
        "champion_version": (
            version.champion_version if version.HasField("champion_version") else None
        ),
        "artifact_uri": version.artifact.uri,
        "sha256": version.artifact.sha256,
        "size_bytes": version.artifact.size_bytes,
        "dataset_uri": dataset.uri,
        "dataset_digest": dataset.sha256,
        "dataset_rows": dataset.row_count,
        "dataset_window": {
            "start": _time(dataset.time_range.start),
            "end": _time(dataset.time_range.end),
        },
        "signature": json_format.MessageToDict(version.signature),
        "params": dict(version.params),
        "code_version": version.code_version,
        "parent_version": version.parent_version if version.HasField("parent_version") else None,
        "request_id": version.request_id,
        "feature_names": list(version.feature_names),
        "algorithm": version.algorithm,
        "eval_rows": version.eval_rows,
        "created_at": _time(version.created_at),
        "trained_at": _time(version.trained_at),
    }


def _promotion_document(change: events_pb2.ModelPromoted) -> dict[str, Any]:
    return {
        "promotion_id": change.promotion_id,
        "name": change.model,
        "alias": change.alias,
        "from_version": change.from_version if change.HasField("from_version") else None,
        "to_version": change.to_version,
        "kind": _KIND.get(change.kind, "unknown"),
        "actor": change.actor,
        "reason": change.reason,
        "at": _time(change.promoted_at),
    }


def rollout_document(rollout: registry_pb2.Rollout) -> dict[str, Any]:
    """A rollout as `--json` shows it: stage, versions, reasons, live figures."""
    return {
        "rollout_id": rollout.rollout_id,
        "name": rollout.model,
        "candidate_version": rollout.candidate_version,
        "champion_version": rollout.champion_version,
        "kind": rollout.kind or "trial",
        "stage": rollout.stage,
        "gate_reason": rollout.gate_reason,
        "end_reason": rollout.end_reason,
        "started_at": _time(rollout.started_at),
        "ended_at": _time(rollout.ended_at),
        "figures": (
            {field.name: value for field, value in rollout.figures.ListFields()}
            if rollout.HasField("figures")
            else None
        ),
        "policy": {
            "min_paired": rollout.policy.min_paired,
            "max_duration_s": rollout.policy.max_duration.ToMilliseconds() / 1000,
            "alpha": rollout.policy.alpha,
            "beta": rollout.policy.beta,
            "effect": rollout.policy.effect,
        },
    }


def _call(endpoint: str | None, call: Callable[[Any], Awaitable[T]]) -> T:
    """Run one call against the registry; a failed call exits 1 with its message."""
    settings = load_settings()
    target = endpoint or settings.endpoints.registry

    async def run() -> T:
        async with open_channel(target, settings) as channel:
            return await call(registry_pb2_grpc.RegistryServiceStub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        err.print(f"[red]{escape(failure('registry', target, error))}[/]")
        raise typer.Exit(1) from None


@app.command("list")
def list_versions(
    name: Annotated[str, typer.Argument(help="Model name (default: every model).")] = "",
    endpoint: Endpoint = None,
    as_json: AsJson = False,
) -> None:
    """List model versions with their status and metrics."""
    reply = _call(
        endpoint,
        lambda stub: stub.ListVersions(registry_pb2.ListVersionsRequest(model=name), timeout=10),
    )
    documents = [version_document(version) for version in reply.versions]
    if as_json:
        print(json.dumps({"versions": documents}, sort_keys=True))
        return
    table = Table("name", "version", "status", "metrics", "created_at", "reason")
    for doc in documents:
        metrics = ", ".join(f"{key}={value:.4f}" for key, value in sorted(doc["metrics"].items()))
        status = f"[green]{doc['status']}[/]" if doc["champion"] else doc["status"]
        table.add_row(
            doc["name"],
            str(doc["version"]),
            status,
            metrics,
            doc["created_at"] or "-",
            escape(doc["status_reason"]),
        )
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number, or 'champion'.")],
    endpoint: Endpoint = None,
    as_json: AsJson = False,
) -> None:
    """Everything recorded about one version: artifact digest, metrics, lineage,
    and its latest rollout (stage and live figures) when it had one."""
    request = _selector(registry_pb2.GetVersionRequest(model=name), version)

    async def both(
        stub: Any,
    ) -> tuple[registry_pb2.GetVersionResponse, registry_pb2.ListRolloutsResponse]:
        found = await stub.GetVersion(request, timeout=10)
        rollouts = await stub.ListRollouts(registry_pb2.ListRolloutsRequest(model=name), timeout=10)
        return found, rollouts

    reply, rollouts = _call(endpoint, both)
    document = version_document(reply.model_version)
    own = [r for r in rollouts.rollouts if r.candidate_version == document["version"]]
    document["rollout"] = rollout_document(own[0]) if own else None
    if as_json:
        print(json.dumps(document, sort_keys=True))
        return
    table = Table("field", "value", title=f"{name} v{document['version']}")
    for key, value in document.items():
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        table.add_row(key, escape(str(shown)))
    console.print(table)


@app.command("rollout")
def rollout(
    name: Annotated[str, typer.Argument(help="Model name (default: every model).")] = "",
    endpoint: Endpoint = None,
    as_json: AsJson = False,
) -> None:
    """List rollouts, newest first: the candidate on trial, its stage and live figures."""
    reply = _call(
        endpoint,
        lambda stub: stub.ListRollouts(registry_pb2.ListRolloutsRequest(model=name), timeout=10),
    )
    documents = [rollout_document(r) for r in reply.rollouts]
    if as_json:
        print(json.dumps({"rollouts": documents}, sort_keys=True))
        return
    table = Table(
        "name", "kind", "candidate", "champion", "stage", "started_at", "live figures", "reason"
    )
    for doc in documents:
        figures = doc["figures"] or {}
        live = (
            f"{figures.get('paired', 0)} paired: errors "
            f"{figures.get('champion_errors', 0)} vs {figures.get('candidate_errors', 0)}"
            if figures
            else "-"
        )
        table.add_row(
            doc["name"],
            doc["kind"],
            f"v{doc['candidate_version']}",
            f"v{doc['champion_version']}",
            doc["stage"],
            doc["started_at"] or "-",
            live,
            escape(doc["end_reason"] or doc["gate_reason"]),
        )
    console.print(table)


Selectable = TypeVar(
    "Selectable", registry_pb2.GetVersionRequest, registry_pb2.DownloadArtifactRequest
)


def _selector(request: Selectable, version: str) -> Selectable:
    if version.isdigit():
        request.version = int(version)
    elif version:
        request.alias = version
    return request


@app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number, or 'champion'.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the ONNX file; '-' for standard output. A device or "
            "FIFO is written in place, a file is replaced only once the download verified.",
        ),
    ],
    endpoint: Endpoint = None,
    as_json: AsJson = False,
) -> None:
    """Download a version's ONNX file and verify its sha256 and size."""
    request = _selector(registry_pb2.DownloadArtifactRequest(model=name), version)

    async def fetch(stub: registry_pb2_grpc.RegistryServiceStub) -> tuple[int, str, int]:
        digest = hashlib.sha256()
        received, expected_sha, expected_size, resolved = 0, "", 0, 0
        with open_output(output) as handle:
            responses = cast(
                AsyncIterator[registry_pb2.DownloadArtifactResponse],
                stub.DownloadArtifact(request, timeout=120),
            )
            async for chunk in responses:
                expected_sha, expected_size = chunk.sha256, chunk.size_bytes
                resolved = chunk.version
                handle.write(chunk.data)
                digest.update(chunk.data)
                received += len(chunk.data)
            actual = digest.hexdigest()
            if actual != expected_sha or received != expected_size:
                # Raised inside the block: a file target keeps its old bytes.
                err.print(
                    f"[red]download corrupt[/]: got {received} bytes with sha256 {actual}, "
                    f"expected {expected_size} bytes with sha256 {expected_sha}"
                )
                raise typer.Exit(1)
        return resolved, actual, received

    try:
        resolved, sha256, size = _call(endpoint, fetch)
    except OSError as error:
        err.print(f"[red]cannot write {escape(str(output))}[/]: {escape(str(error))}")
        raise typer.Exit(1) from None
    # With `-o -` the model is standard output; the verdict goes to stderr.
    to_stdout = is_stdout(output)
    if as_json:
        document = {
            "name": name,
            "version": resolved,
            "sha256": sha256,
            "size_bytes": size,
            "path": str(output),
        }
        print(json.dumps(document, sort_keys=True), file=sys.stderr if to_stdout else sys.stdout)
        return
    (err if to_stdout else console).print(
        f"{name} v{resolved}: {size} bytes, sha256 {sha256} verified -> {output}"
    )


@app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in alias history).")],
    actor: Annotated[str, typer.Option("--actor", help="Who asks.")] = "",
    token: Token = None,
    endpoint: Endpoint = None,
    as_json: AsJson = False,
) -> None:
    """Move the champion alias to a version, by hand."""
    request = registry_pb2.PromoteRequest(
        model=name, version=version, reason=reason, actor=actor or os.environ.get("USER", "")
    )
    reply = _call(
        endpoint, lambda stub: stub.Promote(request, metadata=bearer_metadata(token), timeout=30)
    )
    _print_change(reply.promotion, as_json)


@app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in alias history).")],
    actor: Annotated[str, typer.Option("--actor", help="Who asks.")] = "",
    token: Token = None,
    endpoint: Endpoint = None,
    as_json: AsJson = False,
) -> None:
    """Move the champion alias back to the previous champion."""
    request = registry_pb2.RollbackRequest(
        model=name, reason=reason, actor=actor or os.environ.get("USER", "")
    )
    reply = _call(
        endpoint, lambda stub: stub.Rollback(request, metadata=bearer_metadata(token), timeout=30)
    )
    _print_change(reply.promotion, as_json)


def _print_change(change: events_pb2.ModelPromoted, as_json: bool) -> None:
    document = _promotion_document(change)
    if as_json:
        print(json.dumps(document, sort_keys=True))
        return
    before = document["from_version"]
    console.print(
        f"{document['name']}: champion v{before if before is not None else '-'} -> "
        f"v{document['to_version']} ({document['kind']}: {escape(document['reason'])})"
    )
