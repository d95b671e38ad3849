import datetime

from driftloop.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DriftKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_KIND_UNSPECIFIED: _ClassVar[DriftKind]
    DRIFT_KIND_PERFORMANCE: _ClassVar[DriftKind]
    DRIFT_KIND_DATA: _ClassVar[DriftKind]

class TrainingTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_TRIGGER_UNSPECIFIED: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_BOOTSTRAP: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_DRIFT: _ClassVar[TrainingTrigger]
    TRAINING_TRIGGER_MANUAL: _ClassVar[TrainingTrigger]

class PromotionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMOTION_KIND_UNSPECIFIED: _ClassVar[PromotionKind]
    PROMOTION_KIND_PROMOTE: _ClassVar[PromotionKind]
    PROMOTION_KIND_ROLLBACK: _ClassVar[PromotionKind]

class RolloutKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_KIND_UNSPECIFIED: _ClassVar[RolloutKind]
    ROLLOUT_KIND_TRIAL: _ClassVar[RolloutKind]
    ROLLOUT_KIND_WATCH: _ClassVar[RolloutKind]

class RolloutVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_VERDICT_UNSPECIFIED: _ClassVar[RolloutVerdict]
    ROLLOUT_VERDICT_PROMOTE: _ClassVar[RolloutVerdict]
    ROLLOUT_VERDICT_REJECT: _ClassVar[RolloutVerdict]

class RolloutOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_OUTCOME_UNSPECIFIED: _ClassVar[RolloutOutcome]
    ROLLOUT_OUTCOME_PROMOTED: _ClassVar[RolloutOutcome]
    ROLLOUT_OUTCOME_REJECTED: _ClassVar[RolloutOutcome]
    ROLLOUT_OUTCOME_SUPERSEDED: _ClassVar[RolloutOutcome]
    ROLLOUT_OUTCOME_ROLLED_BACK: _ClassVar[RolloutOutcome]
    ROLLOUT_OUTCOME_KEPT: _ClassVar[RolloutOutcome]
DRIFT_KIND_UNSPECIFIED: DriftKind
DRIFT_KIND_PERFORMANCE: DriftKind
DRIFT_KIND_DATA: DriftKind
TRAINING_TRIGGER_UNSPECIFIED: TrainingTrigger
TRAINING_TRIGGER_BOOTSTRAP: TrainingTrigger
TRAINING_TRIGGER_DRIFT: TrainingTrigger
TRAINING_TRIGGER_MANUAL: TrainingTrigger
PROMOTION_KIND_UNSPECIFIED: PromotionKind
PROMOTION_KIND_PROMOTE: PromotionKind
PROMOTION_KIND_ROLLBACK: PromotionKind
ROLLOUT_KIND_UNSPECIFIED: RolloutKind
ROLLOUT_KIND_TRIAL: RolloutKind
ROLLOUT_KIND_WATCH: RolloutKind
ROLLOUT_VERDICT_UNSPECIFIED: RolloutVerdict
ROLLOUT_VERDICT_PROMOTE: RolloutVerdict
ROLLOUT_VERDICT_REJECT: RolloutVerdict
ROLLOUT_OUTCOME_UNSPECIFIED: RolloutOutcome
ROLLOUT_OUTCOME_PROMOTED: RolloutOutcome
ROLLOUT_OUTCOME_REJECTED: RolloutOutcome
ROLLOUT_OUTCOME_SUPERSEDED: RolloutOutcome
ROLLOUT_OUTCOME_ROLLED_BACK: RolloutOutcome
ROLLOUT_OUTCOME_KEPT: RolloutOutcome

class Observation(_message.Message):
    __slots__ = ("event_id", "entity_id", "event_time", "values", "label", "ingested_at", "feature_set")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    entity_id: str
    event_time: _timestamp_pb2.Timestamp
    values: _containers.MessageMap[str, _common_pb2.FeatureValue]
    label: int
    ingested_at: _timestamp_pb2.Timestamp
    feature_set: str
    def __init__(self, event_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., values: _Optional[_Mapping[str, _common_pb2.FeatureValue]] = ..., label: _Optional[int] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_set: _Optional[str] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("event_id", "entity_id", "label", "ingested_at", "feature_set", "event_time")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    entity_id: str
    label: int
    ingested_at: _timestamp_pb2.Timestamp
    feature_set: str
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., label: _Optional[int] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_set: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KafkaHeader(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("reason", "field", "rule", "payload", "source_topic", "source_partition", "source_offset", "headers", "failed_at", "key", "service", "event_id")
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    reason: str
    field: str
    rule: str
    payload: bytes
    source_topic: str
    source_partition: int
    source_offset: int
    headers: _containers.RepeatedCompositeFieldContainer[KafkaHeader]
    failed_at: _timestamp_pb2.Timestamp
    key: bytes
    service: str
    event_id: str
    def __init__(self, reason: _Optional[str] = ..., field: _Optional[str] = ..., rule: _Optional[str] = ..., payload: _Optional[bytes] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[KafkaHeader, _Mapping]]] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key: _Optional[bytes] = ..., service: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("event_id", "entity_id", "model", "model_version", "label", "probability", "features", "defaults_applied", "event_time", "predicted_at", "latency", "learner", "champion", "shadow", "rollout_id")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    entity_id: str
    model: str
    model_version: int
    label: int
    probability: float
    features: _containers.MessageMap[str, _common_pb2.FeatureValue]
    defaults_applied: _containers.RepeatedScalarFieldContainer[str]
    event_time: _timestamp_pb2.Timestamp
    predicted_at: _timestamp_pb2.Timestamp
    latency: _duration_pb2.Duration
    learner: str
    champion: ShadowAnswer
    shadow: bool
    rollout_id: str
    def __init__(self, event_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., label: _Optional[int] = ..., probability: _Optional[float] = ..., features: _Optional[_Mapping[str, _common_pb2.FeatureValue]] = ..., defaults_applied: _Optional[_Iterable[str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., predicted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., learner: _Optional[str] = ..., champion: _Optional[_Union[ShadowAnswer, _Mapping]] = ..., shadow: _Optional[bool] = ..., rollout_id: _Optional[str] = ...) -> None: ...

class ShadowAnswer(_message.Message):
    __slots__ = ("model_version", "label", "probability")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    label: int
    probability: float
    def __init__(self, model_version: _Optional[int] = ..., label: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class DriftDetected(_message.Message):
    __slots__ = ("drift_id", "model", "model_version", "kind", "detector", "feature", "statistic", "threshold", "window_size", "first_event_id", "last_event_id", "detected_at", "window_range")
    DRIFT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    FIRST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_RANGE_FIELD_NUMBER: _ClassVar[int]
    drift_id: str
    model: str
    model_version: int
    kind: DriftKind
    detector: str
    feature: str
    statistic: float
    threshold: float
    window_size: int
    first_event_id: str
    last_event_id: str
    detected_at: _timestamp_pb2.Timestamp
    window_range: _common_pb2.TimeRange
    def __init__(self, drift_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., kind: _Optional[_Union[DriftKind, str]] = ..., detector: _Optional[str] = ..., feature: _Optional[str] = ..., statistic: _Optional[float] = ..., threshold: _Optional[float] = ..., window_size: _Optional[int] = ..., first_event_id: _Optional[str] = ..., last_event_id: _Optional[str] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_range: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ...) -> None: ...

class TrainingRequested(_message.Message):
    __slots__ = ("request_id", "model", "reason", "trigger", "window", "parent_drift_id", "requested_at", "requested_by", "expected_labelled_rows")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PARENT_DRIFT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LABELLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    reason: str
    trigger: TrainingTrigger
    window: _common_pb2.DataWindow
    parent_drift_id: str
    requested_at: _timestamp_pb2.Timestamp
    requested_by: str
    expected_labelled_rows: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., reason: _Optional[str] = ..., trigger: _Optional[_Union[TrainingTrigger, str]] = ..., window: _Optional[_Union[_common_pb2.DataWindow, _Mapping]] = ..., parent_drift_id: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requested_by: _Optional[str] = ..., expected_labelled_rows: _Optional[int] = ...) -> None: ...

class TrainingFailed(_message.Message):
    __slots__ = ("request_id", "model", "stage", "reason", "failed_at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    stage: str
    reason: str
    failed_at: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelTrained(_message.Message):
    __slots__ = ("request_id", "model", "artifact", "signature", "metrics", "champion_metrics", "champion_version", "eval_rows", "eval_range", "dataset", "params", "code_version", "reference", "feature_names", "algorithm", "trained_at", "trigger", "parent_drift_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ChampionMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ReferenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.ReferenceDistribution
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.ReferenceDistribution, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_METRICS_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVAL_RANGE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    TRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    PARENT_DRIFT_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    artifact: _common_pb2.Artifact
    signature: _common_pb2.ModelSignature
    metrics: _containers.ScalarMap[str, float]
    champion_metrics: _containers.ScalarMap[str, float]
    champion_version: int
    eval_rows: int
    eval_range: _common_pb2.TimeRange
    dataset: _common_pb2.Dataset
    params: _containers.ScalarMap[str, str]
    code_version: str
    reference: _containers.MessageMap[str, _common_pb2.ReferenceDistribution]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    algorithm: str
    trained_at: _timestamp_pb2.Timestamp
    trigger: TrainingTrigger
    parent_drift_id: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., artifact: _Optional[_Union[_common_pb2.Artifact, _Mapping]] = ..., signature: _Optional[_Union[_common_pb2.ModelSignature, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., champion_metrics: _Optional[_Mapping[str, float]] = ..., champion_version: _Optional[int] = ..., eval_rows: _Optional[int] = ..., eval_range: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.Dataset, _Mapping]] = ..., params: _Optional[_Mapping[str, str]] = ..., code_version: _Optional[str] = ..., reference: _Optional[_Mapping[str, _common_pb2.ReferenceDistribution]] = ..., feature_names: _Optional[_Iterable[str]] = ..., algorithm: _Optional[str] = ..., trained_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trigger: _Optional[_Union[TrainingTrigger, str]] = ..., parent_drift_id: _Optional[str] = ...) -> None: ...

class ModelRegistered(_message.Message):
    __slots__ = ("model", "version", "status", "reason", "request_id", "artifact", "metrics", "champion_version", "champion_metrics", "registered_at", "dataset_sha256")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ChampionMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_METRICS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    status: _common_pb2.ModelVersionStatus
    reason: str
    request_id: str
    artifact: _common_pb2.Artifact
    metrics: _containers.ScalarMap[str, float]
    champion_version: int
    champion_metrics: _containers.ScalarMap[str, float]
    registered_at: _timestamp_pb2.Timestamp
    dataset_sha256: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., status: _Optional[_Union[_common_pb2.ModelVersionStatus, str]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., artifact: _Optional[_Union[_common_pb2.Artifact, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., champion_version: _Optional[int] = ..., champion_metrics: _Optional[_Mapping[str, float]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset_sha256: _Optional[str] = ...) -> None: ...

class ModelPromoted(_message.Message):
    __slots__ = ("promotion_id", "model", "from_version", "to_version", "alias", "actor", "reason", "kind", "promoted_at", "artifact")
    PROMOTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_AT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    promotion_id: str
    model: str
    from_version: int
    to_version: int
    alias: str
    actor: str
    reason: str
    kind: PromotionKind
    promoted_at: _timestamp_pb2.Timestamp
    artifact: _common_pb2.Artifact
    def __init__(self, promotion_id: _Optional[str] = ..., model: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., alias: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., kind: _Optional[_Union[PromotionKind, str]] = ..., promoted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., artifact: _Optional[_Union[_common_pb2.Artifact, _Mapping]] = ...) -> None: ...

class RolloutPolicy(_message.Message):
    __slots__ = ("min_paired", "max_duration", "alpha", "beta", "effect", "latency_budget_p99")
    MIN_PAIRED_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_P99_FIELD_NUMBER: _ClassVar[int]
    min_paired: int
    max_duration: _duration_pb2.Duration
    alpha: float
    beta: float
    effect: float
    latency_budget_p99: _duration_pb2.Duration
    def __init__(self, min_paired: _Optional[int] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ..., effect: _Optional[float] = ..., latency_budget_p99: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ModelRolloutStarted(_message.Message):
    __slots__ = ("rollout_id", "model", "candidate_version", "champion_version", "artifact", "reason", "started_at", "policy", "kind")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    candidate_version: int
    champion_version: int
    artifact: _common_pb2.Artifact
    reason: str
    started_at: _timestamp_pb2.Timestamp
    policy: RolloutPolicy
    kind: RolloutKind
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., candidate_version: _Optional[int] = ..., champion_version: _Optional[int] = ..., artifact: _Optional[_Union[_common_pb2.Artifact, _Mapping]] = ..., reason: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., policy: _Optional[_Union[RolloutPolicy, _Mapping]] = ..., kind: _Optional[_Union[RolloutKind, str]] = ...) -> None: ...

class RolloutFigures(_message.Message):
    __slots__ = ("paired", "champion_errors", "candidate_errors", "champion_only_right", "candidate_only_right", "p_value", "log_likelihood_ratio", "candidate_p99_ms", "candidate_scored")
    PAIRED_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_ONLY_RIGHT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ONLY_RIGHT_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOOD_RATIO_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_P99_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SCORED_FIELD_NUMBER: _ClassVar[int]
    paired: int
    champion_errors: int
    candidate_errors: int
    champion_only_right: int
    candidate_only_right: int
    p_value: float
    log_likelihood_ratio: float
    candidate_p99_ms: float
    candidate_scored: int
    def __init__(self, paired: _Optional[int] = ..., champion_errors: _Optional[int] = ..., candidate_errors: _Optional[int] = ..., champion_only_right: _Optional[int] = ..., candidate_only_right: _Optional[int] = ..., p_value: _Optional[float] = ..., log_likelihood_ratio: _Optional[float] = ..., candidate_p99_ms: _Optional[float] = ..., candidate_scored: _Optional[int] = ...) -> None: ...

class RolloutJudged(_message.Message):
    __slots__ = ("rollout_id", "model", "candidate_version", "champion_version", "verdict", "reason", "figures", "judged_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    JUDGED_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    candidate_version: int
    champion_version: int
    verdict: RolloutVerdict
    reason: str
    figures: RolloutFigures
    judged_at: _timestamp_pb2.Timestamp
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., candidate_version: _Optional[int] = ..., champion_version: _Optional[int] = ..., verdict: _Optional[_Union[RolloutVerdict, str]] = ..., reason: _Optional[str] = ..., figures: _Optional[_Union[RolloutFigures, _Mapping]] = ..., judged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelRolloutEnded(_message.Message):
    __slots__ = ("rollout_id", "model", "candidate_version", "champion_version", "outcome", "reason", "figures", "ended_at", "kind")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    candidate_version: int
    champion_version: int
    outcome: RolloutOutcome
    reason: str
    figures: RolloutFigures
    ended_at: _timestamp_pb2.Timestamp
    kind: RolloutKind
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., candidate_version: _Optional[int] = ..., champion_version: _Optional[int] = ..., outcome: _Optional[_Union[RolloutOutcome, str]] = ..., reason: _Optional[str] = ..., figures: _Optional[_Union[RolloutFigures, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[RolloutKind, str]] = ...) -> None: ...
