"""`inference.GRPCInferenceService`: the Open Inference Protocol v2 over gRPC.

What a standard client (tritonclient.grpc, KServe) expects: liveness and
readiness, server and model metadata from the model's signature, ModelInfer with
typed or raw contents, and RepositoryIndex. Outputs come back raw when the
request's inputs were raw (tritonclient always sends raw and reads raw back)
or an output asks for `binary_data`; typed contents otherwise. Every response
carries the request id and the version that answered.

A ModelInfer is checked before any value is read (`ModelCodec.plan`): its id,
inputs, shapes and size against the data plane's `RequestLimits`. A large one
is read, run and encoded whole off the event loop (`DataPlane.offload`), so
one-row calls beside it still answer at once.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc

from driftloop_inference import __version__
from driftloop_inference.codec import (
    CONTENTS_FIELDS,
    InputDecoder,
    InvalidTensor,
    Planned,
    add_output,
    shown,
)
from driftloop_inference.dataplane import DataPlane, RequestLimits, check_id
from driftloop_inference.entrypoints.status import Context, grpc_errors
from driftloop_inference.model import Array, ServedModel, TensorSpec

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "driftloop-inference"


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._codecs: weakref.WeakKeyDictionary[ServedModel, ModelCodec] = (
            weakref.WeakKeyDictionary()
        )

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Context
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Context
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._plane.ready)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Context
    ) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=["model_repository"]
        )

    @grpc_errors
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        model = self._plane.model(request.name, request.version)
        return oip.ModelMetadataResponse(
            name=model.name,
            versions=[m.version_str for m in self._plane.loaded()],
            platform=model.platform,
            inputs=[_metadata_tensor(spec) for spec in model.inputs],
            outputs=[_metadata_tensor(spec) for spec in model.outputs],
        )

    @grpc_errors
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        plane = self._plane
        model = plane.model(request.model_name, request.model_version)
        codec = self._codec(model)
        planned, selected = codec.plan(request)
        if planned.size > plane.limits.offload_bytes:
            job = functools.partial(self._whole, model, codec, request, planned, selected)
            return await plane.offload(model, job, context.time_remaining())
        feeds = codec.decoder.read(planned)
        outputs = await plane.infer(model, feeds, context.time_remaining())
        return codec.encode(model, request, selected, outputs)

    def _whole(
        self,
        model: ServedModel,
        codec: ModelCodec,
        request: oip.ModelInferRequest,
        planned: Planned,
        selected: Sequence[int],
    ) -> oip.ModelInferResponse:
        """A large request from its values to its response (blocking: `offload`'s job)."""
        outputs = self._plane.run_now(model, codec.decoder.read(planned))
        return codec.encode(model, request, selected, outputs)

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        response = oip.RepositoryIndexResponse()
        for state in self._plane.index(ready_only=request.ready):
            response.models.add(
                name=state.name, version=state.version, state=state.state, reason=state.reason
            )
        return response

    def _codec(self, model: ServedModel) -> ModelCodec:
        codec = self._codecs.get(model)
        if codec is None:
            codec = self._codecs[model] = ModelCodec(model, self._plane.limits)
        return codec


def _metadata_tensor(spec: TensorSpec) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


class ModelCodec:
    """ModelInfer requests and responses for one model version: its decoder
    (with the shapes it has already checked) and its outputs' facts, worked out
    once per version, under the data plane's limits."""

    def __init__(self, model: ServedModel, limits: RequestLimits) -> None:
        self.decoder = InputDecoder(
            model.inputs, max_rows=limits.max_rows, max_bytes=limits.max_bytes, finite=True
        )
        self.outputs = model.outputs
        # True when every output has a typed contents field (else outputs go back raw).
        self.typed_outputs = all(spec.datatype in CONTENTS_FIELDS for spec in model.outputs)
        self._index: dict[str, int] = {}
        for index, spec in enumerate(model.outputs):
            self._index.setdefault(spec.name, index)

    def plan(self, request: oip.ModelInferRequest) -> tuple[Planned, Sequence[int]]:
        """The request checked against the model and the limits, no value read
        yet (`decoder.read` reads them), and the indices of the outputs it asks for."""
        check_id("id", request.id)
        planned = self.decoder.plan(request)
        if not request.outputs:
            return planned, range(len(self.outputs))
        indices: list[int] = []
        for wanted in request.outputs:
            index = self._index.get(wanted.name)
            if index is None:
                raise InvalidTensor(
                    f"output '{shown(wanted.name)}': not an output of the model; expected one "
                    "of " + ", ".join(spec.name for spec in self.outputs),
                    field=shown(wanted.name),
                    rule="output",
                )
            indices.append(index)
        return planned, indices

    def encode(
        self,
        model: ServedModel,
        request: oip.ModelInferRequest,
        selected: Sequence[int],
        arrays: Sequence[Array],
    ) -> oip.ModelInferResponse:
        """The response with the selected outputs: raw when the request's inputs
        were raw, an output asks for `binary_data` or has no typed field."""
        response = oip.ModelInferResponse(
            model_name=model.name, model_version=model.version_str, id=request.id
        )
        outputs = self.outputs
        raw = bool(request.raw_input_contents)
        if not raw and (request.outputs or not self.typed_outputs):
            raw = any(
                CONTENTS_FIELDS.get(outputs[i].datatype) is None
                or _binary_data(request, outputs[i].name)
                for i in selected
            )
        for index in selected:
            add_output(response, outputs[index], arrays[index], raw=raw)
        return response


def _binary_data(request: oip.ModelInferRequest, name: str) -> bool:
    for wanted in request.outputs:
        if wanted.name == name and "binary_data" in wanted.parameters:
            return bool(wanted.parameters["binary_data"].bool_param)
    return False
