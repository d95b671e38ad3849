"""The ONNX runtime: one loaded, verified, warmed-up model version as an
onnxruntime session and its signature.

`load_model` is the only way to make one, and it refuses bytes whose sha256 is
not the one expected, bytes onnxruntime cannot load, and a session that fails a
warm-up run; so whatever the repository swaps in has already answered once.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from driftloop_inference.errors import InvalidInput
from driftloop_inference.model import Array, ModelLoadError, TensorSpec

PLATFORM = "onnxruntime_onnx"
# onnxruntime type strings -> datatype.
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError("onnx", f"tensor {arg.name!r} has unsupported type {arg.type}")
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, dims)


@dataclass(eq=False)
class LoadedModel:
    name: str
    version: int
    sha256: str
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    output_names: list[str] = field(init=False)
    # True when every input's first dimension is the variable batch dimension,
    # so requests can be stacked along axis 0.
    batchable: bool = field(init=False)
    # True when no input has a variable dimension after the first: any two
    # requests stack without comparing shapes.
    fixed_tail: bool = field(init=False)
    version_str: str = field(init=False)
    platform: str = field(default=PLATFORM, init=False)
    # How long a run takes (seconds): the fastest of a few timed runs of
    # `probe_rows` rows at load, then the batcher's moving average of served runs.
    run_seconds: float = field(default=math.inf, init=False)

    def __post_init__(self) -> None:
        self.output_names = [spec.name for spec in self.outputs]
        self.batchable = all(spec.shape and spec.shape[0] == -1 for spec in self.inputs) and all(
            spec.shape and spec.shape[0] == -1 for spec in self.outputs
        )
        self.fixed_tail = all(-1 not in spec.shape[1:] for spec in self.inputs)
        self.version_str = str(self.version)

    def run(self, feeds: dict[str, Array]) -> list[Array]:
        """All outputs, in signature order.

        A one-row run of a batchable model is computed as two copies of the row:
        onnxruntime's one-row kernels (GEMV) round differently in the last bit
        from its batch kernels, and with this every row's result is the same
        whether or not dynamic batching merged it with others. Values onnxruntime
        refuses raise InvalidInput.
        """
        try:
            if self.batchable and self.inputs:
                first = feeds[self.inputs[0].name]
                if first.ndim and first.shape[0] == 1:
                    doubled = {name: np.concatenate((a, a)) for name, a in feeds.items()}
                    return [output[:1] for output in self.session.run(self.output_names, doubled)]
            results: list[Array] = self.session.run(self.output_names, feeds)
        except InvalidArgument as error:
            raise InvalidInput(
                f"model {self.name} v{self.version} refused the inputs: {str(error)[:300]}",
                rule="runtime",
            ) from error
        return results

    def warmup_feeds(self, rows: int = 1) -> dict[str, Array]:
        feeds: dict[str, Array] = {}
        for spec in self.inputs:
            shape = tuple(
                rows if i == 0 and d == -1 else (1 if d == -1 else d)
                for i, d in enumerate(spec.shape)
            )
            if spec.datatype == "BYTES":
                array = np.empty(shape, dtype=object)
                array.fill("")
            else:
                array = np.zeros(shape, dtype=spec.dtype)
            feeds[spec.name] = array
        return feeds


def session_options(intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    """Options for small models: few threads, no spinning, full graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores the gRPC server needs between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds, its subgraphs' (If, Loop, Scan bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def refuse_external_data(name: str, version: int, data: bytes) -> None:
    """Raise ModelLoadError when a tensor keeps its data in a file beside the model.

    An artifact must be self-contained: its digest covers every byte that is run,
    and a location such as `../../etc/x` must never be read. onnxruntime itself
    refuses external data in a model given as bytes, but that is its behaviour
    today, not a promise; this check states the rule and names the tensor.
    """
    try:
        proto = onnx.ModelProto.FromString(data)
    except DecodeError as error:
        raise ModelLoadError(
            "onnx", f"model {name} v{version}: not an ONNX model: {str(error)[:300]}"
        ) from error
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise ModelLoadError(
                "external_data",
                f"model {name} v{version}: tensor {tensor.name!r} keeps its data in an "
                f"external file ({where!r}); a served model must be self-contained",
            )


def load_model(
    name: str,
    version: int,
    data: bytes,
    expected_sha256: str | None,
    *,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    probe_rows: int = 1,
) -> LoadedModel:
    """Verify, load and warm up; raises ModelLoadError. Blocking: call in a thread.

    The warm-up also times a run of `probe_rows` rows (the largest batch), which
    tells the batcher whether runs are short enough for the event loop.
    """
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256.lower():
        raise ModelLoadError(
            "digest",
            f"model {name} v{version}: artifact sha256 {digest} does not match the expected "
            f"{expected_sha256}",
        )
    refuse_external_data(name, version, data)
    try:
        session = ort.InferenceSession(
            data,
            sess_options=session_options(intra_op_threads, inter_op_threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as error:  # onnxruntime raises many kinds
        raise ModelLoadError(
            "onnx", f"model {name} v{version}: not a loadable ONNX model: {str(error)[:300]}"
        ) from error
    model = LoadedModel(
        name,
        version,
        digest,
        session,
        tuple(_spec(arg) for arg in session.get_inputs()),
        tuple(_spec(arg) for arg in session.get_outputs()),
    )
    try:
        model.run(model.warmup_feeds(1))
        probe = model.warmup_feeds(1)
        if model.batchable:
            model.run(model.warmup_feeds(2))
            probe = model.warmup_feeds(max(probe_rows, 1))
        model.run_seconds = _fastest_run(model, probe)
    except Exception as error:
        raise ModelLoadError(
            "warmup", f"model {name} v{version}: warm-up run failed: {str(error)[:300]}"
        ) from error
    return model


def _fastest_run(model: LoadedModel, feeds: dict[str, Array], runs: int = 5) -> float:
    fastest = math.inf
    for _ in range(runs):
        started = time.perf_counter()
        model.run(feeds)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest
