import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATUS_UNSPECIFIED: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_CANDIDATE: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_CHAMPION: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_ARCHIVED: _ClassVar[ModelVersionStatus]
MODEL_VERSION_STATUS_UNSPECIFIED: ModelVersionStatus
MODEL_VERSION_STATUS_CANDIDATE: ModelVersionStatus
MODEL_VERSION_STATUS_CHAMPION: ModelVersionStatus
MODEL_VERSION_STATUS_ARCHIVED: ModelVersionStatus

class FeatureValue(_message.Message):
    __slots__ = ("float_value", "int_value", "string_value")
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    float_value: float
    int_value: int
    string_value: str
    def __init__(self, float_value: _Optional[float] = ..., int_value: _Optional[int] = ..., string_value: _Optional[str] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DataWindow(_message.Message):
    __slots__ = ("time_range", "last_n")
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    LAST_N_FIELD_NUMBER: _ClassVar[int]
    time_range: TimeRange
    last_n: int
    def __init__(self, time_range: _Optional[_Union[TimeRange, _Mapping]] = ..., last_n: _Optional[int] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("uri", "sha256", "row_count", "time_range", "requested")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    row_count: int
    time_range: TimeRange
    requested: DataWindow
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., row_count: _Optional[int] = ..., time_range: _Optional[_Union[TimeRange, _Mapping]] = ..., requested: _Optional[_Union[DataWindow, _Mapping]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelSignature(_message.Message):
    __slots__ = ("inputs", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("uri", "sha256", "size_bytes", "media_type")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    size_bytes: int
    media_type: str
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class NumericDistribution(_message.Message):
    __slots__ = ("edges", "fractions", "sample")
    EDGES_FIELD_NUMBER: _ClassVar[int]
    FRACTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedScalarFieldContainer[float]
    fractions: _containers.RepeatedScalarFieldContainer[float]
    sample: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, edges: _Optional[_Iterable[float]] = ..., fractions: _Optional[_Iterable[float]] = ..., sample: _Optional[_Iterable[float]] = ...) -> None: ...

class CategoricalDistribution(_message.Message):
    __slots__ = ("frequencies",)
    class FrequenciesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FREQUENCIES_FIELD_NUMBER: _ClassVar[int]
    frequencies: _containers.ScalarMap[str, float]
    def __init__(self, frequencies: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ReferenceDistribution(_message.Message):
    __slots__ = ("numeric", "categorical", "count", "missing_fraction")
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FRACTION_FIELD_NUMBER: _ClassVar[int]
    numeric: NumericDistribution
    categorical: CategoricalDistribution
    count: int
    missing_fraction: float
    def __init__(self, numeric: _Optional[_Union[NumericDistribution, _Mapping]] = ..., categorical: _Optional[_Union[CategoricalDistribution, _Mapping]] = ..., count: _Optional[int] = ..., missing_fraction: _Optional[float] = ...) -> None: ...
