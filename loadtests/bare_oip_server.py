"""The ceiling for the inference benchmark: the least a grpc.aio server can do.

    python loadtests/bare_oip_server.py MODEL.onnx PORT

One process, one event loop, ModelInfer only: each request's [1, 1] tensors
become numpy arrays, one onnxruntime run on the event loop, typed outputs back.
No validation, batching, tracing, metrics, health, model lifecycle or Kafka:
what Driftloop's inference service adds is exactly the distance from this
server's figures in the same run. It answers ServerReady and ModelReady so the
benchmark can wait for it like the others.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc.aio
import numpy as np
import onnxruntime as ort
from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc


class Bare(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]

    async def ServerReady(self, request: Any, context: Any) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request: Any, context: Any) -> oip.ModelInferResponse:
        feeds: dict[str, Any] = {}
        for tensor in request.inputs:
            if tensor.datatype == "BYTES":
                feeds[tensor.name] = np.array(
                    [[v.decode() for v in tensor.contents.bytes_contents]], dtype=object
                )
            else:
                feeds[tensor.name] = np.array(
                    [tensor.contents.fp32_contents], dtype=np.float32
                ).reshape(1, -1)
        label, probabilities = self.session.run(self.outputs, feeds)
        response = oip.ModelInferResponse(model_name=request.model_name, model_version="1")
        out = response.outputs.add(name=self.outputs[0], datatype="INT64", shape=label.shape)
        out.contents.int64_contents.extend(label.ravel().tolist())
        out = response.outputs.add(name=self.outputs[1], datatype="FP32", shape=probabilities.shape)
        out.contents.fp32_contents.extend(probabilities.ravel().tolist())
        return response


def load(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.read_bytes(), sess_options=options)


async def serve(session: ort.InferenceSession, port: int) -> None:
    server = grpc.aio.server()
    # Only what the benchmark calls: the other OIP methods answer UNIMPLEMENTED.
    bare = Bare(session)  # type: ignore[abstract]
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(bare, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(load(Path(sys.argv[1])), int(sys.argv[2])))
