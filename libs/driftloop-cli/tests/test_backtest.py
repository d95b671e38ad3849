"""`driftloop backtest` on a stream whose concept changes at a known event.

The stream is river's `synth.Agrawal` loans: classification function 0 (age
bands) before the change, function 2 (age and salary) after, written as raw
`events.raw` observations of 25 customers, one a second, labels inline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from driftloop_cli.main import app
from typer.testing import CliRunner

FEATURESET = """\
name: loans
entity: customer_id
timestamp: ts
label: approved
fields:
  salary: {type: float, min: 0}
  age: {type: int, min: 0, max: 120}
  loan: {type: float, min: 0}
  elevel: {type: category, values: ["0", "1", "2", "3", "4"]}
aggregations:
  - {name: loan_count_1h, field: loan, fn: count, window: 1h}
model:
  task: binary_classification
  features: [salary, age, loan, elevel, loan_count_1h]
"""

START_MS = 1_763_800_000_000


def write_featureset(folder: Path) -> Path:
    path = folder / "loans.yaml"
    path.write_text(FEATURESET)
    return path


def agrawal_lines(events: int, change_at: int, seed: int = 1) -> list[str]:
    from river.datasets import synth

    before = synth.Agrawal(classification_function=0, seed=seed)
    after = synth.Agrawal(classification_function=2, seed=seed + 1)
    lines = []
    for i, (x, y) in enumerate([*before.take(change_at), *after.take(events - change_at)]):
        lines.append(
            json.dumps(
                {
                    "event_id": f"loan-{i:06d}",
                    "customer_id": f"c{i % 25:02d}",
                    "ts": START_MS + i * 1000,
                    "salary": round(float(x["salary"]), 2),
                    "age": int(x["age"]),
                    "loan": round(float(x["loan"]), 2),
                    "elevel": str(x["elevel"]),
                    "approved": int(y),
                }
            )
        )
    return lines


def write_stream(folder: Path, events: int = 3000, change_at: int = 1500) -> Path:
    path = folder / "loans.jsonl"
    path.write_text("\n".join(agrawal_lines(events, change_at)) + "\n")
    return path


EVENTS = 2400
CHANGE_AT = 1200


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("backtest")
    featureset = write_featureset(folder)
    events = write_stream(folder, EVENTS, CHANGE_AT)
    out = folder / "report"
    with pytest.MonkeyPatch.context() as patch:
        # The service's defaults: its cooldown (120 s, 12 000 events at 100/s)
        # follows a drift's request, not the bootstrap, so the change is retrained on.
        patch.delenv("DRIFTLOOP_DRIFT_COOLDOWN_S", raising=False)
        result = CliRunner().invoke(
            app,
            [
                "backtest",
                str(events),
                "--featureset",
                str(featureset),
                "--change-at",
                str(CHANGE_AT),
                "--out",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"report.json", "accuracy.png", "summary.md"}
    assert "river ARF" in (out / "summary.md").read_text()
    data: dict = json.loads((out / "report.json").read_text())
    return data


def test_the_change_is_detected_and_the_loop_retrains(report: dict) -> None:
    assert report["drift"]["detected_event"] >= CHANGE_AT
    assert report["false_alarms"] == 0
    assert report["drift_retrains"] >= 1
    versions = report["versions"]
    assert [v["trigger"] for v in versions][:2] == ["bootstrap", "drift"]
    retrained = [v for v in versions if v["trigger"] == "drift" and v["predictions"]]
    assert retrained and retrained[-1]["serving_from_event"] > CHANGE_AT
    assert retrained[-1]["accuracy"] > 0.8


def test_accuracy_is_reported_by_version_and_over_time(report: dict) -> None:
    predictions = report["predictions"]
    assert predictions["answered"] + predictions["no_model_yet"] == EVENTS
    assert sum(predictions["by_version"].values()) == predictions["answered"]
    assert all(v["accuracy"] is not None for v in report["versions"] if v["predictions"])
    assert report["accuracy"]["series"]


def test_river_runs_on_the_same_events(report: dict) -> None:
    reference = report["reference"]
    assert set(reference["overall"]) == {"driftloop", "arf", "hat", "lr"}
    assert all(0.5 < value <= 1.0 for value in reference["overall"].values())
    windows = reference["windows"]
    assert windows[0]["from_event"] == 0 and windows[-1]["to_event"] == EVENTS - 1
    assert "majority class" in reference["unanswered"]
    # Just after the change every model is wrong about half the time.
    after = next(w for w in windows if w["from_event"] == CHANGE_AT)
    assert after["arf"] < 0.7 and after["driftloop"] < 0.7


def test_a_bad_line_names_the_line_and_the_field(tmp_path: Path) -> None:
    featureset = write_featureset(tmp_path)
    lines = agrawal_lines(5, 5)
    broken = json.loads(lines[3])
    broken["age"] = "old"
    lines[3] = json.dumps(broken)
    events = tmp_path / "bad.jsonl"
    events.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        app, ["backtest", str(events), "-f", str(featureset), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "line 4" in result.output and "'age'" in result.output
    assert not (tmp_path / "r").exists()


def test_a_line_that_is_not_json_is_refused(tmp_path: Path) -> None:
    featureset = write_featureset(tmp_path)
    events = tmp_path / "bad.jsonl"
    events.write_text(agrawal_lines(1, 1)[0] + "\n{not json\n")
    result = CliRunner().invoke(app, ["backtest", str(events), "-f", str(featureset)])
    assert result.exit_code == 2
    assert "line 2" in result.output


def test_stack_mode_without_a_running_stack_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / "home"))
    featureset = write_featureset(tmp_path)
    events = tmp_path / "loans.jsonl"
    events.write_text("\n".join(agrawal_lines(10, 5)) + "\n")
    result = CliRunner().invoke(
        app, ["backtest", str(events), "-f", str(featureset), "--mode", "stack"]
    )
    assert result.exit_code == 2
    assert "driftloop up" in result.output
