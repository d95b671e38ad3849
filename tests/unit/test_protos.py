"""The protobuf contract: committed stubs match protos/, and the Open Inference
Protocol stubs put on the wire exactly what standard OIP clients (tritonclient)
send and expect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from driftloop.v1 import common_pb2, events_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from inference import grpc_service_pb2, grpc_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]

OIP_METHODS = {
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/RepositoryIndex",
}

# Field numbers as published in the KServe Open Inference Protocol specification
# (and, for RepositoryIndex, in Triton's grpc_service.proto).
OIP_FIELD_NUMBERS: dict[Descriptor, dict[str, int]] = {
    grpc_service_pb2.ServerLiveResponse.DESCRIPTOR: {"live": 1},
    grpc_service_pb2.ServerReadyResponse.DESCRIPTOR: {"ready": 1},
    grpc_service_pb2.ModelReadyRequest.DESCRIPTOR: {"name": 1, "version": 2},
    grpc_service_pb2.ServerMetadataResponse.DESCRIPTOR: {
        "name": 1,
        "version": 2,
        "extensions": 3,
    },
    grpc_service_pb2.ModelMetadataResponse.DESCRIPTOR: {
        "name": 1,
        "versions": 2,
        "platform": 3,
        "inputs": 4,
        "outputs": 5,
    },
    grpc_service_pb2.ModelMetadataResponse.TensorMetadata.DESCRIPTOR: {
        "name": 1,
        "datatype": 2,
        "shape": 3,
    },
    grpc_service_pb2.ModelInferRequest.DESCRIPTOR: {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    },
    grpc_service_pb2.ModelInferRequest.InferInputTensor.DESCRIPTOR: {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    grpc_service_pb2.ModelInferRequest.InferRequestedOutputTensor.DESCRIPTOR: {
        "name": 1,
        "parameters": 2,
    },
    grpc_service_pb2.ModelInferResponse.DESCRIPTOR: {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    },
    grpc_service_pb2.ModelInferResponse.InferOutputTensor.DESCRIPTOR: {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    grpc_service_pb2.InferParameter.DESCRIPTOR: {
        "bool_param": 1,
        "int64_param": 2,
        "string_param": 3,
        "double_param": 4,
        "uint64_param": 5,
    },
    grpc_service_pb2.InferTensorContents.DESCRIPTOR: {
        "bool_contents": 1,
        "int_contents": 2,
        "int64_contents": 3,
        "uint_contents": 4,
        "uint64_contents": 5,
        "fp32_contents": 6,
        "fp64_contents": 7,
        "bytes_contents": 8,
    },
    grpc_service_pb2.RepositoryIndexRequest.DESCRIPTOR: {"repository_name": 1, "ready": 2},
    grpc_service_pb2.RepositoryIndexResponse.DESCRIPTOR: {"models": 1},
    grpc_service_pb2.RepositoryIndexResponse.ModelIndex.DESCRIPTOR: {
        "name": 1,
        "version": 2,
        "state": 3,
        "reason": 4,
    },
}


class RecordingChannel:
    """Stands in for a grpc.Channel and records the method paths a stub binds."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _bind(self, path: str, *args: Any, **kwargs: Any) -> str:
        self.paths.append(path)
        return path

    unary_unary = unary_stream = stream_unary = stream_stream = _bind


def test_committed_stubs_match_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_oip_service_has_the_published_method_paths() -> None:
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    from_descriptor = {f"/{service.full_name}/{method.name}" for method in service.methods}
    channel = RecordingChannel()
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

    assert from_descriptor == OIP_METHODS
    assert set(channel.paths) == OIP_METHODS


@pytest.mark.parametrize(
    "descriptor", list(OIP_FIELD_NUMBERS), ids=lambda descriptor: descriptor.full_name
)
def test_oip_messages_have_the_published_field_numbers(descriptor: Descriptor) -> None:
    numbers = {field.name: field.number for field in descriptor.fields}
    assert numbers == OIP_FIELD_NUMBERS[descriptor]


def test_raw_contents_are_repeated_bytes_on_the_wire() -> None:
    request = grpc_service_pb2.ModelInferRequest(raw_input_contents=[b"\x01\x02"])
    response = grpc_service_pb2.ModelInferResponse(raw_output_contents=[b"\x01\x02"])

    # Tag = field number << 3 | wire type 2 (length-delimited): 7 -> 0x3a, 6 -> 0x32.
    assert request.SerializeToString() == b"\x3a\x02\x01\x02"
    assert response.SerializeToString() == b"\x32\x02\x01\x02"


def _timestamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=500_000_000)


def test_observation_round_trips_with_every_value_type() -> None:
    observation = events_pb2.Observation(
        event_id="e1",
        entity_id="c7",
        event_time=_timestamp(1_763_800_000),
        values={
            "amount": common_pb2.FeatureValue(float_value=12.5),
            "hour": common_pb2.FeatureValue(int_value=2**60),
            "channel": common_pb2.FeatureValue(string_value="web"),
        },
        label=0,
        ingested_at=_timestamp(1_763_800_001),
        feature_set="payments",
    )

    parsed = events_pb2.Observation.FromString(observation.SerializeToString())

    assert parsed == observation
    assert parsed.HasField("label") and parsed.label == 0
    assert parsed.values["hour"].WhichOneof("kind") == "int_value"
    assert parsed.values["hour"].int_value == 2**60


def test_model_trained_round_trips_with_lineage() -> None:
    trained = events_pb2.ModelTrained(
        request_id="r1",
        model="payments",
        artifact=common_pb2.Artifact(uri="file:///models/ab", sha256="ab" * 32, size_bytes=2048),
        signature=common_pb2.ModelSignature(
            inputs=[common_pb2.TensorSpec(name="amount", datatype="FP32", shape=[-1, 1])],
            outputs=[common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2])],
        ),
        metrics={"accuracy": 0.93, "roc_auc": 0.97},
        champion_metrics={"accuracy": 0.81},
        champion_version=1,
        dataset=common_pb2.Dataset(
            uri="offline/payments.parquet",
            sha256="cd" * 32,
            row_count=5000,
            requested=common_pb2.DataWindow(last_n=5000),
        ),
        params={"max_depth": "6"},
        reference={
            "amount": common_pb2.ReferenceDistribution(
                numeric=common_pb2.NumericDistribution(
                    edges=[0.0, 10.0, 100.0], fractions=[0.4, 0.6]
                ),
                count=5000,
            ),
            "channel": common_pb2.ReferenceDistribution(
                categorical=common_pb2.CategoricalDistribution(
                    frequencies={"web": 0.5, "pos": 0.3, "atm": 0.2}
                ),
                count=5000,
            ),
        },
        trigger=events_pb2.TRAINING_TRIGGER_DRIFT,
        trained_at=_timestamp(1_763_800_100),
    )

    parsed = events_pb2.ModelTrained.FromString(trained.SerializeToString())

    assert parsed == trained
    assert parsed.dataset.requested.WhichOneof("kind") == "last_n"
    assert parsed.reference["channel"].WhichOneof("kind") == "categorical"


def test_dead_letter_keeps_payload_and_headers_byte_for_byte() -> None:
    dead = events_pb2.DeadLetter(
        reason="amount: -3 is below the minimum 0",
        field="amount",
        rule="min",
        payload=b'{"event_id": "e1", "amount": -3}\xff',
        source_topic="events.raw",
        source_partition=3,
        source_offset=42,
        headers=[
            events_pb2.KafkaHeader(key="traceparent", value=b"00-abc-def-01"),
            events_pb2.KafkaHeader(key="x", value=b"\x00\x01"),
        ],
        failed_at=_timestamp(1_763_800_200),
    )

    parsed = events_pb2.DeadLetter.FromString(dead.SerializeToString())

    assert parsed == dead
    assert parsed.payload.endswith(b"\xff")
    assert [header.key for header in parsed.headers] == ["traceparent", "x"]


def test_prediction_carries_latency_as_a_duration() -> None:
    prediction = events_pb2.Prediction(
        event_id="e1",
        model="payments",
        model_version=2,
        label=1,
        probability=0.87,
        latency=Duration(nanos=850_000),
    )

    parsed = events_pb2.Prediction.FromString(prediction.SerializeToString())

    assert parsed == prediction
    assert parsed.latency.ToMicroseconds() == 850
