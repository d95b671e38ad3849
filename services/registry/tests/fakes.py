"""Stand-ins for the registry's ports in use-case tests: an in-memory
artifact store and a publisher that records (and can fail like a broker outage)."""

from __future__ import annotations

import hashlib

from driftloop.v1 import common_pb2
from driftloop_core.artifacts import ArtifactDigestError
from google.protobuf.message import Message


class FakeArtifacts:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> common_pb2.Artifact:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return common_pb2.Artifact(uri=f"mem:{digest}", sha256=digest, size_bytes=len(data))

    def get(self, artifact: common_pb2.Artifact) -> bytes:
        data = self.blobs[artifact.sha256]
        if hashlib.sha256(data).hexdigest() != artifact.sha256:
            raise ArtifactDigestError(f"artifact sha256 mismatch: expected {artifact.sha256}")
        return data


class FlakyPublisher:
    """Records what was published; fails the first `failures` calls like a broker outage."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str | None, Message]] = []

    async def publish_event(
        self, message: Message, *, key: str | bytes | None, event_id: str | None = None
    ) -> object:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.sent.append((type(message).__name__, event_id, message))
        return None


def onnx_like() -> bytes:
    # A ModelProto with only ir_version set: valid protobuf, what onnx parses.
    return b"\x08\x08"
