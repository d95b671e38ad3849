"""Artifacts are stored by digest and refused when their bytes changed or are too
many; a digest that is not one, or a stored path that is not a regular file of
the store, is refused before anything is read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from driftloop.v1 import common_pb2
from driftloop_core.artifacts import (
    ArtifactDigestError,
    ArtifactStore,
    ArtifactTooLargeError,
    InvalidDigestError,
    UnsafeArtifactError,
    check_sha256,
    sha256_hex,
)
from driftloop_core.settings import load_settings


def test_put_get_round_trip_and_content_addressing(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    artifact = store.put(b"onnx bytes")
    assert artifact.sha256 == sha256_hex(b"onnx bytes")
    assert artifact.size_bytes == len(b"onnx bytes")
    assert store.get(artifact) == b"onnx bytes"
    again = store.put(b"onnx bytes")
    assert again.uri == artifact.uri


def test_tampered_bytes_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    artifact = store.put(b"good model")
    path = store.local_path(artifact)
    assert path is not None
    path.write_bytes(b"evil model")
    with pytest.raises(ArtifactDigestError, match="sha256 mismatch"):
        store.get(artifact)


def test_memory_filesystem_works_like_an_object_store() -> None:
    store = ArtifactStore("memory://driftloop-test/artifacts")
    artifact = store.put(b"model")
    assert artifact.uri.startswith("memory://")
    assert store.get(artifact) == b"model"


@pytest.mark.parametrize("location", ["local", "memory://driftloop-limits/artifacts"])
def test_artifacts_over_the_size_limit_are_neither_stored_nor_read(
    tmp_path: Path, location: str
) -> None:
    url = str(tmp_path / "artifacts") if location == "local" else location
    strict = ArtifactStore(url, max_bytes=100)
    roomy = ArtifactStore(url, max_bytes=1000)
    with pytest.raises(ArtifactTooLargeError) as caught:
        strict.put(b"x" * 101)
    assert str(caught.value) == (
        "artifact is 101 bytes, more than the 100 allowed (DRIFTLOOP_ARTIFACTS_MAX_BYTES)"
    )
    assert strict.get(strict.put(b"y" * 100)) == b"y" * 100
    large = roomy.put(b"z" * 500)
    with pytest.raises(ArtifactTooLargeError, match=f"artifact {large.sha256} is 500 bytes"):
        strict.get(large)
    assert roomy.get(large) == b"z" * 500


def test_the_size_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRIFTLOOP_ARTIFACTS_MAX_BYTES", "2048")
    settings = load_settings(home=tmp_path)
    assert settings.artifacts_max_bytes == 2048
    assert ArtifactStore.from_settings(settings).max_bytes == 2048


@pytest.mark.parametrize(
    "digest",
    [
        "../../../../etc/passwd",
        "/dev/zero",
        "../" * 21 + "x",  # 64 characters
        sha256_hex(b"x").upper(),
        sha256_hex(b"x")[:63],
        sha256_hex(b"x") + "0",
        sha256_hex(b"x")[:62] + "/.",
        "",
    ],
)
def test_a_digest_that_is_not_64_lowercase_hex_is_refused_before_any_io(
    tmp_path: Path, digest: str
) -> None:
    # The store's folder does not even exist: any I/O would be FileNotFoundError.
    store = ArtifactStore(str(tmp_path / "never-created"))
    for read in (store.get_by_digest, store.open):
        with pytest.raises(InvalidDigestError, match="must be 64 lowercase hex characters"):
            read(digest)
    with pytest.raises(InvalidDigestError):
        store.local_path(common_pb2.Artifact(sha256=digest))
    assert not (tmp_path / "never-created").exists()
    with pytest.raises(InvalidDigestError):
        check_sha256(digest, "artifact.sha256")


def test_the_refusal_names_the_field_and_shows_a_long_value_cut() -> None:
    with pytest.raises(InvalidDigestError) as refused:
        check_sha256("/" * 500, "artifact.sha256")
    assert str(refused.value) == (
        "artifact.sha256: must be 64 lowercase hex characters (a sha256), got 500 "
        f"characters: {'/' * 80 + '...'!r}"
    )


def planted(store: ArtifactStore, data: bytes) -> tuple[str, Path]:
    """The digest of `data` and its path in `store`, its folder made, nothing in it."""
    digest = sha256_hex(data)
    path = store.local_path(common_pb2.Artifact(sha256=digest))
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    return digest, path


def test_a_symlink_leading_out_of_the_store_is_not_followed(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"model kept elsewhere")
    digest, path = planted(store, outside.read_bytes())
    path.symlink_to(outside)
    # Its digest matches; it is refused for where it leads.
    with pytest.raises(UnsafeArtifactError, match="resolves outside the artifact store"):
        store.get_by_digest(digest)
    # Inside the store a symlink is only another name for a file of the store.
    inner = store.put(b"stored model")
    inner_path = store.local_path(inner)
    assert inner_path is not None
    kept = inner_path.with_name("kept-copy")
    inner_path.rename(kept)
    inner_path.symlink_to(kept.name)
    assert store.get_by_digest(inner.sha256) == b"stored model"
    # And `put` replaces a planted symlink with the bytes themselves.
    path.unlink()
    path.symlink_to(outside)
    assert store.put(outside.read_bytes()).sha256 == digest
    assert not path.is_symlink() and store.get_by_digest(digest) == outside.read_bytes()


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    digest, path = planted(store, b"never written")
    os.mkfifo(path)
    with pytest.raises(UnsafeArtifactError, match="not a regular file"):
        store.get_by_digest(digest)


@pytest.mark.timeout(10)
def test_a_device_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    digest, path = planted(store, b"endless")
    try:
        # The device /dev/zero is (character device 1, 5): reading it never ends.
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs privileges this process lacks")
    with pytest.raises(UnsafeArtifactError, match="not a regular file"):
        store.get_by_digest(digest)


def test_a_stream_hashes_as_it_reads_and_settles_the_digest_at_the_end(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    data = bytes(range(256)) * 40
    artifact = store.put(data)
    with store.open(artifact.sha256) as stream:
        assert stream.size == len(data)
        chunks = [stream.read(1000) for _ in range(11)]
        assert [len(c) for c in chunks] == [1000] * 10 + [240]
        assert stream.read(1000) == b""
    assert b"".join(chunks) == data
    # Changed in place: every chunk still comes, the end says the bytes are wrong.
    path = store.local_path(artifact)
    assert path is not None
    path.write_bytes(data[:-1] + b"\x00")
    with store.open(artifact.sha256) as stream:
        assert len(stream.read(len(data))) == len(data)
        with pytest.raises(ArtifactDigestError, match="sha256 mismatch"):
            stream.read(1000)


def test_a_file_that_grows_after_its_size_was_checked_is_cut_off(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"), max_bytes=1000)
    artifact = store.put(b"a" * 1000)
    path = store.local_path(artifact)
    assert path is not None
    with store.open(artifact.sha256) as stream:
        with path.open("ab") as grow:
            grow.write(b"b" * 10_000)
        with pytest.raises(ArtifactTooLargeError, match="more than the 1000 allowed"):
            stream.read_all()
