"""`driftloop.v1.RegistryService`: convert, call the registry, reply.

Registry errors map to status codes (NotFound -> NOT_FOUND, precondition ->
FAILED_PRECONDITION, bad request -> INVALID_ARGUMENT) with the message naming
what was wrong. Promote and Rollback check `authorization: Bearer <token>`
against the admin token in constant time when one is configured (the core
`require_bearer`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from driftloop.v1 import registry_pb2, registry_pb2_grpc
from driftloop_core.artifacts import ArtifactDigestError, ArtifactTooLargeError
from driftloop_core.grpc.auth import require_bearer

from driftloop_registry.domain import (
    InvalidRequestError,
    NotFoundError,
    PreconditionError,
    RegistryError,
)
from driftloop_registry.handlers import Registry

Context = grpc.aio.ServicerContext[Any, Any]
MAX_CHUNK = 4 * 1024 * 1024

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ArtifactDigestError, grpc.StatusCode.DATA_LOSS),
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
    def __init__(self, registry: Registry, admin_token: str | None, chunk_size: int) -> None:
        self._registry = registry
        self._token = admin_token
        self._chunk_size = chunk_size

    async def _authorize(self, context: Context) -> str:
        """Check the bearer token when one is configured; returns the caller's name
        for the alias history."""
        await require_bearer(context, self._token, "DRIFTLOOP_ADMIN_TOKEN")
        return "admin"

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
        versions = await self._registry.list_versions(request.model)
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
        caller = await self._authorize(context)
        try:
            event, version = await self._registry.promote(
                request.model,
                request.version,
                actor=request.actor or caller,
                reason=request.reason,
            )
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.PromoteResponse(promotion=event, model_version=version)

    async def Rollback(
        self, request: registry_pb2.RollbackRequest, context: Context
    ) -> registry_pb2.RollbackResponse:
        caller = await self._authorize(context)
        try:
            event, version = await self._registry.rollback(
                request.model, actor=request.actor or caller, reason=request.reason
            )
        except RegistryError as error:
            await _abort(context, error)
        return registry_pb2.RollbackResponse(promotion=event, model_version=version)

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[registry_pb2.DownloadArtifactResponse]:
        version, alias = _selector(request)
        chunk = min(request.chunk_size or self._chunk_size, MAX_CHUNK)
        try:
            found, data = await self._registry.artifact_bytes(request.model, version, alias)
        except (RegistryError, ArtifactDigestError, ArtifactTooLargeError) as error:
            await _abort(context, error)
        except FileNotFoundError:
            await context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"model {request.model}: artifact missing from the artifact store",
            )
        for offset in range(0, max(len(data), 1), chunk):
            yield registry_pb2.DownloadArtifactResponse(
                model=found.model,
                version=found.version,
                sha256=found.sha256,
                size_bytes=found.size_bytes,
                offset=offset,
                data=data[offset : offset + chunk],
            )

    async def ListAliasHistory(
        self, request: registry_pb2.ListAliasHistoryRequest, context: Context
    ) -> registry_pb2.ListAliasHistoryResponse:
        changes = await self._registry.history(request.model, request.alias)
        return registry_pb2.ListAliasHistoryResponse(changes=changes)
