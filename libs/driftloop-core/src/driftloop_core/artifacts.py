"""Model artifacts, content-addressed by sha256, on a local folder or any fsspec store.

The trainer puts an ONNX file here and names it by digest in `ModelTrained`; the
registry and inference read it back and refuse bytes whose digest differs, so a
model that was corrupted or swapped on the way is never registered or served.
Uploads are verified the same way: `put` reads the object back from the store.
The same code runs on a local folder (the embedded default) and on an
S3-compatible store (`DRIFTLOOP_ARTIFACTS_URL=s3://bucket/prefix`, with s3fs;
`DRIFTLOOP_ARTIFACTS_ENDPOINT_URL` for one that is not AWS).

Sizes are bounded (`DRIFTLOOP_ARTIFACTS_MAX_BYTES`): `put` refuses larger bytes,
and `get` asks the store for the object's size before reading it, so an
oversized object is refused without being loaded into memory.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import structlog
from driftloop.v1 import common_pb2

if TYPE_CHECKING:
    from driftloop_core.settings import Settings

ONNX_MEDIA_TYPE = "application/onnx"
log = structlog.get_logger(__name__)


class ArtifactDigestError(ValueError):
    """The bytes read do not have the digest they were stored under."""


class ArtifactTooLargeError(ValueError):
    """An artifact larger than the configured `DRIFTLOOP_ARTIFACTS_MAX_BYTES`."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} is {size} bytes, more than the {limit} allowed (DRIFTLOOP_ARTIFACTS_MAX_BYTES)"
        )
        self.size = size
        self.limit = limit


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """`put` bytes, get an `Artifact` (uri, sha256, size); `get` verifies the digest.

    `storage_options` go to fsspec as they are (s3fs: `endpoint_url`, `key`,
    `secret`, `client_kwargs`...). `max_bytes` bounds what is stored and read
    (None: no bound)."""

    def __init__(
        self, location: str, *, max_bytes: int | None = None, **storage_options: Any
    ) -> None:
        self.max_bytes = max_bytes
        self._fs, self._root = fsspec.core.url_to_fs(location, **storage_options)
        self._protocol = (
            self._fs.protocol if isinstance(self._fs.protocol, str) else self._fs.protocol[0]
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        """The store `DRIFTLOOP_ARTIFACTS_*` describe."""
        return cls(
            settings.artifacts_location,
            max_bytes=settings.artifacts_max_bytes,
            **settings.artifacts_storage_options,
        )

    @property
    def _local(self) -> bool:
        return self._protocol in ("file", "local")

    def _path(self, sha256: str) -> str:
        return f"{self._root.rstrip('/')}/sha256/{sha256[:2]}/{sha256}"

    def _uri(self, path: str) -> str:
        return path if self._local else f"{self._protocol}://{path}"

    def put(self, data: bytes, media_type: str = ONNX_MEDIA_TYPE) -> common_pb2.Artifact:
        """Store `data` under its digest, unless the store already holds exactly
        these bytes there; raises ArtifactDigestError when the store does not give
        back what was uploaded, ArtifactTooLargeError when `data` is over the limit."""
        self._check_size("artifact", len(data))
        digest = sha256_hex(data)
        path = self._path(digest)
        if self._fs.exists(path):
            held = sha256_hex(self._fs.cat_file(path))
            if held == digest:
                return self._artifact(path, digest, data, media_type)
            # Someone changed the object behind our back; the right bytes are here.
            log.warning("artifact_replaced", sha256=digest, held_sha256=held, uri=self._uri(path))
        self._write(path, data)
        stored = self._fs.cat_file(path)
        if stored != data:
            raise ArtifactDigestError(
                f"artifact {digest}: the store gave back other bytes after the upload "
                f"({len(stored)} bytes, sha256 {sha256_hex(stored)})"
            )
        return self._artifact(path, digest, data, media_type)

    def _write(self, path: str, data: bytes) -> None:
        if not self._local:
            # Object stores have no folders; the object appears whole or not at all.
            self._fs.pipe_file(path, data)
            return
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        # Write beside and rename: a reader never sees half a file.
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def _artifact(
        self, path: str, digest: str, data: bytes, media_type: str
    ) -> common_pb2.Artifact:
        return common_pb2.Artifact(
            uri=self._uri(path), sha256=digest, size_bytes=len(data), media_type=media_type
        )

    def _check_size(self, what: str, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise ArtifactTooLargeError(what, size, self.max_bytes)

    def get_by_digest(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`, verified; raises FileNotFoundError,
        ArtifactTooLargeError (before reading them) or ArtifactDigestError."""
        path = self._path(sha256)
        if self.max_bytes is not None:
            self._check_size(f"artifact {sha256}", int(self._fs.size(path)))
        data: bytes = self._fs.cat_file(path)
        # The object may have been replaced between the two calls.
        self._check_size(f"artifact {sha256}", len(data))
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
        if self._local:
            return Path(self._path(artifact.sha256))
        return None
