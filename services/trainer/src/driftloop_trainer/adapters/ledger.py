"""Which training requests are finished, so a replayed request trains nothing twice.

A request is recorded only after its outcome (`ModelTrained` or `TrainingFailed`)
was acknowledged by the broker. A crash in between replays the request and
publishes the same event again, under the same CloudEvents id, which the
registry deduplicates on the request id.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class RequestLedger:
    """A SQLite table of finished request ids with their outcome."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS finished ("
            " request_id TEXT PRIMARY KEY, model TEXT NOT NULL, outcome TEXT NOT NULL,"
            " event_id TEXT NOT NULL, finished_at REAL NOT NULL)"
        )

    def outcome(self, request_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT outcome FROM finished WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def record(self, request_id: str, model: str, outcome: str, event_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO finished VALUES (?, ?, ?, ?, ?)",
                (request_id, model, outcome, event_id, time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
