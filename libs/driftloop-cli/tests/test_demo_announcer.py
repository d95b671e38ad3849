"""The demo's live view tells the loop in the loop's order, whatever order the
watcher reads its topics in."""

from __future__ import annotations

from driftloop.v1 import events_pb2
from driftloop_cli.demo.driver import Announcer, record_from
from driftloop_cli.demo.timeline import PromotionSeen, VersionSeen
from driftloop_core.kafka.topics import Topics, kind_of_message
from google.protobuf.message import Message


def registered(version: int) -> VersionSeen:
    return VersionSeen(version, "champion", "", f"r{version}", {"roc_auc": 0.9}, 0.0)


def promoted(version: int, previous: int | None) -> PromotionSeen:
    return PromotionSeen(version, previous, "champion", "promote", "", 0.0)


def test_a_promotion_read_before_its_registration_is_told_after_it() -> None:
    lines: list[str] = []
    view = Announcer(lines.append)

    view.announce(promoted(2, 1), now=10.0)
    assert lines == []  # held: v2 has not been seen registered
    view.announce(registered(2), now=10.1)

    assert lines == ["v2 registered as champion, roc_auc 0.900", "v2 promoted to champion"]


def test_a_promotion_of_a_known_version_is_told_at_once() -> None:
    lines: list[str] = []
    view = Announcer(lines.append)
    view.announce(registered(1), now=0.0)

    view.announce(promoted(1, None), now=1.0)  # e.g. a rollback to it, much later

    assert lines[-1] == "v1 promoted to champion"


def test_a_promotion_whose_registration_never_comes_is_told_after_the_hold() -> None:
    lines: list[str] = []
    view = Announcer(lines.append, hold_s=5.0)
    view.announce(promoted(3, 2), now=0.0)
    view.announce(registered(9), now=4.0)
    assert "v3 promoted to champion" not in lines

    view.announce(registered(10), now=5.5)

    assert "v3 promoted to champion" in lines


def test_a_rollout_is_told_from_its_records_on_models_rollouts() -> None:
    """The records as the registry and drift write them, decoded by their type."""

    def read(message: Message) -> object:
        headers = {"ce_type": kind_of_message(message.DESCRIPTOR.full_name).ce_type}
        return record_from(Topics.MODELS_ROLLOUTS, message.SerializeToString(), headers)

    figures = events_pb2.RolloutFigures(paired=120, champion_errors=31, candidate_errors=9)
    started = events_pb2.ModelRolloutStarted(
        rollout_id="r", candidate_version=3, champion_version=2
    )
    judged = events_pb2.RolloutJudged(
        rollout_id="r",
        candidate_version=3,
        champion_version=2,
        verdict=events_pb2.ROLLOUT_VERDICT_PROMOTE,
        figures=figures,
    )
    ended = events_pb2.ModelRolloutEnded(
        rollout_id="r",
        candidate_version=3,
        champion_version=2,
        outcome=events_pb2.ROLLOUT_OUTCOME_REJECTED,
        figures=figures,
    )
    lines: list[str] = []
    view = Announcer(lines.append)
    for message in (started, judged, ended):
        view.announce(read(message), now=0.0)

    assert lines == [
        "v3 in shadow beside champion v2",
        "rollout of v3 judged promote on 120 paired labelled events (9 vs 31 errors)",
        "rollout of v3 rejected",
    ]
