"""A request that states how many labelled rows its window holds is trained on all
of them, however late the offline log catches up, or fails saying what was missing."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from driftloop.v1 import common_pb2, events_pb2
from driftloop_core.artifacts import ArtifactStore
from driftloop_core.featureset import FeatureSet
from driftloop_core.kafka import Stopped
from driftloop_trainer.config import TrainerSettings
from driftloop_trainer.handlers import TrainingRunner
from driftloop_trainer.ports import FileTrainingSets, NoChampion, TrainingSet
from driftloop_trainer.training import TrainingConfig, TrainingError
from driftloop_trainer.window import WindowWait

FAST = TrainingConfig(candidates=({"max_iter": 30, "max_leaf_nodes": 7}, {"max_iter": 15}))
WINDOW_START_MS = 1_763_800_000_000  # 2025-11-22T08:26:40Z, where the fixture's rows begin
QUICK_WAIT = WindowWait(timeout_s=10.0, first_delay_s=0.05, max_delay_s=0.2)


class LaggingOfflineLog:
    """The training set as the offline log holds it now: a Parquet file that a
    test rewrites as rows land; counts how often it was asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.asked = 0

    async def training_set(self, model: str, window: common_pb2.DataWindow) -> TrainingSet:
        self.asked += 1
        return await FileTrainingSets(self.path).training_set(model, window)


def holding_only(complete: Path, rows: int, path: Path) -> Path:
    """A log that so far holds the first `rows` rows of the complete training set
    (replaced whole, as the feature store writes a training set)."""
    partial = path.with_suffix(".partial")
    pq.write_table(pq.read_table(complete).slice(0, rows), partial)
    partial.replace(path)
    return path


def runner_over(
    source: LaggingOfflineLog, featureset: FeatureSet, tmp_path: Path, wait: WindowWait
) -> TrainingRunner:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    return TrainingRunner(featureset, source, NoChampion(), artifacts, FAST, wait)


def drift_request(expected: int) -> events_pb2.TrainingRequested:
    window = common_pb2.DataWindow()
    window.time_range.start.FromMilliseconds(WINDOW_START_MS)
    window.time_range.end.FromMilliseconds(WINDOW_START_MS + 600_000)
    return events_pb2.TrainingRequested(
        request_id="r-window",
        model="payments",
        reason="test",
        trigger=events_pb2.TRAINING_TRIGGER_DRIFT,
        window=window,
        expected_labelled_rows=expected,
    )


async def test_a_window_the_log_catches_up_on_is_trained_on_every_row(
    tmp_path: Path, training_set: Path, featureset: FeatureSet
) -> None:
    log_file = holding_only(training_set, 269, tmp_path / "log.parquet")
    source = LaggingOfflineLog(log_file)
    runner = runner_over(source, featureset, tmp_path, QUICK_WAIT)

    async def rows_land() -> None:
        await asyncio.sleep(0.4)
        holding_only(training_set, 600, log_file)

    landing = asyncio.create_task(rows_land())
    trained = await runner.run(drift_request(expected=600))
    await landing

    assert trained.dataset.row_count == 600
    # Fitted on the older four fifths, evaluated on the newest fifth, of all 600 rows.
    assert int(trained.params["fit_rows"]) == 480 and trained.eval_rows == 120
    assert source.asked > 1


async def test_a_window_the_log_never_completes_fails_naming_counts_and_wait(
    tmp_path: Path, training_set: Path, featureset: FeatureSet
) -> None:
    source = LaggingOfflineLog(holding_only(training_set, 269, tmp_path / "log.parquet"))
    runner = runner_over(
        source, featureset, tmp_path, WindowWait(timeout_s=0.5, first_delay_s=0.05, max_delay_s=0.1)
    )

    with pytest.raises(TrainingError) as failure:
        await runner.run(drift_request(expected=400))

    assert failure.value.stage == "load_data"
    assert failure.value.reason.startswith(
        "the offline log held 269 of the 400 labelled rows counted since 2025-11-22T08:26:40Z"
    )
    waited = re.fullmatch(r".*: waited ([0-9.]+) s", failure.value.reason)
    assert waited is not None and float(waited[1]) >= 0.5
    assert source.asked > 2  # asked again while waiting, not once
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


async def test_a_stop_while_waiting_gives_up_at_once_and_fails_nothing(
    tmp_path: Path, training_set: Path, featureset: FeatureSet
) -> None:
    """Stopping the service mid-wait raises `Stopped` (the consumer then leaves the
    request uncommitted for the next start) instead of waiting the wait out."""
    source = LaggingOfflineLog(holding_only(training_set, 269, tmp_path / "log.parquet"))
    runner = runner_over(
        source, featureset, tmp_path, WindowWait(timeout_s=60, first_delay_s=5, max_delay_s=5)
    )
    asyncio.get_running_loop().call_later(0.3, runner.stopping.set)

    started = asyncio.get_running_loop().time()
    with pytest.raises(Stopped):
        await runner.run(drift_request(expected=400))

    assert asyncio.get_running_loop().time() - started < 5


async def test_a_request_with_no_count_trains_on_what_is_there(
    tmp_path: Path, training_set: Path, featureset: FeatureSet
) -> None:
    source = LaggingOfflineLog(holding_only(training_set, 269, tmp_path / "log.parquet"))
    runner = runner_over(source, featureset, tmp_path, QUICK_WAIT)

    trained = await runner.run(drift_request(expected=0))

    assert trained.dataset.row_count == 269
    assert source.asked == 1


def test_the_wait_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainerSettings().window_wait().timeout_s == 120.0
    monkeypatch.setenv("DRIFTLOOP_TRAINER_WINDOW_WAIT_S", "30")
    assert TrainerSettings().window_wait() == WindowWait(timeout_s=30.0)
