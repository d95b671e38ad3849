"""Artifacts on a real S3-compatible server (moto's, on a free port): the same
content addressing and digest checks as on a local folder, configured the way
an operator would, through DRIFTLOOP_ARTIFACTS_* variables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import s3fs
from driftloop_core.artifacts import ArtifactDigestError, ArtifactStore, sha256_hex
from driftloop_core.broker import free_port
from driftloop_core.settings import load_settings

pytestmark = pytest.mark.integration

CREDENTIALS = {"key": "testing", "secret": "testing"}  # moto takes any


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    # Imported here: moto takes seconds to import, and only these tests need it.
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def server(endpoint: str) -> Any:
    """A client of its own, as another party on the server would have."""
    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, **CREDENTIALS)


@pytest.fixture
def bucket(server: Any, unique: str) -> str:
    name = f"artifacts-{unique}"
    server.mkdir(name)
    return name


@pytest.fixture
def store(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    """Configured from the environment, as a service's composition root does."""
    monkeypatch.setenv("DRIFTLOOP_ARTIFACTS_URL", f"s3://{bucket}/driftloop")
    monkeypatch.setenv("DRIFTLOOP_ARTIFACTS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("DRIFTLOOP_ARTIFACTS_OPTIONS", json.dumps(CREDENTIALS))
    return ArtifactStore.from_settings(load_settings())


def test_put_get_round_trip_by_digest(store: ArtifactStore, server: Any, bucket: str) -> None:
    data = b"onnx bytes on s3"
    digest = sha256_hex(data)
    artifact = store.put(data)
    assert artifact.uri == f"s3://{bucket}/driftloop/sha256/{digest[:2]}/{digest}"
    assert (artifact.sha256, artifact.size_bytes) == (digest, len(data))
    assert server.cat_file(artifact.uri) == data
    assert store.get(artifact) == data
    assert store.local_path(artifact) is None
    # The same bytes again: the same object, nothing new on the server.
    assert store.put(data).uri == artifact.uri
    assert server.find(f"{bucket}/driftloop") == [artifact.uri.removeprefix("s3://")]


def test_an_object_changed_on_the_server_is_refused_then_repaired(
    store: ArtifactStore, server: Any
) -> None:
    artifact = store.put(b"good model")
    server.pipe_file(artifact.uri, b"evil model")
    with pytest.raises(ArtifactDigestError) as refused:
        store.get(artifact)
    assert str(refused.value) == (
        f"artifact sha256 mismatch: expected {artifact.sha256}, "
        f"stored bytes have {sha256_hex(b'evil model')}"
    )
    # Uploading the right bytes does not trust the key that is already there.
    assert store.put(b"good model") == artifact
    assert server.cat_file(artifact.uri) == b"good model"
    assert store.get(artifact) == b"good model"


def test_a_missing_object_is_an_error_not_empty_bytes(store: ArtifactStore) -> None:
    artifact = store.put(b"kept")
    missing = type(artifact)(sha256=sha256_hex(b"never uploaded"))
    with pytest.raises(FileNotFoundError):
        store.get(missing)
