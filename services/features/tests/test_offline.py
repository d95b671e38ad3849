"""The offline log: what the sink writes from `features.offline`, and the training
sets the store builds from it (labels joined in any order, duplicates once,
windows, a digest that names the content)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer
from driftloop.v1 import common_pb2, events_pb2, features_pb2
from driftloop_core.featureset import FeatureSet, load_featureset
from driftloop_core.kafka import (
    EventHeaders,
    PoisonMessage,
    Publisher,
    Record,
    TopicSpec,
    ensure_topics,
)
from driftloop_core.settings import Settings, load_settings
from driftloop_features.adapters.duckdb_reader import OfflineStore
from driftloop_features.adapters.parquet_log import write_parquet_atomic
from driftloop_features.entrypoints.grpc import training_set_response
from driftloop_features.entrypoints.offline_sink import OfflineSink, SinkProgress
from driftloop_features.offline import (
    HAS_LABEL_HEADER,
    LABEL_TYPE,
    ROW_TYPE,
    InvalidWindowError,
    UnknownModelError,
    decode_record,
    labels_schema,
    offline_dir,
    offline_label,
    offline_row,
    rows_schema,
)

FEATURESET_YAML = """
name: {name}
entity: customer_id
timestamp: ts
label: is_fraud
fields:
  amount: {{type: float, min: 0}}
  channel: {{type: category, values: [web, pos, atm]}}
  hour: {{type: int, min: 0, max: 23}}
  card_present: {{type: bool}}
  note: {{type: string, required: false}}
aggregations:
  - {{name: amount_mean_1h, field: amount, fn: mean, window: 1h}}
  - {{name: txn_count_10m, field: amount, fn: count, window: 10m}}
  - {{name: last_channel, field: channel, fn: last, window: 1h}}
model:
  features: [amount, channel, hour, card_present, amount_mean_1h, txn_count_10m, last_channel]
"""
FEATURES = (
    "amount",
    "channel",
    "hour",
    "card_present",
    "amount_mean_1h",
    "txn_count_10m",
    "last_channel",
)
T0 = 1_763_800_000_000  # epoch ms


def write_featureset(directory: Path, name: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(FEATURESET_YAML.format(name=name), encoding="utf-8")
    return path


@pytest.fixture
def featureset_file(tmp_path: Path) -> Path:
    return write_featureset(tmp_path, "payments")


@pytest.fixture
def featureset(featureset_file: Path) -> FeatureSet:
    return load_featureset(featureset_file)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def local_settings(home: Path) -> Settings:
    return load_settings(home=home, service_name="test")


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def features_of(i: int) -> dict[str, Any]:
    return {
        "amount": 10.0 + i,
        "channel": ("web", "pos", "atm")[i % 3],
        "hour": i % 24,
        "card_present": i % 2 == 0,
        "amount_mean_1h": 5.0 + i / 2,
        "txn_count_10m": i,
        "last_channel": "web" if i else None,
    }


def log_row(
    event_id: str,
    ms: int,
    i: int,
    *,
    label: int | None = None,
    offset: int = 0,
    partition: int = 0,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "entity_id": f"c{i % 3}",
        "event_time": ms,
        **features_of(i),
        "has_label": label is not None,
        "label": label,
        "source_partition": partition,
        "source_offset": offset,
        "source_timestamp": T0 + offset,
    }


def log_label(
    event_id: str, label: int, *, offset: int, ingested_ms: int | None = None
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "entity_id": "c0",
        "label": label,
        "ingested_at": ingested_ms,
        "event_time": None,
        "feature_set": "payments",
        "source_partition": 0,
        "source_offset": offset,
        "source_timestamp": T0 + offset,
    }


def write_rows(settings: Settings, fs: FeatureSet, name: str, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=rows_schema(fs))
    write_parquet_atomic(table, offline_dir(settings, fs) / "rows" / name)


def write_labels(
    settings: Settings, fs: FeatureSet, name: str, labels: list[dict[str, Any]]
) -> None:
    table = pa.Table.from_pylist(labels, schema=labels_schema())
    write_parquet_atomic(table, offline_dir(settings, fs) / "labels" / name)


def labels_by_event(rows: Iterable[features_pb2.TrainingRow]) -> dict[str, int]:
    return {row.event_id: row.label for row in rows}


def time_range(start_ms: int | None, end_ms: int | None) -> common_pb2.DataWindow:
    window = common_pb2.DataWindow()
    window.time_range.SetInParent()
    if start_ms is not None:
        window.time_range.start.FromMilliseconds(start_ms)
    if end_ms is not None:
        window.time_range.end.FromMilliseconds(end_ms)
    return window


# ------------------------------------------------------------- store over hand-written files


def test_an_empty_log_gives_an_empty_dataset(
    local_settings: Settings, featureset: FeatureSet
) -> None:
    built = OfflineStore(local_settings, featureset).training_set(include_rows=True)

    assert built.row_count == 0 and built.rows == ()
    assert built.first_event_time is None and built.last_event_time is None
    table = pq.read_table(built.path)
    assert table.num_rows == 0
    assert table.column_names == ["event_id", "entity_id", "event_time", *FEATURES, "label"]
    response = training_set_response(built)
    assert response.dataset.row_count == 0
    assert not response.dataset.HasField("time_range")
    assert list(response.feature_names) == list(FEATURES)


def test_labels_join_whichever_came_first_and_duplicates_count_once(
    local_settings: Settings, featureset: FeatureSet
) -> None:
    s, fs = local_settings, featureset
    # A late label written before its row, one after it, a correction, a row
    # that carried its own label, a row never labelled, and a replayed file.
    write_labels(s, fs, "a.parquet", [log_label("e1", 1, offset=0, ingested_ms=T0)])
    first_rows = [
        log_row("e1", T0 + 1000, 1, offset=1),
        log_row("e2", T0 + 2000, 2, offset=2),
        log_row("e3", T0 + 3000, 3, label=1, offset=3),
        log_row("e4", T0 + 4000, 4, offset=4),
    ]
    write_rows(s, fs, "b.parquet", first_rows)
    write_rows(s, fs, "b-replayed.parquet", first_rows[1:])
    write_labels(
        s,
        fs,
        "c.parquet",
        [
            log_label("e2", 1, offset=5, ingested_ms=T0 + 5),
            log_label("e2", 0, offset=6, ingested_ms=T0 + 6),  # the correction wins
            log_label("e2", 0, offset=6, ingested_ms=T0 + 6),  # redelivered
            # Ingestion publishes a late label for a row that carried its own
            # only as an explicit correction: it replaces the row's label.
            log_label("e3", 0, offset=7, ingested_ms=T0 + 7),
        ],
    )

    built = OfflineStore(s, fs).training_set(include_rows=True)

    assert built.rows is not None
    assert [row.event_id for row in built.rows] == ["e1", "e2", "e3"]
    assert labels_by_event(built.rows) == {"e1": 1, "e2": 0, "e3": 0}
    assert built.row_count == 3
    assert (built.first_event_time, built.last_event_time) == (at(T0 + 1000), at(T0 + 3000))
    assert built.feature_names == FEATURES


def test_rows_come_in_event_time_order_with_typed_features(
    local_settings: Settings, featureset: FeatureSet
) -> None:
    s, fs = local_settings, featureset
    write_rows(
        s,
        fs,
        "x.parquet",
        [
            log_row("b", T0 + 10, 1, label=0, offset=0),
            log_row("a", T0 + 10, 2, label=1, offset=1),
            log_row("c", T0, 0, label=0, offset=2),
        ],
    )

    built = OfflineStore(s, fs).training_set(include_rows=True)

    assert built.rows is not None
    assert [row.event_id for row in built.rows] == ["c", "a", "b"]
    first = built.rows[0]
    assert first.event_time.ToMilliseconds() == T0
    assert first.features["amount"].float_value == 10.0
    assert first.features["channel"].string_value == "web"
    assert first.features["hour"].int_value == 0
    assert first.features["card_present"].int_value == 1
    assert first.features["txn_count_10m"].int_value == 0
    assert "last_channel" not in first.features  # a missing value stays absent
    table = pq.read_table(built.path)
    assert table.schema.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("amount_mean_1h").type == pa.float64()
    assert table.schema.field("txn_count_10m").type == pa.int64()
    assert table.schema.field("card_present").type == pa.bool_()
    assert table.schema.field("last_channel").type == pa.string()
    assert table.column("event_id").to_pylist() == ["c", "a", "b"]
    assert table.column("label").to_pylist() == [0, 1, 0]


def test_windows_select_by_event_time_or_the_last_n(
    local_settings: Settings, featureset: FeatureSet
) -> None:
    s, fs = local_settings, featureset
    rows = [log_row(f"e{i}", T0 + i * 1000, i, label=i % 2, offset=i) for i in range(10)]
    rows.append(log_row("unlabelled", T0 + 9500, 3, offset=10))
    write_rows(s, fs, "x.parquet", rows)
    store = OfflineStore(s, fs)

    def selected(window: common_pb2.DataWindow) -> list[str]:
        built = store.training_set(window, include_rows=True)
        assert built.rows is not None
        return [row.event_id for row in built.rows]

    assert selected(time_range(T0 + 2000, T0 + 5000)) == ["e2", "e3", "e4"]
    assert selected(time_range(T0 + 7000, None)) == ["e7", "e8", "e9"]
    assert selected(time_range(None, T0 + 1000)) == ["e0"]
    assert selected(time_range(T0 + 1500, T0 + 1999)) == []
    assert selected(common_pb2.DataWindow(last_n=3)) == ["e7", "e8", "e9"]
    assert selected(common_pb2.DataWindow(last_n=50)) == [f"e{i}" for i in range(10)]
    assert selected(common_pb2.DataWindow()) == [f"e{i}" for i in range(10)]

    built = store.training_set(time_range(T0 + 2000, T0 + 5000))
    dataset = training_set_response(built).dataset
    assert dataset.time_range.start.ToMilliseconds() == T0 + 2000
    assert dataset.time_range.end.ToMilliseconds() == T0 + 4001  # just after the last row
    assert dataset.requested == time_range(T0 + 2000, T0 + 5000)

    with pytest.raises(InvalidWindowError):
        store.training_set(common_pb2.DataWindow(last_n=0))
    with pytest.raises(InvalidWindowError):
        store.training_set(time_range(T0 + 5000, T0 + 5000))
    with pytest.raises(UnknownModelError):
        store.training_set(model="other")


def test_digest_names_the_content_across_builds_and_processes(
    local_settings: Settings, featureset: FeatureSet, featureset_file: Path, home: Path
) -> None:
    s, fs = local_settings, featureset
    write_rows(s, fs, "x.parquet", [log_row(f"e{i}", T0 + i, i, offset=i) for i in range(300)])
    write_labels(
        s, fs, "y.parquet", [log_label(f"e{i}", i % 2, offset=1000 + i) for i in range(300)]
    )
    store = OfflineStore(s, fs)

    first = store.training_set(include_rows=True)
    second = store.training_set()
    script = textwrap.dedent(
        f"""
        from driftloop_core.featureset import load_featureset
        from driftloop_core.settings import load_settings
        from driftloop_features.adapters.duckdb_reader import OfflineStore
        store = OfflineStore(
            load_settings(home={str(home)!r}), load_featureset({str(featureset_file)!r})
        )
        print(store.training_set().sha256)
        """
    )
    other_process = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout.splitlines()[-1]  # after the build's own log line

    assert first.sha256 == second.sha256 == other_process
    assert first.path == second.path
    assert first.path.name == f"payments-{first.sha256[:12]}.parquet"
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256
    # The file reads back as the rows that were returned.
    assert first.rows is not None
    table = pq.read_table(first.path)
    assert table.num_rows == 300
    assert table.column("event_id").to_pylist() == [row.event_id for row in first.rows]
    assert table.column("label").to_pylist() == [row.label for row in first.rows]
    assert table.column("amount").to_pylist() == [
        row.features["amount"].float_value for row in first.rows
    ]

    write_labels(s, fs, "z.parquet", [log_label("e7", 0, offset=5000, ingested_ms=T0 + 9)])
    changed = store.training_set()
    assert changed.sha256 != first.sha256 and changed.path != first.path
    assert first.path.exists()  # an earlier dataset version stays where lineage points


async def test_concurrent_builds_from_threads_agree(
    local_settings: Settings, featureset: FeatureSet
) -> None:
    write_rows(
        local_settings,
        featureset,
        "x.parquet",
        [log_row(f"e{i}", T0 + i, i, label=i % 2, offset=i) for i in range(200)],
    )
    store = OfflineStore(local_settings, featureset)

    built = await asyncio.gather(*(asyncio.to_thread(store.training_set) for _ in range(6)))

    assert {b.sha256 for b in built} == {built[0].sha256}
    assert {b.row_count for b in built} == {200}
    assert hashlib.sha256(built[0].path.read_bytes()).hexdigest() == built[0].sha256
    leftovers = [p.name for p in built[0].path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_files_written_before_a_feature_existed_read_it_as_missing(
    local_settings: Settings, featureset: FeatureSet
) -> None:
    old = rows_schema(featureset).remove(rows_schema(featureset).get_field_index("last_channel"))
    row = log_row("old", T0, 1, label=1)
    del row["last_channel"]
    write_parquet_atomic(
        pa.Table.from_pylist([row], schema=old),
        offline_dir(local_settings, featureset) / "rows" / "old.parquet",
    )
    write_rows(local_settings, featureset, "new.parquet", [log_row("new", T0 + 1, 2, label=0)])

    built = OfflineStore(local_settings, featureset).training_set(include_rows=True)

    assert built.rows is not None
    assert [row.event_id for row in built.rows] == ["old", "new"]
    assert "last_channel" not in built.rows[0].features
    assert built.rows[1].features["last_channel"].string_value == "web"


# ----------------------------------------------------------------------- decoding


def a_record(value: bytes, ce_type: str, **extra: str) -> Record:
    return Record(
        topic="features.offline",
        partition=0,
        offset=7,
        key=b"c1",
        value=value,
        headers=EventHeaders(id="x", type=ce_type, source="/t", extra=extra),
        raw_headers=(),
        timestamp_ms=T0,
    )


def a_row(**features: common_pb2.FeatureValue) -> features_pb2.TrainingRow:
    row = features_pb2.TrainingRow(event_id="e1", entity_id="c1", label=1)
    row.event_time.FromMilliseconds(T0)
    for name, value in features.items():
        row.features[name].CopyFrom(value)
    return row


def test_a_row_decodes_to_typed_columns(featureset: FeatureSet) -> None:
    row = a_row(
        amount=common_pb2.FeatureValue(int_value=12),
        channel=common_pb2.FeatureValue(string_value="pos"),
        card_present=common_pb2.FeatureValue(int_value=0),
        txn_count_10m=common_pb2.FeatureValue(int_value=3),
        note=common_pb2.FeatureValue(string_value="not a model feature"),
    )
    kind, columns = decode_record(
        a_record(row.SerializeToString(), ROW_TYPE, **{HAS_LABEL_HEADER: "1"}), featureset
    )
    assert kind == "row"
    assert columns["amount"] == 12.0 and isinstance(columns["amount"], float)
    assert (columns["channel"], columns["card_present"], columns["txn_count_10m"]) == (
        "pos",
        False,
        3,
    )
    assert "note" not in columns and "hour" not in columns
    assert (columns["has_label"], columns["label"], columns["event_time"]) == (True, 1, T0)
    assert (columns["source_partition"], columns["source_offset"]) == (0, 7)

    _, unlabelled = decode_record(
        a_record(row.SerializeToString(), ROW_TYPE, **{HAS_LABEL_HEADER: "0"}), featureset
    )
    assert (unlabelled["has_label"], unlabelled["label"]) == (False, None)
    # Without the header, only a non-zero label can have been set on purpose.
    _, no_header = decode_record(a_record(row.SerializeToString(), ROW_TYPE), featureset)
    assert (no_header["has_label"], no_header["label"]) == (True, 1)
    row.label = 0
    _, no_header = decode_record(a_record(row.SerializeToString(), ROW_TYPE), featureset)
    assert (no_header["has_label"], no_header["label"]) == (False, None)


@pytest.mark.parametrize(
    ("value", "ce_type", "field"),
    [
        (b"\x0a\xff", ROW_TYPE, "value"),
        (b"\x0a\xff", LABEL_TYPE, "value"),
        (a_row().SerializeToString(), "driftloop.something.else.v1", "ce_type"),
        (features_pb2.TrainingRow(entity_id="c1").SerializeToString(), ROW_TYPE, "event_id"),
        (
            a_row(hour=common_pb2.FeatureValue(float_value=3.5)).SerializeToString(),
            ROW_TYPE,
            "features.hour",
        ),
        (
            a_row(nope=common_pb2.FeatureValue(int_value=1)).SerializeToString(),
            ROW_TYPE,
            "features.nope",
        ),
        (events_pb2.Label(label=1).SerializeToString(), LABEL_TYPE, "event_id"),
        (
            events_pb2.Label(event_id="e1", feature_set="other").SerializeToString(),
            LABEL_TYPE,
            "feature_set",
        ),
    ],
)
def test_undecodable_records_are_poison_naming_the_field(
    featureset: FeatureSet, value: bytes, ce_type: str, field: str
) -> None:
    with pytest.raises(PoisonMessage) as raised:
        decode_record(a_record(value, ce_type), featureset)
    assert raised.value.field == field


# ------------------------------------------------------------------ on the real broker


async def publish_row(
    publisher: Publisher, topic: str, event_id: str, ms: int, i: int, label: int | None = None
) -> None:
    row = features_pb2.TrainingRow(
        event_id=event_id, entity_id=f"c{i % 3}", label=label if label is not None else 0
    )
    row.event_time.FromMilliseconds(ms)
    row.features["amount"].float_value = 10.0 + i
    row.features["channel"].string_value = "web"
    row.features["txn_count_10m"].int_value = i
    await publisher.publish_batch([offline_row(row, has_label=label is not None, topic=topic)])


async def publish_label(
    publisher: Publisher, topic: str, event_id: str, label: int, i: int, featureset: str
) -> None:
    message = events_pb2.Label(
        event_id=event_id, entity_id=f"c{i % 3}", label=label, feature_set=featureset
    )
    message.ingested_at.FromDatetime(datetime.now(UTC))
    await publisher.publish_batch([offline_label(message, topic=topic)])


async def run_sink(
    sink: OfflineSink, done: Callable[[SinkProgress], bool], timeout_s: float = 30
) -> SinkProgress:
    await sink.start()
    task = asyncio.create_task(sink.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not done(sink.progress):
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
    finally:
        sink.request_stop()
        await task
        await sink.stop()
    return sink.progress


def handled(count: int) -> Callable[[SinkProgress], bool]:
    def check(progress: SinkProgress) -> bool:
        total = progress.rows_written + progress.labels_written + progress.deadlettered
        return total >= count and progress.pending == 0

    return check


async def read_topic(settings: Settings, topic: str, count: int) -> list[Any]:
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await reader.start()
    got: list[Any] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    got.extend(records)
    finally:
        await reader.stop()
    return got


def fast_rejoin(settings: Settings) -> Settings:
    """The same broker with shorter group timeouts, so a member that replaces
    one that left joins in seconds."""
    kafka = settings.kafka.model_copy(
        update={
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
            "rebalance_timeout_ms": 3000,
        }
    )
    return settings.model_copy(update={"kafka": kafka})


@pytest.mark.integration
async def test_sink_logs_rows_and_labels_in_any_order_and_deadletters_poison(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    fs = load_featureset(write_featureset(tmp_path, f"pay_{unique}"))
    topic, dlq = f"features.offline.{unique}", f"deadletter.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(topic, 2), TopicSpec(dlq, 1)])

    async with Publisher(settings) as publisher:
        await publish_label(publisher, topic, "e1", 1, 1, fs.name)  # label before its row
        for i in range(1, 9):
            await publish_row(
                publisher, topic, f"e{i}", T0 + i * 1000, i, label=1 if i == 5 else None
            )
        poison = await publisher.publish(topic, b"\x0a\xff", key="c0", ce_type=ROW_TYPE)
        await publish_row(publisher, topic, "e2", T0 + 2000, 2)  # redelivered row
        await publish_label(publisher, topic, "e2", 0, 2, fs.name)  # labels after their rows
        await publish_label(publisher, topic, "e3", 1, 3, fs.name)
        await publish_label(publisher, topic, "e3", 1, 3, fs.name)  # redelivered label
        await publish_label(publisher, topic, "e8", 0, 8, fs.name)
        sink = OfflineSink(
            settings,
            fs,
            publisher,
            topic=topic,
            group_id=f"offline.{unique}",
            deadletter_topic=dlq,
            flush_records=4,
            flush_interval_s=0.3,
        )
        progress = await run_sink(sink, handled(15))

    assert (progress.rows_written, progress.labels_written, progress.deadlettered) == (9, 5, 1)
    assert progress.flushes >= 2
    built = OfflineStore(settings, fs).training_set(include_rows=True)
    assert built.rows is not None
    assert labels_by_event(built.rows) == {"e1": 1, "e2": 0, "e3": 1, "e5": 1, "e8": 0}
    assert [row.event_id for row in built.rows] == ["e1", "e2", "e3", "e5", "e8"]
    assert built.rows[0].features["amount"].float_value == 11.0
    assert built.rows[0].features["txn_count_10m"].int_value == 1
    table = pq.read_table(built.path)
    assert table.column("event_id").to_pylist() == ["e1", "e2", "e3", "e5", "e8"]
    assert table.column("label").to_pylist() == [1, 0, 1, 1, 0]

    [letter_record] = await read_topic(settings, dlq, 1)
    letter = events_pb2.DeadLetter.FromString(letter_record.value)  # type: ignore[attr-defined]
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        topic,
        poison.partition,
        poison.offset,
    )
    assert (letter.field, letter.rule) == ("value", "decode")


@pytest.mark.integration
async def test_a_restarted_sink_resumes_after_its_last_flush(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    settings = fast_rejoin(settings)
    fs = load_featureset(write_featureset(tmp_path, f"pay_{unique}"))
    topic, group = f"features.offline.{unique}", f"offline.{unique}"
    await ensure_topics(settings.kafka, [TopicSpec(topic, 2)])

    def sink(publisher: Publisher) -> OfflineSink:
        return OfflineSink(
            settings, fs, publisher, topic=topic, group_id=group, flush_interval_s=0.2
        )

    rows_dir = offline_dir(settings, fs) / "rows"
    async with Publisher(settings) as publisher:
        for i in range(6):
            await publish_row(publisher, topic, f"e{i}", T0 + i, i, label=i % 2)
        first = await run_sink(sink(publisher), handled(6))
        files_after_first = {path.name: path.stat().st_mtime_ns for path in rows_dir.iterdir()}
        before = OfflineStore(settings, fs).training_set()

        # The upstream replays some rows and moves on; the new member starts
        # where the first committed.
        for i in (4, 5, 6, 7):
            await publish_row(publisher, topic, f"e{i}", T0 + i, i, label=i % 2)
        second = await run_sink(sink(publisher), handled(4))

    assert first.rows_written == 6
    assert second.rows_written == 4  # nothing the first member flushed was read again
    files_after_second = {path.name: path.stat().st_mtime_ns for path in rows_dir.iterdir()}
    assert files_after_second.items() >= files_after_first.items()
    after = OfflineStore(settings, fs).training_set(include_rows=True)
    assert after.rows is not None
    assert [row.event_id for row in after.rows] == [f"e{i}" for i in range(8)]
    assert before.row_count == 6 and after.row_count == 8

    # A member of a new group replays the whole topic: every row and label is
    # logged again, and the training set does not change by one byte.
    async with Publisher(settings) as publisher:
        replay = OfflineSink(
            settings, fs, publisher, topic=topic, group_id=f"{group}.replay", flush_interval_s=0.2
        )
        replayed = await run_sink(replay, handled(10))
    assert replayed.rows_written == 10
    assert OfflineStore(settings, fs).training_set().sha256 == after.sha256
