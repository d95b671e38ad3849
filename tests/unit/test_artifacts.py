"""Artifacts are stored by digest and refused when their bytes changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from driftloop_core.artifacts import ArtifactDigestError, ArtifactStore, sha256_hex


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
