"""Tensors between the Open Inference Protocol and numpy, checked against a signature.

Inputs come either as typed `contents` or as `raw_input_contents` (little-endian
bytes, BYTES elements as a 4-byte little-endian length then the bytes, as Triton
and tritonclient write them); raw bytes are read with `numpy.frombuffer`, no copy.
Every refusal is an `InvalidTensor` whose message names the tensor, what was
expected and what came (an InvalidInput to the data plane's callers). Nothing a
request says makes decoding allocate or loop beyond the bytes it carries: shapes
numpy cannot represent are refused, BYTES elements are read only up to the count
the shape allows, and typed values outside a narrow type's range are refused
instead of wrapping around.

A decoder may also bound what a request carries (`max_rows` of an input's
variable first dimension, `max_bytes` of tensor data in all, refused as
RequestTooLarge from the shapes, before their values are read) and refuse
floating values that are not finite (`finite`), as the served ModelInfer does.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
from inference import grpc_service_pb2 as oip

from driftloop_inference.errors import InvalidInput, RequestTooLarge
from driftloop_inference.model import NUMPY_TYPES as NUMPY_TYPES
from driftloop_inference.model import Array, TensorSpec, format_shape

# OIP datatype -> the InferTensorContents field that carries it.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# For a few values numpy.fromiter is several times faster than numpy.array on a
# protobuf repeated field (and a Python loop than numpy's calls); for many,
# numpy is.
_FROMITER_MAX = 64
# Distinct request shapes remembered as valid per input (batch sizes, mostly).
_SHAPES_REMEMBERED = 256
# What numpy can represent: its most dimensions, and the largest byte extent of an
# array (numpy refuses a shape whose non-zero dimensions multiply beyond it, even
# when another dimension is 0 and the array is empty).
_MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_MAX_EXTENT = int(np.iinfo(np.intp).max)
# Typed contents fields wider than the datatype they carry: values are range-checked.
_NARROW = frozenset({"INT8", "INT16", "UINT8", "UINT16"})
_FLOATING = frozenset({"FP16", "FP32", "FP64"})
_LENGTH = struct.Struct("<I")
# How much of a caller's text (a name it gave) an error message repeats.
_SHOWN_CHARS = 64


def shown(text: str) -> str:
    """A name from a request, cut short enough to repeat in an error message."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


class InvalidTensor(InvalidInput):
    """A request tensor that does not fit the model."""


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    expected = spec.shape
    if len(shape) == len(expected):
        for want, got in zip(expected, shape, strict=True):
            if got < 0 or (want != -1 and want != got):
                break
        else:
            _check_extent(spec, shape)
            return
    if len(shape) != len(expected) or any(
        want != -1 and want != got for want, got in zip(expected, shape, strict=True)
    ):
        raise InvalidTensor(
            f"input '{spec.name}': expected shape {format_shape(expected)}, "
            f"got {format_shape(shape)}",
            field=spec.name,
            rule="shape",
        )
    raise InvalidTensor(
        f"input '{spec.name}': shape {format_shape(shape)} has a negative dimension",
        field=spec.name,
        rule="shape",
    )


def _check_extent(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if len(shape) > _MAX_DIMS:
        raise InvalidTensor(
            f"input '{spec.name}': {len(shape)} dimensions, more than the {_MAX_DIMS} supported",
            field=spec.name,
            rule="dimensions",
        )
    extent = spec.dtype.itemsize
    for dim in shape:
        extent *= max(dim, 1)
    if extent > _MAX_EXTENT:
        raise InvalidTensor(
            f"input '{spec.name}': shape {format_shape(shape)} is too large to represent",
            field=spec.name,
            rule="extent",
        )


def decode_bytes_tensor(name: str, data: bytes, count: int) -> Array:
    """Length-prefixed elements (4-byte little-endian length, then the bytes) as str.

    Reads at most `count` elements: bytes left after them are refused unread.
    """
    items: list[Any] = []
    unpack = _LENGTH.unpack_from
    offset = 0
    end = len(data)
    while offset < end:
        if len(items) == count:
            raise InvalidTensor(
                f"input '{name}': expected {count} BYTES elements for its shape, got more: "
                f"{end - offset} bytes follow element {count}",
                field=name,
                rule="element count",
            )
        if offset + 4 > end:
            raise InvalidTensor(
                f"input '{name}': raw BYTES contents end inside a length prefix at byte {offset}",
                field=name,
                rule="length prefix",
            )
        (length,) = unpack(data, offset)
        offset += 4
        stop = offset + length
        if stop > end:
            raise InvalidTensor(
                f"input '{name}': raw BYTES element of {length} bytes overruns the "
                f"{end} bytes given",
                field=name,
                rule="length prefix",
            )
        element = data[offset:stop]
        try:
            items.append(element.decode())
        except UnicodeDecodeError:  # onnxruntime takes str; bytes that are not UTF-8 stay bytes
            items.append(element)
        offset = stop
    if len(items) != count:
        raise InvalidTensor(
            f"input '{name}': expected {count} BYTES elements for its shape, got {len(items)}",
            field=name,
            rule="element count",
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def encode_bytes_tensor(array: Array) -> bytes:
    """The Triton wire form of a BYTES tensor, flattened in C order."""
    parts: list[bytes] = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _text(value: bytes) -> Any:
    """onnxruntime string tensors take str; bytes that are not UTF-8 stay bytes."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


class _Input:
    """What decoding one input needs, worked out once per model signature."""

    __slots__ = (
        "bytes",
        "datatype",
        "dtype",
        "field",
        "floating",
        "itemsize",
        "max_rows",
        "shapes",
        "spec",
    )

    def __init__(self, spec: TensorSpec, max_rows: int | None) -> None:
        self.spec = spec
        self.datatype = spec.datatype
        self.dtype = spec.dtype
        self.itemsize = spec.dtype.itemsize
        self.bytes = spec.datatype == "BYTES"
        self.floating = spec.datatype in _FLOATING
        # Only a variable first dimension is bounded: a fixed one is the model's.
        self.max_rows = max_rows if spec.shape and spec.shape[0] == -1 else None
        # The typed contents field ("" when the datatype has none: raw only).
        self.field = CONTENTS_FIELDS.get(spec.datatype, "")
        # Shapes already checked against the spec, with their element counts.
        self.shapes: dict[tuple[int, ...], int] = {}

    def count(self, shape: tuple[int, ...]) -> int:
        count = self.shapes.get(shape)
        if count is None:
            _check_shape(self.spec, shape)
            if self.max_rows is not None and shape[0] > self.max_rows:
                raise RequestTooLarge(
                    f"input '{self.spec.name}': {shape[0]} rows, more than the {self.max_rows} "
                    "a request may carry (DRIFTLOOP_INFERENCE_MAX_REQUEST_ROWS); send them in "
                    "several requests",
                    field=self.spec.name,
                    rule="max_request_rows",
                )
            count = math.prod(shape)
            if len(self.shapes) < _SHAPES_REMEMBERED:
                self.shapes[shape] = count
        return count


# One planned input: its facts, shape, element count, and its raw contents
# (bytes) or typed contents field (a sequence).
_Tensor = tuple[_Input, tuple[int, ...], int, Any]


class Planned:
    """A request checked against the signature, its values not read yet: each
    input's tensor, whether they came raw, and how many bytes of tensor data
    in all (raw contents as sent, typed numbers at their datatype's size, typed
    BYTES at 4 bytes an element until `InputDecoder.read` adds their lengths)."""

    __slots__ = ("raw", "size", "tensors")

    def __init__(self, tensors: dict[str, _Tensor], raw: bool, size: int) -> None:
        self.tensors = tensors
        self.raw = raw
        self.size = size


class InputDecoder:
    """Decodes a request's inputs for one model signature.

    The per-input facts (dtype, contents field, shapes already checked) are
    kept here so a request only pays for reading its own values. `plan` checks
    everything but the values (cheap whatever the request's size), `read` reads
    them. Without `max_rows`, `max_bytes` and `finite`, it decodes whatever fits
    the signature.
    """

    def __init__(
        self,
        specs: Iterable[TensorSpec],
        *,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        finite: bool = False,
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self._inputs = {name: _Input(spec, max_rows) for name, spec in self.specs.items()}
        self._max_bytes = sys.maxsize if max_bytes is None else max_bytes
        self._finite = finite

    def decode(self, request: oip.ModelInferRequest) -> dict[str, Array]:
        """Every input of the request as a numpy array of the model's type and shape."""
        return self.read(self.plan(request))

    def plan(self, request: oip.ModelInferRequest) -> Planned:
        """The request's inputs checked against the signature and the limits:
        names, datatypes, shapes, value counts and sizes, never the values."""
        raw = request.raw_input_contents
        tensors = request.inputs
        if raw and len(raw) != len(tensors):
            raise InvalidTensor(
                "raw_input_contents: expected one entry per input "
                f"({len(tensors)}), got {len(raw)}",
                field="raw_input_contents",
                rule="one entry per input",
            )
        inputs = self._inputs
        max_bytes = self._max_bytes
        size = 0
        planned: dict[str, _Tensor] = {}
        for index, tensor in enumerate(tensors):
            name = tensor.name
            known = inputs.get(name)
            if known is None:
                raise InvalidTensor(
                    f"input '{shown(name)}': not an input of the model; expected one of "
                    + ", ".join(sorted(inputs)),
                    field=shown(name),
                    rule="known input",
                )
            if name in planned:
                raise InvalidTensor(
                    f"input '{name}': given twice",
                    field=name,
                    rule="given once",
                )
            if tensor.datatype != known.datatype:
                raise InvalidTensor(
                    f"input '{name}': expected datatype {known.datatype}, "
                    f"got {shown(tensor.datatype) or '(empty)'}",
                    field=name,
                    rule="datatype",
                )
            shape = tuple(tensor.shape)
            count = known.count(shape)
            data: Any
            if raw:
                data = raw[index]
                if not known.bytes and len(data) != count * known.itemsize:
                    raise InvalidTensor(
                        f"input '{name}': expected {count * known.itemsize} bytes of raw "
                        f"contents for {known.datatype} {format_shape(shape)}, got {len(data)}",
                        field=name,
                        rule="raw size",
                    )
                size += len(data)
            else:
                if not known.field:
                    raise InvalidTensor(
                        f"input '{name}': datatype {known.datatype} can only be sent as "
                        "raw_input_contents",
                        field=name,
                        rule="raw only",
                    )
                data = getattr(tensor.contents, known.field)
                if len(data) != count:
                    _wrong_count(name, known.spec, tensor.contents, count, shape)
                size += count * (4 if known.bytes else known.itemsize)
            if size > max_bytes:
                _too_large(name, max_bytes)
            planned[name] = (known, shape, count, data)
        if len(planned) != len(inputs):
            specs = self.specs
            missing = [name for name in specs if name not in planned]
            raise InvalidTensor(
                "; ".join(f"input '{n}': missing, expected {specs[n].describe()}" for n in missing),
                field=missing[0],
                rule="missing",
            )
        return Planned(planned, bool(raw), size)

    def read(self, planned: Planned) -> dict[str, Array]:
        """The planned inputs' values as numpy arrays of the model's types and shapes."""
        raw = planned.raw
        size = planned.size
        arrays: dict[str, Array] = {}
        for name, (known, shape, count, data) in planned.tensors.items():
            array: Array
            if raw:
                if known.bytes:
                    array = decode_bytes_tensor(name, data, count)
                else:
                    array = np.frombuffer(data, dtype=known.dtype)
            elif known.bytes:
                size += sum(map(len, data))
                if size > self._max_bytes:
                    _too_large(name, self._max_bytes)
                array = np.empty(count, dtype=object)
                array[:] = [_text(value) for value in data]
            elif known.datatype in _NARROW:
                array = _narrowed(name, known.spec, data)
            elif count <= _FROMITER_MAX:
                # Every other contents field holds exactly its datatype's range.
                array = np.fromiter(data, dtype=known.dtype, count=count)
            else:
                array = np.array(data, dtype=known.dtype)
            if known.floating and self._finite:
                _check_finite(known.spec, array)
            arrays[name] = array.reshape(shape)
        return arrays


def _too_large(name: str, limit: int) -> NoReturn:
    raise RequestTooLarge(
        f"input '{name}': the request's tensors take more than the {limit} bytes a request may "
        "carry (DRIFTLOOP_INFERENCE_MAX_REQUEST_BYTES); send fewer rows per request",
        field=name,
        rule="max_request_bytes",
    )


def _check_finite(spec: TensorSpec, array: Array) -> None:
    """Refuse NaN and infinities in a flat array: no input is declared to take them."""
    if array.size <= _FROMITER_MAX:
        finite = all(map(math.isfinite, array.tolist()))
    else:
        finite = bool(np.isfinite(array).all())
    if finite:
        return
    index = int(np.flatnonzero(~np.isfinite(array))[0])
    raise InvalidTensor(
        f"input '{spec.name}': value {array.ravel()[index]} at index {index} is not a finite "
        f"number; {spec.datatype} inputs take finite numbers only",
        field=spec.name,
        rule="finite",
    )


def decode_inputs(
    request: oip.ModelInferRequest, specs: Mapping[str, TensorSpec]
) -> dict[str, Array]:
    """Every input of the request as a numpy array of the model's type and shape."""
    return InputDecoder(specs.values()).decode(request)


def _wrong_count(
    name: str,
    spec: TensorSpec,
    contents: oip.InferTensorContents,
    count: int,
    shape: tuple[int, ...],
) -> NoReturn:
    field = CONTENTS_FIELDS[spec.datatype]
    values: Sequence[Any] = getattr(contents, field)
    others = [
        other
        for other in set(CONTENTS_FIELDS.values())
        if other != field and len(getattr(contents, other))
    ]
    hint = f" (values came in {', '.join(sorted(others))})" if others else ""
    raise InvalidTensor(
        f"input '{name}': expected {count} {spec.datatype} values in contents.{field} for "
        f"shape {format_shape(shape)}, got {len(values)}{hint}",
        field=name,
        rule="value count",
    )


def _narrowed(name: str, spec: TensorSpec, values: Sequence[int]) -> Array:
    """int_contents / uint_contents (32 bits) as a narrower type, range-checked:
    numpy would wrap 300 into a UINT8 as 44."""
    wide = np.array(values, dtype=np.int64)
    limits = np.iinfo(spec.dtype)
    outside = np.flatnonzero((wide < limits.min) | (wide > limits.max))
    if outside.size:
        index = int(outside[0])
        raise InvalidTensor(
            f"input '{name}': value {int(wide[index])} at index {index} is out of range for "
            f"{spec.datatype} [{limits.min}, {limits.max}]",
            field=name,
            rule="range",
        )
    return wide.astype(spec.dtype)


def add_output(
    response: oip.ModelInferResponse, spec: TensorSpec, array: Array, *, raw: bool
) -> None:
    """Append one output tensor, as raw bytes or typed contents."""
    output = response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
    if raw:
        if spec.datatype == "BYTES":
            response.raw_output_contents.append(encode_bytes_tensor(array))
        else:
            response.raw_output_contents.append(
                np.ascontiguousarray(array, dtype=spec.dtype).tobytes()
            )
        return
    field = CONTENTS_FIELDS.get(spec.datatype)
    if field is None:  # FP16 has no typed field: raw is the only form.
        raise InvalidTensor(
            f"output '{spec.name}': datatype {spec.datatype} can only be returned raw",
            field=spec.name,
            rule="raw only",
        )
    if spec.datatype == "BYTES":
        output.contents.bytes_contents.extend(
            item if isinstance(item, bytes) else str(item).encode() for item in array.ravel()
        )
    else:
        getattr(output.contents, field).extend(array.ravel().tolist())
