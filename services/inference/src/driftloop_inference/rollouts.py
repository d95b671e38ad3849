"""Which rollout candidate, if any, is scored in the champion's shadow.

With rollouts on, the registry does not make a new version champion at once:
it opens a rollout (`ModelRolloutStarted` on `models.rollouts`), drift judges
the candidate on the labels of live traffic, and the registry ends the rollout
(`ModelRolloutEnded`), promoting the candidate through `models.promoted` or
not. Meanwhile every inference process scores each Predict with the candidate
too and publishes its answer as a shadow prediction (`shadow.py`); callers only
ever get the champion's.

`Rollouts` keeps the model's open rollout (the latest one started and not
ended) and the candidate loaded for it. The candidate has a slot of its own,
never the repository's current or previous version, so no request can name
it. It is loaded as a promoted version is: downloaded from the registry, its
bytes checked against the digest the registry vouches for, which must be the
digest the event names, then loaded and warmed up by the same loader. It must
also fit Predict (one input per feature). A failed load is logged and counted
(`driftloop_inference_shadow_load_failures_total`) and changes nothing else:
that rollout is not shadowed. A newer rollout replaces the slot; the end of the
rollout empties it.

A process reads the whole topic at start (`entrypoints/rollouts.py`). Until it
has read as far as the topic went then, events only move which rollout is
open, and `caught_up` loads the one left open: a restart downloads one
candidate, not every candidate the topic ever named.

A candidate the registry then promotes is already loaded and verified, so when
the promotion asks the repository for that version with that digest, the
repository takes it from here (`preloaded`) instead of downloading it again,
whether the promotion arrives before the rollout's end or after it.

A rollout event is a notice, like a promotion: anyone who may write to the
topic can send one. A forged one can at most make this process score, never
answer with, a version the registry holds under exactly that digest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from driftloop.v1 import events_pb2

from driftloop_inference.errors import UnsupportedModel
from driftloop_inference.metrics import SHADOW_CANDIDATE, SHADOW_LOAD_FAILURES
from driftloop_inference.model import Loader, ModelLoadError, ServedModel
from driftloop_inference.predict import check_signature
from driftloop_inference.repository import Fetch

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A loaded rollout candidate and the rollout it is on trial in."""

    rollout_id: str
    model: ServedModel


class Rollouts:
    """The open rollout of one model and its candidate, in one process."""

    def __init__(self, model_name: str, load: Loader, fetch: Fetch) -> None:
        self.model_name = model_name
        self._load = load
        self._fetch = fetch
        # The latest rollout started and not ended, as far as the topic was read.
        self.open: events_pb2.ModelRolloutStarted | None = None
        # The open rollout's candidate once loaded: what Predict scores in the shadow.
        self.candidate: Candidate | None = None
        # The candidate of a rollout that ended promoted, kept until the promotion
        # (or any other change of champion) reaches the repository.
        self._promoted: ServedModel | None = None
        # False while the topic's history is being read: events only move `open`.
        self.live = False

    async def started(self, started: events_pb2.ModelRolloutStarted) -> None:
        """A rollout opened: it replaces any open one, and its candidate is loaded
        (at once when live, else once caught up)."""
        if self.open is not None and self.open.rollout_id == started.rollout_id:
            return  # the same rollout again
        self.open = started
        self._promoted = None
        self._empty("superseded by rollout " + started.rollout_id)
        if self.live:
            await self._load_candidate(started)

    def ended(self, ended: events_pb2.ModelRolloutEnded) -> None:
        """A rollout ended: its candidate is no longer scored. One that ended
        promoted is kept for the promotion to install."""
        if self.open is None or self.open.rollout_id != ended.rollout_id:
            return  # an older rollout's end, or one never seen starting
        self.open = None
        candidate = self.candidate
        outcome = events_pb2.RolloutOutcome.Name(ended.outcome)
        self._empty(f"rollout ended: {outcome}")
        if candidate is not None and ended.outcome == events_pb2.ROLLOUT_OUTCOME_PROMOTED:
            self._promoted = candidate.model

    async def caught_up(self) -> None:
        """The topic's history is read: load the rollout left open, and act on
        every event from now on."""
        if self.live:
            return
        self.live = True
        open_ = self.open
        log.info(
            "rollouts_caught_up",
            model=self.model_name,
            open_rollout=open_.rollout_id if open_ is not None else None,
        )
        if open_ is not None:
            await self._load_candidate(open_)

    def preloaded(self, version: int, sha256: str) -> ServedModel | None:
        """The candidate loaded here when it is `version` with digest `sha256`
        (a promotion of it), else None."""
        candidate = self.candidate.model if self.candidate is not None else None
        for model in (candidate, self._promoted):
            if model is not None and model.version == version and model.sha256 == sha256:
                return model
        return None

    async def champion_changed(self, model: ServedModel) -> None:
        """The repository swapped: a candidate kept for its promotion is no
        longer awaited (installed, or another version came first)."""
        self._promoted = None

    async def _load_candidate(self, started: events_pb2.ModelRolloutStarted) -> None:
        version = started.candidate_version
        try:
            model = await self._verified(started)
            check_signature(model)
        except ModelLoadError as error:
            self._failed(started, error.stage, str(error))
            return
        except UnsupportedModel as error:
            self._failed(started, "signature", str(error))
            return
        except Exception as error:
            # Whatever else goes wrong with a candidate must not stop the listener.
            log.exception("shadow_candidate_load_error", model=self.model_name)
            self._failed(started, "error", f"{type(error).__name__}: {error}")
            return
        if self.open is not started:
            return  # ended or replaced while it loaded
        self.candidate = Candidate(started.rollout_id, model)
        SHADOW_CANDIDATE.labels(self.model_name, model.version_str, started.rollout_id).set(1)
        log.info(
            "shadow_candidate_loaded",
            model=self.model_name,
            rollout_id=started.rollout_id,
            version=version,
            sha256=model.sha256,
            champion_version=started.champion_version,
        )

    async def _verified(self, started: events_pb2.ModelRolloutStarted) -> ServedModel:
        """The candidate's bytes from the registry, loaded and warmed up, when the
        registry vouches for the digest the event names; raises ModelLoadError."""
        name, version = self.model_name, started.candidate_version
        named = f"model {name}: rollout {started.rollout_id} of v{version}"
        expected = started.artifact.sha256.lower()
        if version <= 0:
            raise ModelLoadError("version", f"{named}: no candidate version")
        if not expected:
            raise ModelLoadError("digest", f"{named}: the event names no artifact digest")
        data, vouched = await self._fetch(name, version)
        if vouched.lower() != expected:
            raise ModelLoadError(
                "digest",
                f"{named}: the registry's sha256 {vouched} is not the rollout's {expected}",
            )
        return await asyncio.to_thread(self._load, name, version, data, expected)

    def _empty(self, why: str) -> None:
        candidate = self.candidate
        if candidate is None:
            return
        self.candidate = None
        model = candidate.model
        SHADOW_CANDIDATE.remove(self.model_name, model.version_str, candidate.rollout_id)
        log.info(
            "shadow_candidate_dropped",
            model=self.model_name,
            rollout_id=candidate.rollout_id,
            version=model.version,
            why=why,
        )

    def _failed(self, started: events_pb2.ModelRolloutStarted, stage: str, message: str) -> None:
        SHADOW_LOAD_FAILURES.labels(self.model_name, stage).inc()
        log.error(
            "shadow_candidate_load_failed",
            model=self.model_name,
            rollout_id=started.rollout_id,
            version=started.candidate_version,
            stage=stage,
            error=message,
        )
