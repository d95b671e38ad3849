"""What a served model version is to the rest of the service: a signature of
named, typed tensors and a `run`, whatever runtime is behind it.

The data plane, the batcher and the repository speak of `ServedModel` only;
`adapters/onnx.py` is the one runtime that makes them. Tensor datatypes use the
Open Inference Protocol's names (`FP32`, `BYTES`, ...), the one vocabulary every
part of the service shares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Array = np.ndarray[Any, Any]

# Datatype -> numpy dtype (little-endian, the wire order of raw contents).
NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, datatype, dims (-1 variable)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return NUMPY_TYPES[self.datatype]

    def describe(self) -> str:
        return f"{self.datatype} {format_shape(self.shape)}"


def format_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


class ModelLoadError(Exception):
    """A version that must not be served; `stage` says where it failed."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class ServedModel(Protocol):
    """One loaded, verified, warmed-up model version."""

    name: str
    version: int
    version_str: str
    sha256: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    output_names: list[str]
    # Every input's and output's first dimension is the variable batch
    # dimension, so requests can be stacked along axis 0.
    batchable: bool
    # No input has a variable dimension after the first: any two requests
    # stack without comparing shapes.
    fixed_tail: bool
    # How long a run takes (seconds), kept up to date by the batcher.
    run_seconds: float

    def run(self, feeds: dict[str, Array]) -> list[Array]:
        """All outputs, in signature order; raises InvalidInput for values the
        model refuses."""
        ...


# Verify, load and warm up (name, version, bytes, expected sha256); raises
# ModelLoadError. Blocking: the repository calls it in a thread.
Loader = Callable[[str, int, bytes, str | None], ServedModel]
