"""Model artifacts, content-addressed by sha256, on a local folder or any fsspec store.

The trainer puts an ONNX file here and names it by digest in `ModelTrained`; the
registry and inference read it back and refuse bytes whose digest differs, so a
model that was corrupted or swapped on the way is never registered or served.
Uploads are verified the same way: `put` reads the object back from the store.
The same code runs on a local folder (the embedded default) and on an
S3-compatible store (`DRIFTLOOP_ARTIFACTS_URL=s3://bucket/prefix`, with s3fs;
`DRIFTLOOP_ARTIFACTS_ENDPOINT_URL` for one that is not AWS).

A digest arrives in Kafka messages anyone with write access may forge, and it
becomes a location here, so it is checked first: exactly 64 lowercase hex
characters, or `InvalidDigestError` before any I/O (no `../` ever reaches a
path). On a local folder only regular files inside the folder are read: a
symlink resolving outside it, a device (`/dev/zero` never ends) or a FIFO (its
open blocks) is refused with `UnsafeArtifactError`.

Sizes are bounded (`DRIFTLOOP_ARTIFACTS_MAX_BYTES`): `put` refuses larger bytes,
and a read asks the store for the object's size before reading it and stops
as soon as more bytes arrive than allowed, so an oversized object is never
loaded into memory. `open` streams an artifact in chunks, hashing as it goes:
the digest is settled when the last chunk has been read.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import fsspec
import structlog
from driftloop.v1 import common_pb2

if TYPE_CHECKING:
    from driftloop_core.settings import Settings

ONNX_MEDIA_TYPE = "application/onnx"
# What `ArtifactStream.read_all` asks the store for at a time.
READ_CHUNK = 1024 * 1024
log = structlog.get_logger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactDigestError(ValueError):
    """The bytes read do not have the digest they were stored under."""


class InvalidDigestError(ValueError):
    """A digest that is not 64 lowercase hex characters; never made into a location."""


class UnsafeArtifactError(ValueError):
    """What a local digest path leads to is not a regular file inside the store."""


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


def is_sha256(value: str) -> bool:
    """Whether `value` is a digest as the artifact store writes them: 64 lowercase hex."""
    return _SHA256.fullmatch(value) is not None


def check_sha256(value: str, field: str = "sha256") -> str:
    """`value` when it is 64 lowercase hex characters; else InvalidDigestError
    naming `field` and showing (the start of) what was given."""
    if is_sha256(value):
        return value
    shown = value if len(value) <= 80 else value[:80] + "..."
    raise InvalidDigestError(
        f"{field}: must be 64 lowercase hex characters (a sha256), got {len(value)} "
        f"characters: {shown!r}"
    )


class ArtifactStream:
    """The bytes stored under one digest, read chunk by chunk and hashed on the way.

    `read` returns b"" once everything was read, after checking the digest: it
    raises ArtifactDigestError then if the bytes are not the ones stored under
    `sha256` (the caller has seen them and must throw them away), and
    ArtifactTooLargeError as soon as more than the limit arrived. `size` is
    what the store reported when the stream was opened.
    """

    def __init__(self, handle: IO[bytes], sha256: str, size: int, limit: int | None) -> None:
        self.sha256 = sha256
        self.size = size
        self.received = 0
        self.actual = ""
        self._handle = handle
        self._limit = limit
        self._hash = hashlib.sha256()

    def read(self, size: int = READ_CHUNK) -> bytes:
        if self.actual:
            return b""
        data = self._handle.read(size)
        if data:
            self.received += len(data)
            if self._limit is not None and self.received > self._limit:
                raise ArtifactTooLargeError(f"artifact {self.sha256}", self.received, self._limit)
            self._hash.update(data)
            return data
        self.actual = self._hash.hexdigest()
        if self.actual != self.sha256:
            raise ArtifactDigestError(
                f"artifact sha256 mismatch: expected {self.sha256}, stored bytes have {self.actual}"
            )
        return b""

    def read_all(self) -> bytes:
        """Every remaining byte, verified."""
        chunks = []
        while chunk := self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ArtifactStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _open_regular_file(path: str, root: str) -> tuple[IO[bytes], int]:
    """`path` opened for reading when it resolves to a regular file under `root`.
    The errors do not say where a path leads: they may reach a dead letter."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafeArtifactError("the stored path resolves outside the artifact store")
    # O_NONBLOCK: opening a FIFO would wait for a writer; O_NOFOLLOW: the file
    # resolved above is not swapped for a symlink before the open.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
    descriptor = os.open(real, flags)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeArtifactError(
                f"the stored path is not a regular file (file type {stat.S_IFMT(info.st_mode):o})"
            )
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb"), info.st_size
    except BaseException:
        os.close(descriptor)
        raise


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
        check_sha256(sha256)
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
            try:
                with self.open(digest) as held:
                    held.read_all()
                return self._artifact(path, digest, data, media_type)
            except (ArtifactDigestError, ArtifactTooLargeError, UnsafeArtifactError) as error:
                # Someone changed the object behind our back; the right bytes go there.
                log.warning(
                    "artifact_replaced", sha256=digest, uri=self._uri(path), error=str(error)
                )
        self._write(path, data)
        with self.open(digest) as stored:
            try:
                stored.read_all()
            except ArtifactDigestError:
                raise ArtifactDigestError(
                    f"artifact {digest}: the store gave back other bytes after the upload "
                    f"({stored.received} bytes, sha256 {stored.actual})"
                ) from None
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

    def open(self, sha256: str) -> ArtifactStream:
        """A stream of the bytes stored under `sha256`, verified as it is read.

        Raises InvalidDigestError (before any I/O), FileNotFoundError,
        UnsafeArtifactError (a local path that is no regular file of the store)
        or ArtifactTooLargeError (the store reports more bytes than allowed)."""
        path = self._path(sha256)
        if self._local:
            handle, size = _open_regular_file(path, self._root)
        else:
            size = int(self._fs.size(path))
            handle = self._fs.open(path, "rb")
        try:
            self._check_size(f"artifact {sha256}", size)
        except ArtifactTooLargeError:
            handle.close()
            raise
        return ArtifactStream(handle, sha256, size, self.max_bytes)

    def get_by_digest(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`, verified; raises what `open` raises,
        and ArtifactDigestError when they are not the bytes of that digest."""
        with self.open(sha256) as stream:
            return stream.read_all()

    def get(self, artifact: common_pb2.Artifact) -> bytes:
        """The artifact's bytes, verified against its recorded sha256."""
        return self.get_by_digest(artifact.sha256)

    def local_path(self, artifact: common_pb2.Artifact) -> Path | None:
        """A filesystem path to the artifact when the store is local, else None."""
        if self._local:
            return Path(self._path(artifact.sha256))
        return None
