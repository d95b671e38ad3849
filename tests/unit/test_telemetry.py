"""Spans land in the local OTLP-JSON store and logs carry the trace they were made in."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from driftloop_core.logging import get_logger
from driftloop_core.settings import Settings, load_settings
from driftloop_core.telemetry import init_telemetry, read_spans
from opentelemetry import trace

# Each test starts telemetry with settings of its own.
pytestmark = pytest.mark.usefixtures("fresh_telemetry")

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    return load_settings(service_name="unit-svc", service_version="1.2.3")


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_parent_and_child_spans_round_trip_through_the_local_store(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    telemetry = init_telemetry(settings)
    tracer = telemetry.get_tracer("tests")
    log = get_logger("tests")

    with tracer.start_as_current_span("parent") as parent:
        with tracer.start_as_current_span(
            "child", kind=trace.SpanKind.CLIENT, attributes={"model": "payments", "rows": 3}
        ) as child:
            log.info("inside_child", answer=42)
        log.info("inside_parent")
    log.info("outside")
    telemetry.shutdown()

    trace_id = trace.format_trace_id(parent.get_span_context().trace_id)
    parent_id = trace.format_span_id(parent.get_span_context().span_id)
    child_id = trace.format_span_id(child.get_span_context().span_id)

    spans = {span["name"]: span for span in read_spans(settings.traces_dir)}
    assert set(spans) == {"parent", "child"}
    assert spans["parent"]["trace_id"] == spans["child"]["trace_id"] == trace_id
    assert spans["parent"]["span_id"] == parent_id
    assert spans["parent"]["parent_id"] is None
    assert spans["child"]["parent_id"] == parent_id
    assert spans["child"]["service"] == "unit-svc"
    assert spans["child"]["kind"] == "CLIENT"
    assert spans["child"]["attributes"] == {"model": "payments", "rows": 3}
    assert spans["child"]["start_ns"] <= spans["child"]["end_ns"]
    assert spans["parent"]["start_ns"] <= spans["child"]["start_ns"]

    # The file is OTLP/JSON: camelCase, hex ids, integer enums.
    lines = (settings.traces_dir / "unit-svc.jsonl").read_text().splitlines()
    assert lines
    for line in lines:
        request = json.loads(line)
        resource = request["resourceSpans"][0]["resource"]
        attributes = {a["key"]: a["value"] for a in resource["attributes"]}
        assert attributes["service.name"] == {"stringValue": "unit-svc"}
        assert attributes["service.version"] == {"stringValue": "1.2.3"}
        assert attributes["deployment.environment"] == {"stringValue": "dev"}
        for scope_spans in request["resourceSpans"][0]["scopeSpans"]:
            for span in scope_spans["spans"]:
                assert HEX32.match(span["traceId"])
                assert HEX16.match(span["spanId"])
                assert "parentSpanId" not in span or HEX16.match(span["parentSpanId"])
                assert isinstance(span["kind"], int)
                assert "startTimeUnixNano" in span

    events = {event["event"]: event for event in _json_lines(capsys.readouterr().err)}
    inside = events["inside_child"]
    assert inside["trace_id"] == trace_id
    assert inside["span_id"] == child_id
    assert inside["service"] == "unit-svc"
    assert inside["level"] == "info"
    assert inside["answer"] == 42
    assert str(inside["timestamp"]).endswith("Z")
    assert events["inside_parent"]["span_id"] == parent_id
    assert "trace_id" not in events["outside"]


def test_init_is_idempotent_and_a_library_tracer_taken_at_import_follows_the_new_home(
    settings: Settings, tmp_path: Path, fresh_telemetry: Callable[[], None]
) -> None:
    # A library tracer taken at import time, before telemetry is set up.
    library_tracer = trace.get_tracer("some.library")
    first = init_telemetry(settings)
    assert init_telemetry(settings) is first

    # A process of its own, with another home.
    fresh_telemetry()
    other = load_settings(home=tmp_path / "other", service_name="other-svc")
    second = init_telemetry(other)
    assert second is not first
    with library_tracer.start_as_current_span("library-work"):
        pass
    second.shutdown()
    first.shutdown()

    assert [span["name"] for span in read_spans(other.traces_dir)] == ["library-work"]
    assert read_spans(other.traces_dir)[0]["service"] == "other-svc"
    assert read_spans(settings.traces_dir) == []


def test_stdlib_records_come_out_as_json_with_the_trace(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    telemetry = init_telemetry(settings)
    with telemetry.get_tracer().start_as_current_span("work") as span:
        logging.getLogger("aiokafka.consumer").warning("rebalancing %s", "group-a")
    telemetry.shutdown()

    (record,) = [
        event
        for event in _json_lines(capsys.readouterr().err)
        if event.get("logger") == "aiokafka.consumer"
    ]
    assert record["event"] == "rebalancing group-a"
    assert record["level"] == "warning"
    assert record["service"] == "unit-svc"
    assert record["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)


def test_read_spans_skips_a_torn_last_line(settings: Settings) -> None:
    telemetry = init_telemetry(settings)
    with telemetry.get_tracer().start_as_current_span("whole"):
        pass
    telemetry.shutdown()
    path = settings.traces_dir / "unit-svc.jsonl"
    with path.open("a") as file:
        file.write('{"resourceSpans": [{"resour')

    assert [span["name"] for span in read_spans(settings.traces_dir)] == ["whole"]
    assert read_spans(settings.traces_dir / "missing") == []


def test_a_second_init_with_other_settings_keeps_the_first_providers(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = init_telemetry(settings)
    other = load_settings(home=tmp_path / "other", service_name="other-svc")

    assert init_telemetry(other) is first
    with trace.get_tracer("some.library").start_as_current_span("library-work"):
        pass
    first.shutdown()

    assert [span["name"] for span in read_spans(settings.traces_dir)] == ["library-work"]
    assert read_spans(other.traces_dir) == []
    events = [event["event"] for event in _json_lines(capsys.readouterr().err)]
    assert "telemetry_already_started" in events


def test_per_event_traces_are_sampled_and_the_loop_is_always_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a ratio of 0, a request's trace (a SERVER or CONSUMER root and all under
    it) is dropped; a trace the service starts itself (a detection) is kept, and
    a consumer of a record carrying it follows it."""
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("DRIFTLOOP_TRACE_SAMPLE_RATIO", "0")
    settings = load_settings(service_name="sampled-svc")
    telemetry = init_telemetry(settings)
    tracer = telemetry.get_tracer("tests")

    for i in range(20):
        with (
            tracer.start_as_current_span(f"Predict {i}", kind=trace.SpanKind.SERVER),
            tracer.start_as_current_span("features.lookup"),
        ):
            pass
        with tracer.start_as_current_span("process events.raw", kind=trace.SpanKind.CONSUMER):
            pass
    with (
        tracer.start_as_current_span("drift.detected") as detected,
        tracer.start_as_current_span("send drift.detected", kind=trace.SpanKind.PRODUCER),
    ):
        pass
    carried = trace.set_span_in_context(trace.NonRecordingSpan(detected.get_span_context()))
    with tracer.start_as_current_span(
        "process training.requested", context=carried, kind=trace.SpanKind.CONSUMER
    ):
        pass
    telemetry.shutdown()

    names = {span["name"] for span in read_spans(settings.traces_dir)}
    assert names == {"drift.detected", "send drift.detected", "process training.requested"}


def test_the_default_keeps_every_trace(settings: Settings) -> None:
    telemetry = init_telemetry(settings)
    tracer = telemetry.get_tracer("tests")
    for i in range(5):
        with tracer.start_as_current_span(f"Predict {i}", kind=trace.SpanKind.SERVER):
            pass
    telemetry.shutdown()
    assert len(read_spans(settings.traces_dir)) == 5
