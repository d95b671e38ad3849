"""The trainer's own knobs, read from `DRIFTLOOP_TRAINER_*` environment variables.

They sit beside the shared `Settings`: no other service needs to know which
estimator the trainer fits. `DRIFTLOOP_TRAINER_ALGORITHM=logistic_regression`
switches from the HistGradientBoosting default; `DRIFTLOOP_TRAINER_WINDOW_WAIT_S`
bounds the wait for a window the offline log does not hold yet.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftloop_trainer.training import Algorithm, TrainingConfig
from driftloop_trainer.window import WindowWait


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_TRAINER_", extra="ignore")

    algorithm: Algorithm = "hist_gradient_boosting"
    random_state: int = 0
    # Oldest share of rows fitted on, then the share validated on; the rest,
    # the most recent rows, is held out for evaluation.
    train_fraction: float = Field(default=0.6, gt=0, lt=1)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_rows: int = Field(default=30, ge=3)
    # OpenMP threads per training stage (see TrainingConfig.threads).
    threads: int = Field(default=1, ge=1)
    # How long a run waits for the offline log to hold the labelled rows its
    # requester counted in the window (see driftloop_trainer.window).
    window_wait_s: float = Field(default=120.0, ge=0)

    def training_config(self) -> TrainingConfig:
        if self.train_fraction + self.validation_fraction >= 1:
            raise ValueError("train_fraction + validation_fraction must leave rows to hold out")
        return TrainingConfig(
            algorithm=self.algorithm,
            random_state=self.random_state,
            train_fraction=self.train_fraction,
            validation_fraction=self.validation_fraction,
            min_rows=self.min_rows,
            threads=self.threads,
        )

    def window_wait(self) -> WindowWait:
        return WindowWait(timeout_s=self.window_wait_s)
