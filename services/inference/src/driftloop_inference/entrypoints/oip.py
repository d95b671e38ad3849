"""`inference.GRPCInferenceService`: the Open Inference Protocol v2 over gRPC.

What a standard client (tritonclient.grpc, KServe) expects: liveness and
readiness, server and model metadata from the ONNX signature, ModelInfer with
typed or raw contents, and RepositoryIndex. Outputs come back raw when the
request's inputs were raw (tritonclient always sends raw and reads raw back)
or an output asks for `binary_data`; typed contents otherwise. Every response
carries the request id and the version that answered.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import grpc
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from driftloop_inference import __version__
from driftloop_inference.batching import Batcher, DeadlineExpired, Overloaded
from driftloop_inference.codec import CONTENTS_FIELDS, InvalidTensor, add_output
from driftloop_inference.model import PLATFORM, LoadedModel
from driftloop_inference.repository import ModelNotFound, ModelRepository, ModelUnavailable

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "driftloop-inference"


async def abort_lookup(context: Context, error: Exception) -> NoReturn:
    code = (
        grpc.StatusCode.NOT_FOUND
        if isinstance(error, ModelNotFound)
        else grpc.StatusCode.UNAVAILABLE
    )
    await context.abort(code, str(error))
    raise AssertionError("unreachable")


async def run_batched(
    batcher: Batcher, model: LoadedModel, feeds: dict[str, Any], rows: int, context: Context
) -> list[Any]:
    """Run through the batcher, mapping overload, deadlines and bad values to status codes."""
    remaining = context.time_remaining()
    deadline = None
    if remaining is not None:
        if remaining <= 0:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        deadline = time.monotonic() + remaining
    try:
        return await batcher.infer(model, feeds, rows, deadline)
    except Overloaded as error:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    except DeadlineExpired as error:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
    except InvalidArgument as error:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model {model.name} v{model.version} refused the inputs: {str(error)[:300]}",
        )
    raise AssertionError("unreachable")


def _metadata_tensor(spec: Any) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, batcher: Batcher) -> None:
        self._repository = repository
        self._batcher = batcher

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Context
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Context
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._repository.ready)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Context
    ) -> oip.ModelReadyResponse:
        try:
            self._repository.resolve(request.name, request.version)
        except (ModelNotFound, ModelUnavailable):
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=["model_repository"]
        )

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        try:
            model = self._repository.resolve(request.name, request.version)
        except (ModelNotFound, ModelUnavailable) as error:
            await abort_lookup(context, error)
        return oip.ModelMetadataResponse(
            name=model.name,
            versions=[m.version_str for m in self._repository.loaded()],
            platform=PLATFORM,
            inputs=[_metadata_tensor(spec) for spec in model.inputs],
            outputs=[_metadata_tensor(spec) for spec in model.outputs],
        )

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        try:
            model = self._repository.resolve(request.model_name, request.model_version)
        except (ModelNotFound, ModelUnavailable) as error:
            await abort_lookup(context, error)
        try:
            feeds = model.decoder.decode(request)
            selected = self._selected_outputs(model, request)
            rows = self._rows(model, feeds)
        except InvalidTensor as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        outputs = await run_batched(self._batcher, model, feeds, rows, context)
        if model.swap_context is not None:
            model.first_served("ModelInfer")
        response = oip.ModelInferResponse(
            model_name=model.name, model_version=model.version_str, id=request.id
        )
        raw = bool(request.raw_input_contents)
        if not raw and (request.outputs or not model.typed_outputs):
            raw = any(
                CONTENTS_FIELDS.get(model.outputs[i].datatype) is None
                or _binary_data(request, model.outputs[i].name)
                for i in selected
            )
        for index in selected:
            add_output(response, model.outputs[index], outputs[index], raw=raw)
        return response

    @staticmethod
    def _selected_outputs(model: LoadedModel, request: oip.ModelInferRequest) -> range | list[int]:
        if not request.outputs:
            return range(len(model.outputs))
        indices: list[int] = []
        for wanted in request.outputs:
            index = next((i for i, s in enumerate(model.outputs) if s.name == wanted.name), -1)
            if index < 0:
                raise InvalidTensor(
                    f"output '{wanted.name}': not an output of the model; expected one of "
                    + ", ".join(spec.name for spec in model.outputs)
                )
            indices.append(index)
        return indices

    @staticmethod
    def _rows(model: LoadedModel, feeds: dict[str, Any]) -> int:
        if not model.batchable or not model.inputs:
            return 1
        first = model.inputs[0].name
        rows = int(feeds[first].shape[0])
        for spec in model.inputs[1:]:
            got = int(feeds[spec.name].shape[0])
            if got != rows:
                raise InvalidTensor(
                    f"input '{spec.name}': expected batch dimension {rows} (as input "
                    f"'{first}'), got {got}"
                )
        return rows

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        response = oip.RepositoryIndexResponse()
        loaded = self._repository.loaded()
        for model in loaded:
            response.models.add(name=model.name, version=model.version_str, state="READY")
        if not loaded and not request.ready:
            response.models.add(
                name=self._repository.name,
                state="UNAVAILABLE",
                reason=self._repository.last_error or "no version loaded yet",
            )
        return response


def _binary_data(request: oip.ModelInferRequest, name: str) -> bool:
    for wanted in request.outputs:
        if wanted.name == name and "binary_data" in wanted.parameters:
            return bool(wanted.parameters["binary_data"].bool_param)
    return False
