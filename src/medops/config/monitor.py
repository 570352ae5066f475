"""The ``monitor:`` part of medops.yaml: drift and quality checks of the live model.

    monitor:
      window: 24h            # the recent capture window compared with the baseline
      min_samples: 100       # fewer captured images in the window: no verdict
      p_value: 0.05          # family-wise false-alarm rate of one check (all tests together)
      permutations: 500      # of the embedding MMD test (raised when too few for p_value)
      schedule: "0 * * * *"  # when the agent runs the check (cron, UTC)
      quality: {max_drop: 0.05, min_labels: 50}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medops.config.agent import Duration, _check_cron


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityConfig(_Strict):
    # Alarm when a live metric (accuracy, AUC, a class's recall) falls more than this below
    # the version's test value; only over windows with at least min_labels feedback labels.
    max_drop: float = Field(0.05, ge=0.0, le=1.0)
    min_labels: int = Field(50, ge=1)


class MonitorConfig(_Strict):
    window: Duration = 86400.0
    min_samples: int = Field(100, ge=2)
    p_value: float = Field(0.05, gt=0.0, lt=1.0)
    permutations: int = Field(500, ge=10, le=100_000)
    schedule: str = "0 * * * *"
    quality: QualityConfig = QualityConfig()
    # The baseline written at training time: at most this many validation and test images,
    # of which raw_sample have their original files decoded for the raw_* statistics.
    baseline_size: int = Field(1000, ge=10)
    raw_sample: int = Field(200, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> MonitorConfig:
        if self.window <= 0:
            raise ValueError(f"monitor.window must be positive (got {self.window})")
        _check_cron(self.schedule)
        return self
