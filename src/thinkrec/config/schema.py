"""The typed run configuration: data, model, training and evaluation sections.

Every section rejects unknown keys; ``thinkrec config show`` prints every key with its default and
description, generated from these models.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from thinkrec.data.config import PrepareConfig, SourceConfig
from thinkrec.data.split import SplitConfig
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.registry import ModelConfig
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.train.trainer import TrainConfig


class DataConfig(BaseModel):
    """Which interaction log to read, how to clean it and how to split it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("dataset", description="short dataset name used in run directories and reports")
    source: SourceConfig = Field(default_factory=lambda: SourceConfig(format="ml100k", path="ml-100k"))
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)


class RunConfig(BaseModel):
    """A complete experiment: data, model, training, evaluation and where to write the run."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=SASRecConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run_dir: str | None = Field(
        None, description="output folder (default runs/<data.name>-<model.kind>-<seed>)"
    )

    def default_run_dir(self) -> str:
        return self.run_dir or f"runs/{self.data.name}-{self.model.kind}-s{self.train.seed}"
