"""Which model version is served: the first one at start, every promotion (and
rollback) after it, and a catch-up with the registry after the promotions
consumer rejoins its group.

Every load goes through the repository's one verified path (download, digest,
ONNX, warm-up, swap); a failed load leaves the served version serving.

A `ModelPromoted` is a notice, not an authority: anyone who may write to
`models.promoted` can send one, past the registry's admin role and its gate.
So before a swap the registry is asked for its champion (GetChampion), and a
promotion that does not name that version with that digest is refused, logged
with the reason and counted (`driftloop_inference_model_load_failures_total`,
stage `digest` when the named bytes are not the champion's, `version` when the
bytes are but the version number is not, `no_champion`); the served version
keeps serving. A legitimate promotion overtaken by a later change (promoted,
then rolled back at once) is refused the same way, and the later change's own
notice brings the registry's champion. While the registry does not answer, the
promotion is retried (a transient error for the consumer), never applied
unconfirmed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import structlog
from driftloop.v1 import events_pb2, registry_pb2
from driftloop_core.kafka import TransientError

from driftloop_inference.errors import RegistryUnavailable
from driftloop_inference.metrics import PROMOTION_CATCH_UPS
from driftloop_inference.repository import ModelRepository

if TYPE_CHECKING:  # the settings module pulls in the Kafka layer for its topic names
    from driftloop_inference.config import InferenceSettings

log = structlog.get_logger(__name__)


class Registry(Protocol):
    """The registry's champion and artifacts (adapters/registry.py)."""

    async def champion(self, model: str) -> registry_pb2.ModelVersion | None:
        """None when the model has no champion; raises RegistryUnavailable."""
        ...

    async def download(self, model: str, version: int) -> tuple[bytes, str]:
        """The artifact's bytes and vouched digest; raises ModelLoadError."""
        ...


def promotion_refusal(
    promoted: events_pb2.ModelPromoted, champion: registry_pb2.ModelVersion | None
) -> tuple[str, str] | None:
    """Why `promoted` must not be applied, as (stage, reason), given the
    registry's `champion`; None when it names the champion and its digest."""
    named = (
        f"model {promoted.model}: promotion to v{promoted.to_version} "
        f"(sha256 {promoted.artifact.sha256[:64] or '(none)'}) refused"
    )
    if champion is None:
        return "no_champion", f"{named}: the registry has no champion for this model"
    held = f"the registry's champion is v{champion.version} (sha256 {champion.artifact.sha256})"
    if promoted.artifact.sha256 != champion.artifact.sha256:
        return "digest", f"{named}: {held}"
    if promoted.to_version != champion.version:
        return "version", f"{named}: {held}"
    return None


class ModelLifecycle:
    def __init__(
        self,
        model_name: str,
        repository: ModelRepository,
        registry: Registry,
        config: InferenceSettings,
    ) -> None:
        self.model_name = model_name
        self._repository = repository
        self._registry = registry
        self._config = config
        # Promotions received and confirmed by the registry, so a catch-up after
        # a rejoin knows one came after it (a refused one, forged perhaps, must
        # not cut a catch-up short).
        self._promotions_received = 0

    async def initial_load(self) -> None:
        """The configured file, else the registry's champion, retried until one loads."""
        repository = self._repository
        if self._config.model_file is not None:
            data = await asyncio.to_thread(self._config.model_file.read_bytes)
            await repository.load_bytes(self._config.model_file_version, data, None)
            return
        while not repository.ready:
            try:
                champion = await self._registry.champion(self.model_name)
            except RegistryUnavailable as error:
                log.warning(
                    "champion_lookup_failed",
                    model=self.model_name,
                    code=error.code,
                    details=error.details,
                )
                champion = None
            else:
                if champion is None:
                    log.info("no_champion_yet", model=self.model_name)
            if champion is not None and not repository.ready:
                repository.expected = champion.version
                loaded = await repository.load_version(
                    champion.version, champion.artifact.sha256, self._registry.download
                )
                if loaded:
                    return
            await asyncio.sleep(self._config.retry_interval_s)

    async def promoted(self, promoted: events_pb2.ModelPromoted) -> None:
        """Swap to the version `promoted` names once the registry confirms it is
        the champion with that digest; else refuse it (the module docstring).
        Raises TransientError while the registry does not answer."""
        try:
            champion = await self._registry.champion(self.model_name)
        except RegistryUnavailable as error:
            log.warning(
                "promotion_check_failed",
                model=self.model_name,
                to_version=promoted.to_version,
                code=error.code,
                details=error.details,
            )
            raise TransientError(
                f"model {self.model_name}: the registry did not confirm the promotion "
                f"to v{promoted.to_version}: {error}"
            ) from error
        refusal = promotion_refusal(promoted, champion)
        if refusal is not None:
            self._repository.refuse(promoted.to_version, *refusal)
            return
        assert champion is not None
        self._promotions_received += 1
        await self._repository.load_version(
            champion.version, champion.artifact.sha256, self._registry.download
        )

    async def reassigned(self) -> None:
        """The promotions consumer rejoined its group and starts past whatever was
        published while it was out: load the registry's champion if it is not the
        served version, through the same verified path as a promotion.

        A promotion received after the rejoin is at least as new as the
        registry's answer and is followed by every later one, so it ends the
        check (and its answer is not applied). Unreachable, the registry is
        asked again every `retry_interval_s`; the served version keeps serving.
        """
        received = self._promotions_received
        champion = None
        while self._promotions_received == received:
            try:
                champion = await self._registry.champion(self.model_name)
                break
            except RegistryUnavailable as error:
                PROMOTION_CATCH_UPS.labels(self.model_name, "registry_unavailable").inc()
                log.warning(
                    "promotion_catch_up_lookup_failed",
                    model=self.model_name,
                    code=error.code,
                    details=error.details,
                    retry_in_s=self._config.retry_interval_s,
                )
            await asyncio.sleep(self._config.retry_interval_s)
        if self._promotions_received != received:
            PROMOTION_CATCH_UPS.labels(self.model_name, "superseded").inc()
            return
        if champion is None:
            PROMOTION_CATCH_UPS.labels(self.model_name, "no_champion").inc()
            return
        current = self._repository.current
        serving = current.version if current else None
        # No await between the check above and load_version queueing on the
        # repository's lock: a promotion received later is applied after this.
        loaded = await self._repository.load_version(
            champion.version, champion.artifact.sha256, self._registry.download
        )
        outcome = "load_failed" if not loaded else "current"
        if loaded and serving != champion.version:
            outcome = "loaded"
            log.info(
                "promotion_caught_up",
                model=self.model_name,
                version=champion.version,
                previous=serving,
            )
        PROMOTION_CATCH_UPS.labels(self.model_name, outcome).inc()
