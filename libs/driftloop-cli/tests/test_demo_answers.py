"""How the demo records an answer to Predict, whoever gave it: a registered
version, or an online learner beside the champion serving then (no server: a
stub answers as inference does)."""

from __future__ import annotations

import time
from typing import Any

import grpc
import grpc.aio
from driftloop.v1 import predictor_pb2
from driftloop_cli.demo.driver import call_predict
from driftloop_cli.demo.timeline import PromotionSeen, Served, Timeline
from driftloop_cli.demo.view import serving


class Stub:
    """Predict answering with the replies given, in order."""

    def __init__(self, *replies: predictor_pb2.PredictResponse) -> None:
        self.replies = list(replies)

    async def Predict(self, request: Any, **options: Any) -> predictor_pb2.PredictResponse:
        return self.replies.pop(0)


class Unavailable:
    async def Predict(self, request: Any, **options: Any) -> predictor_pb2.PredictResponse:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "not loaded"
        )


async def test_an_answer_is_recorded_with_who_gave_it_and_the_champion_then() -> None:
    timeline = Timeline()
    request = predictor_pb2.PredictRequest(event_id="e1")
    stub = Stub(
        predictor_pb2.PredictResponse(model_version=0, label=1, learner="online:arf"),
        predictor_pb2.PredictResponse(model_version=0, label=0, learner="online:prior"),
        predictor_pb2.PredictResponse(model_version=2, label=1),
    )

    # Before any promotion: the learner answered, no version was in effect.
    first, reply = await call_predict(stub, request, 0, 1, 2.0, champion_at=timeline.champion_at)
    assert reply is not None
    assert (first.status, first.learner, first.version, first.predicted) == (
        "ok",
        "online:arf",
        None,
        1,
    )
    assert first.correct
    assert serving(first) == "online:arf"

    timeline.promotions.append(PromotionSeen(2, None, "champion", "promote", "", time.time()))
    second, _ = await call_predict(stub, request, 1, 1, 2.0, champion_at=timeline.champion_at)
    assert (second.learner, second.version, second.predicted) == ("online:prior", 2, 0)
    assert serving(second) == "online:prior (champion v2)"

    third, _ = await call_predict(stub, request, 2, 1, 2.0, champion_at=timeline.champion_at)
    assert (third.learner, third.version, third.predicted) == ("", 2, 1)
    assert serving(third) == "v2"

    refused, reply = await call_predict(Unavailable(), request, 3, 1, 2.0)
    assert reply is None and refused.status == "no_model"
    assert serving(None) == "no model yet"


def test_the_view_names_a_version_without_a_learner() -> None:
    assert serving(Served(0, 0.0, 1, "ok", 3, 1)) == "v3"
