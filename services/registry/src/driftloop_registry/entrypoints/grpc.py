"""`driftloop.v1.RegistryService`: convert, call the registry, reply.

Registry errors map to status codes (NotFound -> NOT_FOUND, precondition ->
FAILED_PRECONDITION, bad request -> INVALID_ARGUMENT) with the message naming
what was wrong; a model name or alias longer than 256 bytes is INVALID_ARGUMENT
before anything is looked up. Who may call what is the server's authorization
table (`driftloop_core.grpc.auth`: Promote and Rollback need the admin role);
the actor written to the alias history is the caller's credential
(`token:admin`, `cert:<name>`), never what the request says about itself.

DownloadArtifact streams the artifact from the store chunk by chunk, never
holding it whole: at least `MIN_CHUNK` bytes a message (a smaller `chunk_size`
is raised to it), at most `MAX_CHUNK`. The digest is checked as the bytes pass:
when the last chunk does not complete the recorded sha256 the stream ends with
DATA_LOSS, and the client throws away what it received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from driftloop.v1 import registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import (
    ArtifactDigestError,
    ArtifactTooLargeError,
    InvalidDigestError,
    UnsafeArtifactError,
)
from driftloop_core.grpc.auth import Authorizer, caller_identity

from driftloop_registry import messages
from driftloop_registry.domain import (
    InvalidRequestError,
    NotFoundError,
    PreconditionError,
    RegistryError,
)
from driftloop_registry.handlers import Registry

Context = grpc.aio.ServicerContext[Any, Any]
# What reading an artifact from the store may raise, besides FileNotFoundError.
_STORE_ERRORS = (
    RegistryError,
    ArtifactDigestError,
    ArtifactTooLargeError,
    InvalidDigestError,
    UnsafeArtifactError,
)
# Bytes per DownloadArtifact message: a caller's chunk_size is kept within
# these (one message per byte would cost a stream of millions of messages).
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 4 * 1024 * 1024

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ArtifactDigestError, grpc.StatusCode.DATA_LOSS),
    (InvalidDigestError, grpc.StatusCode.DATA_LOSS),
    (UnsafeArtifactError, grpc.StatusCode.DATA_LOSS),
    (ArtifactTooLargeError, grpc.StatusCode.FAILED_PRECONDITION),
    (RegistryError, grpc.StatusCode.DATA_LOSS),
]


async def _abort(context: Context, error: Exception) -> NoReturn:
    for kind, code in _CODES:
        if isinstance(error, kind):
            await context.abort(code, str(error))
    raise error


def _selector(
    request: registry_pb2.GetVersionRequest | registry_pb2.DownloadArtifactRequest,
) -> tuple[int | None, str | None]:
    which = request.WhichOneof("version_selector")
    if which == "version":
        return request.version, None
    if which == "alias":
        return None, request.alias
    return None, None


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, authorizer: Authorizer, chunk_size: int) -> None:
        self._registry = registry
        self._authorizer = authorizer
        self._chunk_size = chunk_size

    def _actor(self, context: Context, request_actor: str) -> str:
        """The alias history's actor: the credential's name; what the request
        says about itself is kept beside it as a note."""
        identity = caller_identity(context, self._authorizer)
        return f"{identity} ({request_actor[:80]})" if request_actor else identity

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: Context
    ) -> registry_pb2.ListModelsResponse:
        response = registry_pb2.ListModelsResponse()
        for stats in await self._registry.list_models():
            summary = response.models.add(
                model=stats.model,
                latest_version=stats.latest_version,
                version_count=stats.version_count,
            )
            if stats.champion_version is not None:
                summary.champion_version = stats.champion_version
            summary.updated_at.FromDatetime(stats.updated_at)
        return response

    async def ListVersions(
        self, request: registry_pb2.ListVersionsRequest, context: Context
    ) -> registry_pb2.ListVersionsResponse:
        try:
            versions = await self._registry.list_versions(request.model)
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.ListVersionsResponse(versions=versions)

    async def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: Context
    ) -> registry_pb2.GetVersionResponse:
        version, alias = _selector(request)
        try:
            found = await self._registry.get_version(request.model, version, alias)
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.GetVersionResponse(model_version=found)

    async def GetChampion(
        self, request: registry_pb2.GetChampionRequest, context: Context
    ) -> registry_pb2.GetChampionResponse:
        try:
            found = await self._registry.get_version(request.model)
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.GetChampionResponse(model_version=found)

    async def Promote(
        self, request: registry_pb2.PromoteRequest, context: Context
    ) -> registry_pb2.PromoteResponse:
        try:
            event, version = await self._registry.promote(
                request.model,
                request.version,
                actor=self._actor(context, request.actor),
                reason=request.reason,
            )
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.PromoteResponse(promotion=event, model_version=version)

    async def Rollback(
        self, request: registry_pb2.RollbackRequest, context: Context
    ) -> registry_pb2.RollbackResponse:
        try:
            event, version = await self._registry.rollback(
                request.model, actor=self._actor(context, request.actor), reason=request.reason
            )
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.RollbackResponse(promotion=event, model_version=version)

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[registry_pb2.DownloadArtifactResponse]:
        version, alias = _selector(request)
        size = min(max(request.chunk_size or self._chunk_size, MIN_CHUNK), MAX_CHUNK)
        try:
            found, stream = await self._registry.open_artifact(request.model, version, alias)
        except _STORE_ERRORS as error:
            await _abort(context, error)
        except FileNotFoundError:
            await context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"model {request.model}: artifact missing from the artifact store",
            )
        with stream:
            offset = 0
            while True:
                try:
                    data = await asyncio.to_thread(stream.read, size)
                except _STORE_ERRORS as error:
                    await _abort(context, error)
                if not data and offset:
                    return
                yield registry_pb2.DownloadArtifactResponse(
                    model=found.model,
                    version=found.version,
                    sha256=found.sha256,
                    size_bytes=found.size_bytes,
                    offset=offset,
                    data=data,
                )
                if not data:
                    return
                offset += len(data)

    async def ListAliasHistory(
        self, request: registry_pb2.ListAliasHistoryRequest, context: Context
    ) -> registry_pb2.ListAliasHistoryResponse:
        try:
            changes = await self._registry.history(request.model, request.alias)
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.ListAliasHistoryResponse(changes=changes)

    async def ListRollouts(
        self, request: registry_pb2.ListRolloutsRequest, context: Context
    ) -> registry_pb2.ListRolloutsResponse:
        try:
            rollouts = await self._registry.rollouts(request.model)
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.ListRolloutsResponse(
            rollouts=[messages.rollout(rollout) for rollout in rollouts]
        )
