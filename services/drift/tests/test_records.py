"""The drift consumer's batch handler with the real application and state file, no broker:
records go to the handler of their CloudEvents type, what can never be read is
dead-lettered, and a decided event is published only after it was saved with
the positions of the records that decided it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.kafka import EventHeaders, Record, Topics
from driftloop_core.kafka.topics import kind_of_message
from driftloop_drift.adapters.state import DriftStateStore
from driftloop_drift.application import DriftApplication
from driftloop_drift.entrypoints.kafka import DriftRecords, prediction_seen
from driftloop_drift.handlers import DriftEngine
from driftloop_drift.outbox import Outbox
from driftloop_drift.ports import ChampionReference
from google.protobuf.message import Message


class Sent:
    """A publisher that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str | None]] = []  # (topic, ce_type, event id)

    async def publish(
        self, topic: str, value: bytes, *, key: Any, ce_type: str, event_id: str | None = None
    ) -> object:
        self.records.append((topic, ce_type, event_id))
        return None


class NoChampion:
    async def lookup(self, model: str, version: int | None = None) -> ChampionReference | None:
        return None


def record(offset: int, message: Message | bytes, ce_type: str | None = None) -> Record:
    if isinstance(message, Message):
        ce_type = ce_type or kind_of_message(message.DESCRIPTOR.full_name).ce_type
        value = message.SerializeToString()
    else:
        value = message
    return Record(
        topic="sources",
        partition=0,
        offset=offset,
        key=b"c1",
        value=value,
        headers=EventHeaders(id=f"r{offset}", type=ce_type or "", source="test"),
        raw_headers=(),
        timestamp_ms=1_763_800_000_000 + offset,
    )


def application(tmp_path: Path, kit: Any, sent: Sent) -> tuple[DriftApplication, DriftStateStore]:
    featureset = kit.payments()
    config = kit.engine_config(bootstrap_min_labels=3)

    def engine(state: dict[str, Any] | None) -> DriftEngine:
        assert state is None
        return DriftEngine(featureset, config)

    store = DriftStateStore(tmp_path / "drift.sqlite")
    app = DriftApplication(
        engine, store, Outbox(store, sent), NoChampion(), snapshot_interval_s=1.0
    )
    return app, store


async def test_records_go_by_type_and_the_unreadable_are_deadlettered(
    tmp_path: Path, kit: Any
) -> None:
    sent = Sent()
    app, _ = application(tmp_path, kit, sent)
    assert await app.load() == {}
    labelled = events_pb2.Observation(event_id="a", feature_set="payments", label=1)
    unlabelled = events_pb2.Observation(event_id="b", feature_set="payments")
    late = events_pb2.Label(event_id="c", feature_set="payments", label=0)
    prediction_type = kind_of_message("driftloop.v1.Prediction").ce_type
    outcomes = await DriftRecords(app, max_future_ms=300_000).handle_batch(
        [
            record(0, labelled),
            record(1, unlabelled),
            record(2, late),
            record(3, b"\xff\xff", prediction_type),
            record(4, b"{}"),
            record(5, events_pb2.Observation(event_id="d"), "some.other.type.v1"),
        ]
    )
    assert [o is None for o in outcomes] == [True, True, True, False, False, True]
    assert outcomes[3] is not None and outcomes[3].rule == "decode"
    assert outcomes[4] is not None and outcomes[4].field == "ce_type"
    assert app.engine.labels.total == 2
    await app.close()


async def test_a_decided_request_goes_out_after_it_was_saved_with_its_positions(
    tmp_path: Path, kit: Any
) -> None:
    sent = Sent()
    app, store = application(tmp_path, kit, sent)
    await app.load()
    labels = [
        record(i, events_pb2.Observation(event_id=f"b{i}", feature_set="payments", label=1))
        for i in range(3)
    ]
    await DriftRecords(app, max_future_ms=300_000).handle_batch(labels)
    assert sent.records == [], "nothing goes out before its state is saved"
    await app.store({("sources", 0): 3})
    [(topic, ce_type, event_id)] = sent.records
    assert topic == Topics.TRAINING_REQUESTED
    assert ce_type == kind_of_message("driftloop.v1.TrainingRequested").ce_type
    saved = store.load()
    assert saved.positions == {("sources", 0): 3} and saved.outbox == []
    assert saved.state is not None
    assert saved.state["policy"]["in_flight"][0] == event_id
    await app.close()


async def test_an_online_learners_prediction_is_watched_as_its_champions_shadow_or_not_at_all(
    tmp_path: Path, kit: Any
) -> None:
    """Drift watches registered versions: a prediction the online learner served
    counts as the champion's answer carried beside it, and without a champion it
    is skipped (neither watched nor dead-lettered, and no "version 0" champion)."""
    sent = Sent()
    app, _ = application(tmp_path, kit, sent)
    await app.load()
    features = {"amount": common_pb2.FeatureValue(float_value=12.5)}
    alone = events_pb2.Prediction(
        event_id="fresh", model="payments", learner="online:prior", label=0, features=features
    )
    shadowed = events_pb2.Prediction(
        event_id="later",
        model="payments",
        learner="online:arf",
        label=0,
        features=features,
        champion=events_pb2.ShadowAnswer(model_version=3, label=1, probability=0.8),
    )
    assert prediction_seen(alone, 0) is None
    seen = prediction_seen(shadowed, 0)
    assert seen is not None and (seen.version, seen.predicted) == (3, 1)
    assert seen.features == {"amount": 12.5}

    outcomes = await DriftRecords(app, max_future_ms=300_000).handle_batch([record(0, alone)])
    assert outcomes == [None]
    assert app.engine.champion is None and not app.engine.joiner.seen_prediction("fresh")

    outcomes = await DriftRecords(app, max_future_ms=300_000).handle_batch([record(1, shadowed)])
    assert outcomes == [None]
    assert app.engine.champion == 3 and app.engine.joiner.seen_prediction("later")
    await app.close()
