"""`driftloop traces` over spans written by the real OTLP-JSON exporter of two services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from driftloop_cli.main import app
from driftloop_core.telemetry.otlp_file import OtlpJsonLinesSpanExporter, traces_file
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from typer.testing import CliRunner


def tracer_for(service: str, traces_dir: Path) -> trace.Tracer:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OtlpJsonLinesSpanExporter(traces_file(traces_dir, service)))
    )
    return provider.get_tracer("test")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    traces_dir = tmp_path / "traces"
    drift, trainer = tracer_for("drift", traces_dir), tracer_for("trainer", traces_dir)
    with drift.start_as_current_span("unrelated work"):
        pass
    with drift.start_as_current_span("send drift.detected", kind=trace.SpanKind.PRODUCER) as sent:
        pass
    # The trainer consumes in a batch: a new trace linked to the message's.
    link = trace.Link(sent.get_span_context())
    with (
        trainer.start_as_current_span("process training.requested", links=[link]),
        trainer.start_as_current_span("train"),
    ):
        pass
    return tmp_path


def test_last_loop_joins_linked_traces_into_one_tree(home: Path) -> None:
    result = CliRunner().invoke(app, ["traces", "--last-loop", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    spans = {span["name"]: span for span in report["spans"]}
    assert set(spans) == {"send drift.detected", "process training.requested", "train"}
    assert spans["send drift.detected"]["service"] == "drift"
    assert (
        spans["process training.requested"]["parent_id"]
        == (spans["send drift.detected"]["span_id"])
    )
    assert spans["train"]["parent_id"] == spans["process training.requested"]["span_id"]
    assert all(span["duration_ms"] >= 0 for span in report["spans"])
    assert report["trace_id"] == spans["send drift.detected"]["trace_id"]


def test_a_trace_renders_as_a_tree_with_services(home: Path) -> None:
    listed = CliRunner().invoke(app, ["traces", "--json"])
    assert len(json.loads(listed.output)["trace_ids"]) == 3
    result = CliRunner().invoke(app, ["traces", "--last-loop"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "drift" in lines[1] and "send drift.detected" in lines[1]
    assert "trainer" in lines[2] and "process training.requested" in lines[2]


def test_unknown_trace_is_an_error(home: Path) -> None:
    result = CliRunner().invoke(app, ["traces", "0" * 32])
    assert result.exit_code == 1
    assert "not found" in result.output


def test_another_state_folder_is_read_with_home(
    home: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The traces live in `home` (as the demo's live in .driftloop/demo); the
    # environment now points elsewhere, as a user's shell does.
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path_factory.mktemp("elsewhere")))
    assert CliRunner().invoke(app, ["traces", "--last-loop"]).exit_code == 1

    result = CliRunner().invoke(app, ["traces", "--home", str(home), "--last-loop", "--json"])

    assert result.exit_code == 0, result.output
    assert {span["name"] for span in json.loads(result.output)["spans"]} >= {"train"}
