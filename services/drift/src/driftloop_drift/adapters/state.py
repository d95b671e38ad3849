"""The drift state in SQLite, written in one transaction with the offsets it reflects.

One row holds the engine's state as JSON (no pickle), beside the next offset
of every source partition and an outbox of events decided but not yet
acknowledged by the broker. A crash loses nothing and counts nothing twice:
on restart the service loads the state, reads again from the stored offsets
(records after them were never counted), and publishes what the outbox holds
under the event ids chosen when they were decided.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Position = tuple[str, int]


@dataclass(frozen=True)
class OutboxEvent:
    event_id: str
    message: str  # protobuf full name
    key: str
    payload: bytes


@dataclass(frozen=True)
class Saved:
    state: dict[str, Any] | None
    positions: dict[Position, int]
    outbox: list[OutboxEvent]


class DriftStateStore:
    """The SQLite file of one model's drift state, opened by the first `load`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._opened: sqlite3.Connection | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._opened is not None, "DriftStateStore.load() was not called"
        return self._opened

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(
            "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " data TEXT NOT NULL, saved_at REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS positions (topic TEXT NOT NULL, partition INTEGER NOT NULL,"
            " next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition));"
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " event_id TEXT NOT NULL UNIQUE, message TEXT NOT NULL, key TEXT NOT NULL,"
            " payload BLOB NOT NULL);"
        )
        self._opened = db

    def load(self) -> Saved:
        with self._lock:
            if self._opened is None:
                self._open()
            row = self._db.execute("SELECT data FROM state WHERE id = 1").fetchone()
            positions = {
                (str(topic), int(partition)): int(offset)
                for topic, partition, offset in self._db.execute(
                    "SELECT topic, partition, next_offset FROM positions"
                )
            }
            outbox = [
                OutboxEvent(str(event_id), str(message), str(key), bytes(payload))
                for event_id, message, key, payload in self._db.execute(
                    "SELECT event_id, message, key, payload FROM outbox ORDER BY seq"
                )
            ]
        return Saved(None if row is None else json.loads(row[0]), positions, outbox)

    def save(
        self,
        state: Mapping[str, Any],
        positions: Mapping[Position, int],
        outbox: Iterable[OutboxEvent] = (),
    ) -> None:
        """Replace the state and positions and add to the outbox, all or nothing."""
        data = json.dumps(state, separators=(",", ":"))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO state (id, data, saved_at) VALUES (1, ?, ?)",
                    (data, time.time()),
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                    [(topic, part, offset) for (topic, part), offset in positions.items()],
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO outbox (event_id, message, key, payload)"
                    " VALUES (?, ?, ?, ?)",
                    [(e.event_id, e.message, e.key, e.payload) for e in outbox],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def published(self, event_ids: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany(
                "DELETE FROM outbox WHERE event_id = ?", [(event_id,) for event_id in event_ids]
            )

    def close(self) -> None:
        with self._lock:
            if self._opened is not None:
                self._opened.close()
                self._opened = None
