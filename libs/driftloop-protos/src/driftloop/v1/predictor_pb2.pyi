import datetime

from driftloop.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "alias", "event_id", "entity_id", "features", "event_time")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    alias: str
    event_id: str
    entity_id: str
    features: _containers.MessageMap[str, _common_pb2.FeatureValue]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., event_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., features: _Optional[_Mapping[str, _common_pb2.FeatureValue]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("event_id", "model", "model_version", "label", "probability", "features_used", "defaults_applied", "learner")
    class FeaturesUsedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_USED_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    model: str
    model_version: int
    label: int
    probability: float
    features_used: _containers.MessageMap[str, _common_pb2.FeatureValue]
    defaults_applied: _containers.RepeatedScalarFieldContainer[str]
    learner: str
    def __init__(self, event_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., label: _Optional[int] = ..., probability: _Optional[float] = ..., features_used: _Optional[_Mapping[str, _common_pb2.FeatureValue]] = ..., defaults_applied: _Optional[_Iterable[str]] = ..., learner: _Optional[str] = ...) -> None: ...
