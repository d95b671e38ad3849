"""The event index: every accepted observation's id, entity and event time, in SQLite.

Deduplication and late labels both need to know, after a restart too, which
event ids ingestion has accepted: a replayed producer must change nothing, an
id re-sent with other content must be refused (a digest of the content is
kept), and a label days later must find the entity its observation was keyed
by (and the label it holds now, which only a correction may change). A local
SQLite file in WAL mode does this for one ingestion process with no server to
run; each batch is one transaction.

`synchronous=NORMAL` means a power cut may forget the last transactions. That
is safe by construction: events are recorded here only after they were
published, so a forgotten id is at worst published again and dropped by event
id downstream.

Labels that came before their observations wait in the `held` table, with
their raw payload and origin for the dead letter they become if the wait runs
out; holding, releasing and recording a batch's observations is one
transaction, so after a crash a held label is either still held or published.

The index also names the broker its ids were published to (by the cluster id
of its metadata answers). A broker with another id holds none of them: the
embedded broker, restarted, starts empty under a new id. `use_broker` then
returns the moment of the change, before which an entry no longer makes an
event a duplicate (`Ingestor.published_since_ms`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from driftloop_ingestion.ports import HeldLabel, IndexEntry
from driftloop_ingestion.validation import Origin

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id      TEXT PRIMARY KEY,
    entity_id     TEXT NOT NULL,
    event_time_ms INTEGER NOT NULL,
    seen_at_ms    INTEGER NOT NULL,
    labelled      INTEGER NOT NULL DEFAULT 0,
    digest        BLOB,
    label         INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_seen_at ON events (seen_at_ms);
CREATE TABLE IF NOT EXISTS held (
    event_id   TEXT PRIMARY KEY,
    label      INTEGER NOT NULL,
    held_at_ms INTEGER NOT NULL,
    payload    BLOB NOT NULL,
    origin     TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS held_at ON held (held_at_ms);
CREATE TABLE IF NOT EXISTS broker (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cluster_id TEXT NOT NULL,
    since_ms   INTEGER NOT NULL
);
"""

# Columns added since the first release, for index files written before them.
_ADDED_COLUMNS = {"digest": "BLOB", "label": "INTEGER"}

_UPSERT = """
INSERT INTO events (event_id, entity_id, event_time_ms, seen_at_ms, labelled, digest, label)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (event_id) DO UPDATE SET
    entity_id = excluded.entity_id,
    event_time_ms = excluded.event_time_ms,
    seen_at_ms = excluded.seen_at_ms,
    labelled = excluded.labelled,
    digest = excluded.digest,
    label = excluded.label
"""

# SQLite before 3.32 allows at most 999 bound parameters per statement.
_LOOKUP_CHUNK = 900


class SqliteEventIndex:
    """The index file of one ingestion process; not shared between processes."""

    def __init__(
        self,
        path: Path,
        *,
        retention: timedelta,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._retention_ms = int(retention / timedelta(milliseconds=1))
        self._clock = clock
        # Autocommit mode: transactions are opened explicitly around each batch.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
        (self._held_count,) = self._db.execute("SELECT count(*) FROM held").fetchone()

    def _select(self, columns: str, table: str, event_ids: Collection[str]) -> Iterator[Any]:
        """Rows of `table` whose event id is one of `event_ids`."""
        ids = list(event_ids)
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(
                f"SELECT {columns} FROM {table} WHERE event_id IN ({marks})", chunk
            )

    def lookup(self, event_ids: Collection[str]) -> dict[str, IndexEntry]:
        rows = self._select(
            "event_id, entity_id, event_time_ms, seen_at_ms, labelled, digest, label",
            "events",
            event_ids,
        )
        return {
            row[0]: IndexEntry(row[0], row[1], row[2], row[3], bool(row[4]), _bytes(row[5]), row[6])
            for row in rows
        }

    def record(
        self,
        observations: Sequence[IndexEntry],
        labelled: Mapping[str, int],
        *,
        hold: Sequence[HeldLabel] = (),
        release: Sequence[str] = (),
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if observations:
                # An IndexEntry is a tuple in the column order of _UPSERT.
                db.executemany(_UPSERT, observations)
            if labelled:
                db.executemany(
                    "UPDATE events SET labelled = 1, label = ? WHERE event_id = ?",
                    [(label, event_id) for event_id, label in labelled.items()],
                )
            if hold:
                db.executemany(
                    "INSERT OR IGNORE INTO held (event_id, label, held_at_ms, payload, origin) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (h.event_id, h.label, h.held_at_ms, h.payload, _origin_text(h.origin))
                        for h in hold
                    ],
                )
            if release:
                db.executemany(
                    "DELETE FROM held WHERE event_id = ?", [(event_id,) for event_id in release]
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if hold or release:
            (self._held_count,) = db.execute("SELECT count(*) FROM held").fetchone()

    def held(self, event_ids: Collection[str]) -> dict[str, HeldLabel]:
        rows = self._select("event_id, label, held_at_ms, payload, origin", "held", event_ids)
        return {row[0]: _held_label(row) for row in rows}

    def held_count(self) -> int:
        return int(self._held_count)

    def held_before(self, held_before_ms: int, limit: int) -> list[HeldLabel]:
        rows = self._db.execute(
            "SELECT event_id, label, held_at_ms, payload, origin FROM held "
            "WHERE held_at_ms < ? ORDER BY held_at_ms LIMIT ?",
            (held_before_ms, limit),
        )
        return [_held_label(row) for row in rows]

    def use_broker(self, cluster_id: str, now_ms: int) -> int:
        """Publish to the broker named `cluster_id` from now on; return the time
        (ms) from which entries describe events that broker holds.

        0 for the first broker the index meets (and for a broker that names no
        cluster): it holds everything recorded so far. `now_ms` when the broker
        differs from the one before, which the index then remembers.
        """
        row = self._db.execute("SELECT cluster_id, since_ms FROM broker WHERE id = 1").fetchone()
        if not cluster_id:
            return 0 if row is None else int(row[1])
        if row is not None and row[0] == cluster_id:
            return int(row[1])
        since_ms = 0 if row is None else now_ms
        self._db.execute(
            "INSERT OR REPLACE INTO broker (id, cluster_id, since_ms) VALUES (1, ?, ?)",
            (cluster_id, since_ms),
        )
        return since_ms

    def prune(self, limit: int = 10_000) -> int:
        """Forget up to `limit` rows older than the retention; return how many went.

        Bounded so that a large backlog is deleted in short steps the caller
        can interleave with ingestion.
        """
        cutoff = int(self._clock() * 1000) - self._retention_ms
        deleted: int = self._db.execute(
            "DELETE FROM events WHERE event_id IN "
            "(SELECT event_id FROM events WHERE seen_at_ms < ? LIMIT ?)",
            (cutoff, limit),
        ).rowcount
        return deleted

    def count(self) -> int:
        (rows,) = self._db.execute("SELECT count(*) FROM events").fetchone()
        return int(rows)

    def close(self) -> None:
        self._db.close()


def _bytes(value: bytes | None) -> bytes | None:
    return None if value is None else bytes(value)


def _origin_text(origin: Origin | None) -> str | None:
    return None if origin is None else json.dumps(list(origin))


def _held_label(row: tuple[Any, ...]) -> HeldLabel:
    event_id, label, held_at_ms, payload, origin = row
    where = None if origin is None else tuple(json.loads(origin))
    return HeldLabel(event_id, label, held_at_ms, bytes(payload), where)
