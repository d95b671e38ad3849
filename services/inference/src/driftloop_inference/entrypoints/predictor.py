"""`driftloop.v1.Predictor/Predict`: one event in, one decision out.

The request becomes the data plane's PredictRequest, its Decision the response;
what Predict does with features, defaults and the predictions topic is the data
plane's (`dataplane.py`), and its refusals map to status codes in `status.py`.

What the Decision leaves for after the reply (a rollout candidate's shadow
scoring) runs once the call has ended: gRPC calls a servicer context's done
callbacks after the response and status were sent, so the caller never waits
for it.
"""

from __future__ import annotations

from driftloop.v1 import predictor_pb2, predictor_pb2_grpc

from driftloop_inference.dataplane import AfterReply, DataPlane, PredictRequest
from driftloop_inference.entrypoints.status import Context, grpc_errors

SERVICE_NAME = "driftloop.v1.Predictor"


class PredictorServicer(predictor_pb2_grpc.PredictorServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    @grpc_errors
    async def Predict(
        self, request: predictor_pb2.PredictRequest, context: Context
    ) -> predictor_pb2.PredictResponse:
        decision = await self._plane.predict(_predict_request(request), context.time_remaining())
        if decision.after_reply is not None:
            _after_reply(context, decision.after_reply)
        return predictor_pb2.PredictResponse(
            event_id=request.event_id,
            model=decision.model,
            model_version=decision.model_version,
            label=decision.label,
            probability=decision.probability,
            features_used=decision.features_used,
            defaults_applied=decision.defaults_applied,
            learner=decision.learner,
        )


def _after_reply(context: Context, job: AfterReply) -> None:
    """Run `job` once the call has ended (its response sent)."""

    def done(_context: Context) -> None:
        job()

    # The stubs ask for their own callback class; gRPC takes any callable of the context.
    context.add_done_callback(done)  # type: ignore[arg-type]


def _predict_request(request: predictor_pb2.PredictRequest) -> PredictRequest:
    which = request.WhichOneof("version_selector")
    return PredictRequest(
        event_id=request.event_id,
        entity_id=request.entity_id,
        model=request.model,
        version=str(request.version) if which == "version" else "",
        alias=request.alias if which == "alias" else "",
        features=request.features,
        event_time=request.event_time if request.HasField("event_time") else None,
    )
