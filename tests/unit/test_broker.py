"""The embedded broker explains itself when it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
from driftloop_core.broker import (
    BrokerNotFoundError,
    BrokerStartError,
    EmbeddedBroker,
    locate_tansu,
)


def test_a_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRIFTLOOP_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerNotFoundError, match=r"DRIFTLOOP_TANSU_BIN=.*not an executable"):
        locate_tansu()


def test_the_wheel_binary_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTLOOP_TANSU_BIN", raising=False)
    path = locate_tansu()
    assert path.is_file()


async def test_a_busy_port_is_refused_with_its_address() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = EmbeddedBroker(port)
        with pytest.raises(BrokerStartError, match=f"127.0.0.1:{port} is already in use"):
            broker.start()
        assert not broker.running()
