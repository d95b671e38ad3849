"""The served versions of one model and the only place they change.

The current version answers every request that names no version; the one it
replaced stays loaded, so a rollback to it is an instant swap. A new version is
downloaded, verified, loaded and warmed up in a worker thread while the current
one keeps serving, then swapped in with one assignment: a request sees either
the old model or the new one, never a half-loaded one. A failed load leaves
everything as it was, logged and counted. Listeners registered with `on_change`
run after each swap, inside the caller's span (a promotion's trace).

A version may already be loaded and verified elsewhere: a rollout candidate
scored in the shadow (`rollouts.py`). When a promotion names exactly that
version and digest, it is swapped in as it is, without a second download.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from driftloop_inference.errors import ModelNotFound, ModelUnavailable
from driftloop_inference.metrics import MODEL_LOAD_FAILURES, MODEL_LOADS, MODEL_VERSION
from driftloop_inference.model import Loader, ModelLoadError, ServedModel

log = structlog.get_logger(__name__)

# (model, version) -> (bytes, sha256 the source vouches for)
Fetch = Callable[[str, int], Awaitable[tuple[bytes, str]]]
# (version, sha256) -> that version, loaded and verified elsewhere, or None
Preloaded = Callable[[int, str], ServedModel | None]


class ModelRepository:
    def __init__(self, name: str, load: Loader) -> None:
        self.name = name
        self._load = load
        self.current: ServedModel | None = None
        self.previous: ServedModel | None = None
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[ServedModel], Awaitable[None]]] = []
        self.last_error: str = ""
        self.loaded_event = asyncio.Event()
        # The champion the registry named while none is loaded yet (being loaded).
        self.expected: int | None = None
        self._preloaded: Preloaded | None = None

    def on_change(self, listener: Callable[[ServedModel], Awaitable[None]]) -> None:
        self._listeners.append(listener)

    def use_preloaded(self, lookup: Preloaded) -> None:
        """Where `load_version` looks before downloading: a version already
        loaded and verified elsewhere, with exactly the digest expected."""
        self._preloaded = lookup

    @property
    def ready(self) -> bool:
        return self.current is not None

    def loaded(self) -> list[ServedModel]:
        return [m for m in (self.current, self.previous) if m is not None]

    def served(self, name: str) -> ServedModel | None:
        """The current version for a request naming model `name` ("" this one),
        None before the first; ModelNotFound for another model."""
        if name and name != self.name:
            raise ModelNotFound(
                f"model '{name}' is not served here; this server serves '{self.name}'"
            )
        return self.current

    def resolve(self, name: str, version: str) -> ServedModel:
        """The model for a request's (name, version); "" means the served one / current."""
        current = self.served(name)
        if not version:
            if current is None:
                raise ModelUnavailable(f"model '{self.name}' is not loaded yet")
            return current
        if current is not None and version == current.version_str:
            return current
        previous = self.previous
        if previous is not None and version == previous.version_str:
            return previous
        loaded = ", ".join(m.version_str for m in self.loaded()) or "none"
        raise ModelNotFound(
            f"model '{self.name}' version '{version}' is not loaded; loaded versions: {loaded}"
        )

    async def install(self, model: ServedModel) -> None:
        """Swap `model` in; the current one becomes the rollback target."""
        old = self.current
        if old is not None and old.version == model.version and old.sha256 == model.sha256:
            return
        if self.previous is not None and self.previous is not old:
            MODEL_VERSION.remove(self.name, self.previous.version_str, self.previous.sha256)
        self.previous = old if old is not model else self.previous
        self.current = model
        self.loaded_event.set()
        if self.previous is not None:
            MODEL_VERSION.labels(self.name, self.previous.version_str, self.previous.sha256).set(0)
        MODEL_VERSION.labels(self.name, model.version_str, model.sha256).set(1)
        MODEL_LOADS.labels(self.name).inc()
        log.info(
            "model_swapped",
            model=self.name,
            version=model.version,
            sha256=model.sha256,
            previous=old.version if old else None,
        )
        for listener in self._listeners:
            await listener(model)

    async def load_bytes(self, version: int, data: bytes, expected_sha256: str | None) -> bool:
        """Verify, load, warm up and swap in; False (old model serving) on failure."""
        try:
            model = await asyncio.to_thread(self._load, self.name, version, data, expected_sha256)
        except ModelLoadError as error:
            self._failed(version, error.stage, str(error))
            return False
        await self.install(model)
        return True

    async def load_version(self, version: int, expected_sha256: str, fetch: Fetch) -> bool:
        """Make `version` current: an instant swap when it is the loaded previous
        version, else a background download and load. Serialised."""
        async with self._lock:
            current = self.current
            if (
                current is not None
                and current.version == version
                and (not expected_sha256 or current.sha256 == expected_sha256)
            ):
                return True
            previous = self.previous
            if (
                previous is not None
                and previous.version == version
                and (not expected_sha256 or previous.sha256 == expected_sha256)
            ):
                await self.install(previous)
                return True
            preloaded = self._preloaded
            ready = preloaded(version, expected_sha256) if preloaded and expected_sha256 else None
            if ready is not None:
                log.info("preloaded_version_used", model=self.name, version=version)
                await self.install(ready)
                return True
            try:
                data, vouched = await fetch(self.name, version)
            except ModelLoadError as error:
                self._failed(version, error.stage, str(error))
                return False
            if expected_sha256 and vouched and vouched != expected_sha256:
                self._failed(
                    version,
                    "digest",
                    f"model {self.name} v{version}: the registry's sha256 {vouched} is not the "
                    f"promoted {expected_sha256}",
                )
                return False
            return await self.load_bytes(version, data, expected_sha256 or vouched)

    def refuse(self, version: int, stage: str, reason: str) -> None:
        """Count and log `version` as not loaded, refused before any download
        (a promotion the registry does not confirm); what is served stays."""
        self.last_error = reason
        MODEL_LOAD_FAILURES.labels(self.name, stage).inc()
        log.warning(
            "promotion_refused",
            model=self.name,
            version=version,
            stage=stage,
            reason=reason,
            serving=self.current.version if self.current else None,
        )

    def _failed(self, version: int, stage: str, message: str) -> None:
        self.last_error = message
        MODEL_LOAD_FAILURES.labels(self.name, stage).inc()
        log.error(
            "model_load_failed",
            model=self.name,
            version=version,
            stage=stage,
            error=message,
            serving=self.current.version if self.current else None,
        )
