"""Artifacts are stored by digest and refused when their bytes changed or are too many."""

from __future__ import annotations

from pathlib import Path

import pytest
from driftloop_core.artifacts import (
    ArtifactDigestError,
    ArtifactStore,
    ArtifactTooLargeError,
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
