"""Property-based tests: OIP tensor decoding meets arbitrary `ModelInferRequest`s
(random signatures, datatypes, shapes, byte lengths, typed or raw contents, inputs
missing, repeated or unknown) and always answers quickly: numpy arrays of the
model's types and shapes, or an `InvalidTensor` that names the input and says what
was wrong. Requests that follow the signature always decode to their values."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from driftloop_inference.codec import (
    CONTENTS_FIELDS,
    NUMPY_TYPES,
    InputDecoder,
    InvalidTensor,
    TensorSpec,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from inference import grpc_service_pb2 as oip

DATATYPES = sorted(NUMPY_TYPES)
NAMES = ["x", "k", "amount", "channel"]
# Decoding a request of a few dozen values takes microseconds; seconds mean a hang.
QUICK = timedelta(seconds=5)

# Values each typed contents field can carry on the wire.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}
FIELDS = sorted(FIELD_VALUES)


@dataclass(frozen=True)
class Case:
    specs: tuple[TensorSpec, ...]
    request: oip.ModelInferRequest

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Case(specs={self.specs!r}, request={self.request!r})"


@st.composite
def signatures(draw: st.DrawFn) -> tuple[TensorSpec, ...]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    return tuple(
        TensorSpec(
            name,
            draw(st.sampled_from(DATATYPES)),
            tuple(draw(st.lists(st.sampled_from([-1, -1, 1, 2, 3]), min_size=1, max_size=3))),
        )
        for name in names
    )


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# What int64 dims allow: small, negative, or huge (alone or beside a 0).
HUGE = st.sampled_from([2**31, 2**62, 2**63 - 1]) | st.integers(0, 2**63 - 1)
dims = st.integers(-2, 4) | HUGE


@st.composite
def following_shape(draw: st.DrawFn, spec: TensorSpec) -> list[int]:
    """The spec's shape with its variable dimensions filled: small, huge, or empty
    (the first one 0) with the others huge."""
    kind = draw(st.sampled_from(["small", "huge", "empty"]))
    shape: list[int] = []
    for dim in spec.shape:
        if dim != -1:
            shape.append(dim)
        elif kind == "small":
            shape.append(draw(st.integers(0, 3)))
        elif kind == "empty" and 0 not in shape:
            shape.append(0)
        else:
            shape.append(draw(HUGE))
    return shape


@st.composite
def arbitrary_cases(draw: st.DrawFn) -> Case:
    """Requests that follow the signature loosely or not at all."""
    specs = draw(signatures())
    by_name = {spec.name: spec for spec in specs}
    raw = draw(st.booleans())
    request = oip.ModelInferRequest(model_name="m")
    names = draw(
        st.permutations([s.name for s in specs])
        | st.lists(st.sampled_from([*NAMES, "other", ""]), max_size=4)
    )
    for name in names:
        spec = by_name.get(name)
        follows = spec is not None and draw(st.booleans())
        datatype = (
            spec.datatype
            if follows and spec is not None
            else draw(st.sampled_from([*DATATYPES, "", "FLOAT", "fp32"]))
        )
        if follows and spec is not None:
            shape = draw(following_shape(spec))
        else:
            shape = draw(st.lists(dims, max_size=5))
        if any(d < 0 for d in shape) or (0 not in shape and max(shape, default=0) > 16):
            count = draw(st.integers(0, 6))
        else:
            count = math.prod(shape)  # 0 beside huge dimensions too
        count = max(0, min(64, count + draw(st.sampled_from([0, 0, 0, -1, 1]))))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            if datatype == "BYTES":
                data = bytes_elements(draw(st.lists(st.binary(max_size=5), max_size=count)))
            elif datatype in NUMPY_TYPES:
                size = count * NUMPY_TYPES[datatype].itemsize
                data = draw(st.binary(min_size=size, max_size=size) | st.binary(max_size=24))
            else:
                data = draw(st.binary(max_size=24))
            request.raw_input_contents.append(data)
        else:
            field = CONTENTS_FIELDS.get(datatype) if follows else None
            field = field or draw(st.sampled_from(FIELDS))
            values = draw(st.lists(FIELD_VALUES[field], min_size=count, max_size=count))
            getattr(tensor.contents, field).extend(values)
    if raw and request.raw_input_contents and draw(st.booleans()):
        # One entry too many or too few.
        if draw(st.booleans()):
            request.raw_input_contents.append(b"")
        else:
            del request.raw_input_contents[-1]
    return Case(specs, request)


def typed_case(spec: TensorSpec, shape: list[int], **contents: list[Any]) -> Case:
    request = oip.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return Case((spec,), request)


# Found by the strategy above once, kept so that every run checks them: empty
# tensors whose other dimensions multiply past what numpy can address, and more
# dimensions than numpy has.
EMPTY_BUT_HUGE = typed_case(TensorSpec("k", "BYTES", (-1, -1)), [0, 2**62])
TOO_MANY_DIMS = typed_case(TensorSpec("x", "FP32", (-1,) * 70), [1] * 70, fp32_contents=[1.0])


def assert_named(error: InvalidTensor, case: Case) -> None:
    message = str(error)
    names = {t.name for t in case.request.inputs} | {s.name for s in case.specs}
    assert any(f"input '{name}'" in message for name in names) or message.startswith(
        "raw_input_contents:"
    ), message
    assert len(message) < 2000


@settings(
    max_examples=600,
    deadline=QUICK,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(arbitrary_cases())
@example(EMPTY_BUT_HUGE)
@example(TOO_MANY_DIMS)
def test_any_request_decodes_to_the_signature_or_is_refused_naming_the_input(
    case: Case,
) -> None:
    decoder = InputDecoder(case.specs)
    try:
        arrays = decoder.decode(case.request)
    except InvalidTensor as error:
        assert_named(error, case)
        return
    assert set(arrays) == {spec.name for spec in case.specs}
    for spec in case.specs:
        array = arrays[spec.name]
        assert array.dtype == spec.dtype, spec
        assert len(array.shape) == len(spec.shape)
        assert all(want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True))


def values_for(spec: TensorSpec, shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    """numpy arrays of `spec`'s type and `shape`, over the type's whole range."""
    count = math.prod(shape)
    dtype = spec.dtype
    if spec.datatype == "BYTES":
        element = st.text(max_size=5) | st.binary(max_size=5).filter(_not_utf8)
    elif spec.datatype == "BOOL":
        element = st.booleans()
    elif dtype.kind in "iu":
        limits = np.iinfo(dtype)
        element = st.integers(int(limits.min), int(limits.max))
    else:
        element = st.floats(width=8 * dtype.itemsize, allow_nan=False)

    def build(items: list[Any]) -> np.ndarray[Any, Any]:
        array = np.empty(count, dtype=dtype)
        array[:] = items
        return array.reshape(shape)

    return st.lists(element, min_size=count, max_size=count).map(build)


def _not_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return True
    return False


@st.composite
def conforming_cases(draw: st.DrawFn) -> tuple[Case, dict[str, np.ndarray[Any, Any]]]:
    specs = draw(signatures())
    raw = draw(st.booleans()) or any(s.datatype not in CONTENTS_FIELDS for s in specs)
    request = oip.ModelInferRequest(model_name="m")
    expected: dict[str, np.ndarray[Any, Any]] = {}
    for spec in draw(st.permutations(list(specs))):
        shape = tuple(d if d != -1 else draw(st.integers(0, 3)) for d in spec.shape)
        array = draw(values_for(spec, shape))
        expected[spec.name] = array
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        flat = array.ravel()
        if raw and spec.datatype == "BYTES":
            request.raw_input_contents.append(
                bytes_elements([v if isinstance(v, bytes) else v.encode() for v in flat])
            )
        elif raw:
            request.raw_input_contents.append(flat.tobytes())
        elif spec.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else v.encode() for v in flat
            )
        else:
            getattr(tensor.contents, CONTENTS_FIELDS[spec.datatype]).extend(flat.tolist())
    return Case(specs, request), expected


@settings(max_examples=300, deadline=QUICK, suppress_health_check=[HealthCheck.too_slow])
@given(conforming_cases())
def test_requests_that_follow_the_signature_decode_to_their_values(
    generated: tuple[Case, dict[str, np.ndarray[Any, Any]]],
) -> None:
    case, expected = generated
    arrays = InputDecoder(case.specs).decode(case.request)
    assert set(arrays) == set(expected)
    for name, want in expected.items():
        got = arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(got, want)
        else:
            assert got.tolist() == want.tolist(), name


@settings(max_examples=200, deadline=QUICK)
@given(
    datatype=st.sampled_from(["INT8", "INT16", "UINT8", "UINT16"]),
    values=st.lists(st.integers(-(2**31), 2**32 - 1), min_size=1, max_size=8),
)
def test_typed_values_outside_a_narrow_type_are_refused_not_wrapped(
    datatype: str, values: list[int]
) -> None:
    spec = TensorSpec("x", datatype, (-1,))
    field = CONTENTS_FIELDS[datatype]
    limits = np.iinfo(spec.dtype)
    if field == "int_contents":
        values = [v for v in values if v < 2**31] or [0]
    else:
        values = [abs(v) for v in values]
    request = oip.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[len(values)])
    getattr(tensor.contents, field).extend(values)
    outside = [i for i, v in enumerate(values) if not limits.min <= v <= limits.max]
    try:
        [array] = InputDecoder([spec]).decode(request).values()
    except InvalidTensor as error:
        assert outside, error
        first = outside[0]
        assert str(error) == (
            f"input 'x': value {values[first]} at index {first} is out of range for "
            f"{datatype} [{limits.min}, {limits.max}]"
        )
        return
    assert not outside and array.tolist() == values


@settings(max_examples=100, deadline=QUICK)
@given(count=st.integers(0, 4), extra=st.integers(1, 1 << 16))
def test_raw_bytes_past_the_shape_are_refused_unread(count: int, extra: int) -> None:
    """Millions of empty BYTES elements cost no more than the few the shape holds."""
    spec = TensorSpec("channel", "BYTES", (-1,))
    request = oip.ModelInferRequest()
    request.inputs.add(name="channel", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(bytes_elements([b"web"] * count) + b"\0\0\0\0" * extra)
    try:
        InputDecoder([spec]).decode(request)
    except InvalidTensor as error:
        assert str(error) == (
            f"input 'channel': expected {count} BYTES elements for its shape, got more: "
            f"{4 * extra} bytes follow element {count}"
        )
    else:
        raise AssertionError("extra elements were accepted")
