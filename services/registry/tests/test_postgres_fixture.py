"""The PostgreSQL test cluster starts from any working directory (issue 20).

As root the cluster runs as `postgres` through runuser; started from a clone in
a folder only root may enter, initdb and pg_ctl could not change back into the
working directory they inherited ("could not change directory ... Permission
denied")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.integration


def test_cluster_starts_from_a_folder_only_its_owner_can_enter(
    start_postgres: Callable[[], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = tmp_path / "clone"
    clone.mkdir(mode=0o700)
    clone.chmod(0o700)
    monkeypatch.chdir(clone)
    server = start_postgres()
    # PostgreSQL 15 only warns and carries on; newer tools may stop there.
    assert not [said for said in server.complaints if "Permission denied" in said]
    engine = create_engine(server.create_database("from_a_private_folder"))
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
