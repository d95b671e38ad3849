"""The arena's evidence without a broker: what a published Prediction tells the
arena, the feed's records going by type into a real arena (the unusable ones
skipped, never stalling it), and the log line an SRE reads when the leader changes."""

from __future__ import annotations

from typing import Any

import structlog
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.kafka import EventHeaders, Record
from driftloop_core.kafka.topics import kind_of_message
from driftloop_inference.adapters.arena_feed import ArenaRecords
from driftloop_inference.online.arena import Arena, ArenaConfig
from driftloop_inference.online.host import ArenaHost, evidence
from google.protobuf.message import Message
from prometheus_client import REGISTRY

FEATURES = {
    "amount": common_pb2.FeatureValue(float_value=120.0),
    "channel": common_pb2.FeatureValue(string_value="web"),
    "hour": common_pb2.FeatureValue(int_value=3),
    "txn_count_10m": common_pb2.FeatureValue(float_value=float("nan")),
}


def prediction(event_id: str, model: str = "payments", **fields: Any) -> events_pb2.Prediction:
    values: dict[str, Any] = {
        "event_id": event_id,
        "model": model,
        "features": FEATURES,
        "defaults_applied": ["txn_count_10m"],
    }
    return events_pb2.Prediction(**(values | fields))


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
        key=b"c7",
        value=value,
        headers=EventHeaders(id=f"r{offset}", type=ce_type or "", source="test"),
        raw_headers=(),
        timestamp_ms=1_763_800_000_000 + offset,
    )


def host(model: str, champion: int | None = None, **config: Any) -> ArenaHost:
    return ArenaHost(model, Arena(ArenaConfig(**config)), lambda: champion)


def learnt(model: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftloop_inference_arena_labels_learnt_total", {"model": model}
    )
    return value or 0.0


def test_a_prediction_tells_the_arena_its_features_and_the_champions_answer() -> None:
    served = evidence(prediction("e1", model_version=4, label=1))
    assert served.event_id == "e1"
    # The feature that took a default is missing to the learners.
    assert served.features == {"amount": 120.0, "channel": "web", "hour": 3}
    assert served.champion == (4, 1)

    shadowed = evidence(
        prediction(
            "e2",
            learner="online:arf",
            label=0,
            champion=events_pb2.ShadowAnswer(model_version=3, label=1, probability=0.9),
        )
    )
    assert shadowed.champion == (3, 1), "the champion's own answer, not the learner's"

    alone = evidence(prediction("e3", learner="online:prior", label=0))
    assert alone.champion is None, "no version was loaded"


async def test_the_feed_teaches_the_arena_by_type_and_skips_what_it_cannot_use() -> None:
    arena = host("payments")
    before = learnt("payments")
    records = ArenaRecords(arena)
    label_type = kind_of_message("driftloop.v1.Label").ce_type
    prediction_type = kind_of_message("driftloop.v1.Prediction").ce_type
    batch = [
        record(0, prediction("e1", learner="online:prior", label=0)),
        record(1, prediction("e2", learner="online:prior", label=0)),
        record(2, prediction("x1", model="other", model_version=1, label=1)),
        record(3, b"\xff\xff", prediction_type),  # does not decode
        record(4, b"\xff\xff", label_type),
        record(5, b"no type at all"),
        record(6, events_pb2.Label(event_id="", label=1)),  # no event id
        record(7, events_pb2.Observation(event_id="e1", feature_set="payments", label=1)),
        record(8, events_pb2.Label(event_id="e2", feature_set="payments", label=1)),
        record(9, events_pb2.Label(event_id="x1", feature_set="other", label=1)),
        record(10, events_pb2.Observation(event_id="e3", feature_set="payments")),  # no label
    ]
    outcomes = await records.handle_batch(batch)
    assert outcomes == [None] * len(batch), "nothing is dead-lettered from here"
    assert records.skipped == 3
    assert arena.arena.learnt == 2, "e1 and e2, each with its label; not the other model's"
    # Learnt: the prior is now the labels' majority, and the first learner has learnt.
    assert arena.arena.prior().label == 1
    assert arena.answer("online:arf", {"amount": 120.0, "channel": "web"}).label == 1
    assert learnt("payments") - before == 2


async def test_a_change_of_leader_is_logged_with_the_recent_accuracies() -> None:
    model = "payments-leader"
    arena = host(model, champion=4, min_scored=3, window=10, learners=("lr",))
    records = ArenaRecords(arena)
    assert arena.leader(4) == "", "before any evidence the champion answers"
    # The champion answered 0 each time; the truth was 1.
    batch = []
    for i in range(5):
        batch.append(record(2 * i, prediction(f"e{i}", model, model_version=4, label=0)))
        batch.append(
            record(2 * i + 1, events_pb2.Label(event_id=f"e{i}", feature_set=model, label=1))
        )
    with structlog.testing.capture_logs() as logs:
        await records.handle_batch(batch)
    [changed] = [entry for entry in logs if entry["event"] == "arena_leader_changed"]
    assert (changed["from"], changed["to"]) == ("v4", "online:lr")
    assert changed["accuracies"]["v4"] == 0.0
    assert changed["accuracies"]["online:lr"] > 0.0
    assert arena.leader(4) == "online:lr"
    assert (
        REGISTRY.get_sample_value(
            "driftloop_inference_arena_leader_info", {"model": model, "leader": "online:lr"}
        )
        == 1.0
    )
