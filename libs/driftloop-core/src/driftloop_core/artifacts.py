"""Model artifacts, content-addressed by sha256, on a local folder or any fsspec store.

The trainer puts an ONNX file here and names it by digest in `ModelTrained`; the
registry and inference read it back and refuse bytes whose digest differs, so a
model that was corrupted or swapped on the way is never registered or served.
The same code runs on a local folder (the embedded default) and on an
S3-compatible store (`DRIFTLOOP_ARTIFACTS_URL=s3://bucket/prefix`, with s3fs).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import fsspec
from driftloop.v1 import common_pb2

ONNX_MEDIA_TYPE = "application/onnx"


class ArtifactDigestError(ValueError):
    """The bytes read do not have the digest they were stored under."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """`put` bytes, get an `Artifact` (uri, sha256, size); `get` verifies the digest."""

    def __init__(self, location: str) -> None:
        self._fs, self._root = fsspec.core.url_to_fs(location)
        self._protocol = (
            self._fs.protocol if isinstance(self._fs.protocol, str) else self._fs.protocol[0]
        )

    def _path(self, sha256: str) -> str:
        return f"{self._root.rstrip('/')}/sha256/{sha256[:2]}/{sha256}"

    def _uri(self, path: str) -> str:
        return path if self._protocol in ("file", "local") else f"{self._protocol}://{path}"

    def put(self, data: bytes, media_type: str = ONNX_MEDIA_TYPE) -> common_pb2.Artifact:
        digest = sha256_hex(data)
        path = self._path(digest)
        if not self._fs.exists(path):
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            if self._protocol in ("file", "local"):
                # Write beside and rename: a reader never sees half a file.
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            else:
                self._fs.pipe_file(path, data)
        stored = self.get_by_digest(digest)
        if len(stored) != len(data):
            raise ArtifactDigestError(f"artifact {digest}: stored size differs from uploaded")
        return common_pb2.Artifact(
            uri=self._uri(path), sha256=digest, size_bytes=len(data), media_type=media_type
        )

    def get_by_digest(self, sha256: str) -> bytes:
        data: bytes = self._fs.cat_file(self._path(sha256))
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactDigestError(
                f"artifact sha256 mismatch: expected {sha256}, stored bytes have {actual}"
            )
        return data

    def get(self, artifact: common_pb2.Artifact) -> bytes:
        """The artifact's bytes, verified against its recorded sha256."""
        return self.get_by_digest(artifact.sha256)

    def local_path(self, artifact: common_pb2.Artifact) -> Path | None:
        """A filesystem path to the artifact when the store is local, else None."""
        if self._protocol in ("file", "local"):
            return Path(self._path(artifact.sha256))
        return None
