import datetime

from driftloop.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    FEATURE_STATUS_PRESENT: _ClassVar[FeatureStatus]
    FEATURE_STATUS_NOT_FOUND: _ClassVar[FeatureStatus]
    FEATURE_STATUS_STALE: _ClassVar[FeatureStatus]
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
FEATURE_STATUS_PRESENT: FeatureStatus
FEATURE_STATUS_NOT_FOUND: FeatureStatus
FEATURE_STATUS_STALE: FeatureStatus

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("entity_ids", "feature_names", "as_of")
    ENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    entity_ids: _containers.RepeatedScalarFieldContainer[str]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, entity_ids: _Optional[_Iterable[str]] = ..., feature_names: _Optional[_Iterable[str]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EntityFeatures(_message.Message):
    __slots__ = ("entity_id", "values", "statuses", "updated_at")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    class StatusesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureStatus
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureStatus, str]] = ...) -> None: ...
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    values: _containers.MessageMap[str, _common_pb2.FeatureValue]
    statuses: _containers.ScalarMap[str, FeatureStatus]
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, entity_id: _Optional[str] = ..., values: _Optional[_Mapping[str, _common_pb2.FeatureValue]] = ..., statuses: _Optional[_Mapping[str, FeatureStatus]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[EntityFeatures]
    def __init__(self, entities: _Optional[_Iterable[_Union[EntityFeatures, _Mapping]]] = ...) -> None: ...

class GetTrainingSetRequest(_message.Message):
    __slots__ = ("model", "window", "include_rows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ROWS_FIELD_NUMBER: _ClassVar[int]
    model: str
    window: _common_pb2.DataWindow
    include_rows: bool
    def __init__(self, model: _Optional[str] = ..., window: _Optional[_Union[_common_pb2.DataWindow, _Mapping]] = ..., include_rows: _Optional[bool] = ...) -> None: ...

class TrainingRow(_message.Message):
    __slots__ = ("event_id", "entity_id", "event_time", "features", "label")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    entity_id: str
    event_time: _timestamp_pb2.Timestamp
    features: _containers.MessageMap[str, _common_pb2.FeatureValue]
    label: int
    def __init__(self, event_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., features: _Optional[_Mapping[str, _common_pb2.FeatureValue]] = ..., label: _Optional[int] = ...) -> None: ...

class GetTrainingSetResponse(_message.Message):
    __slots__ = ("dataset", "feature_names", "rows")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    dataset: _common_pb2.Dataset
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    rows: _containers.RepeatedCompositeFieldContainer[TrainingRow]
    def __init__(self, dataset: _Optional[_Union[_common_pb2.Dataset, _Mapping]] = ..., feature_names: _Optional[_Iterable[str]] = ..., rows: _Optional[_Iterable[_Union[TrainingRow, _Mapping]]] = ...) -> None: ...
