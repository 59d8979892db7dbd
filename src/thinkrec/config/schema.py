"""The typed run configuration: data, model, reasoning, training and evaluation sections.

Every section rejects unknown keys; ``thinkrec config show`` prints every key with its default and
description, generated from these models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from thinkrec.data.config import PrepareConfig, SourceConfig, check_dataset_name
from thinkrec.data.split import SplitConfig
from thinkrec.device import DeviceSetting
from thinkrec.eval.metrics import parse_metric
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.bert4rec import BERT4RecConfig
from thinkrec.models.registry import ModelConfig
from thinkrec.models.sasrec import SASRecConfig
from thinkrec.progress import ProgressSetting
from thinkrec.reasoning.config import NoReasoningConfig, ReasoningConfig
from thinkrec.train.trainer import TrainConfig

# Settings that change how a run is executed, not what it computes (threads, progress bars, device, evaluation
# pass sizes, the run directory): marked on their fields, left out of a run's identity, free to change on resume.
OPERATIONAL: dict[str, Any] = {"operational": True}


class DataConfig(BaseModel):
    """Which interaction log to read, how to clean it and how to split it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("dataset", description="short dataset name used in run directories and reports")
    source: SourceConfig = Field(default_factory=lambda: SourceConfig(format="ml100k", path="ml-100k"))
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)

    # checked when the config loads, before anything is read or a folder named after it is created
    _plain_name = field_validator("name")(check_dataset_name)


class RunConfig(BaseModel):
    """A complete experiment: data, model, training, evaluation and where to write the run."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=SASRecConfig)
    reasoning: ReasoningConfig = Field(default_factory=NoReasoningConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run_dir: str | None = Field(
        None,
        description="output folder (default runs/<data.name>-<model.kind>[-<reasoning.kind>]-s<seed>)",
        json_schema_extra=OPERATIONAL,
    )
    device: DeviceSetting = Field(
        "auto",
        description="torch device for training and evaluation: 'auto' = a CUDA GPU when torch sees one, else the CPU",
        json_schema_extra=OPERATIONAL,
    )
    progress: ProgressSetting = Field(
        "auto",
        description="progress bars: 'auto' = only on a terminal, 'always', 'never' (was train.progress)",
        json_schema_extra=OPERATIONAL,
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: object) -> object:
        """``train.progress = true | false`` (older configs and saved runs) is ``progress = always | never``."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict) and "progress" in data["train"]:
            train = dict(data["train"])
            old = train.pop("progress")
            data = {**data, "train": train}
            if "progress" not in data and isinstance(old, bool):
                data["progress"] = "always" if old else "never"
            elif not isinstance(old, bool):
                raise ValueError(f"train.progress is now progress = 'auto' | 'always' | 'never' (got {old!r})")
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_model_kind(cls, data: object) -> object:
        """A model section without ``kind`` means the default backbone (SASRec)."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "kind" not in data["model"]:
            data = {**data, "model": {"kind": "sasrec", **data["model"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        metric, k = parse_metric(self.train.valid_metric)
        if k not in self.eval.ks:
            raise ValueError(
                f"train.valid_metric {self.train.valid_metric!r} needs K = {k} in eval.ks (now {self.eval.ks});"
                f" add it, or choose one of {metric}@{', '.join(map(str, self.eval.ks))}"
            )
        no_reasoning = getattr(self.model, "no_reasoning", None)  # a model that cannot reason says why
        if self.reasoning.enabled and no_reasoning:
            raise ValueError(
                f"model.kind={self.model.kind!r} cannot take reasoning.kind={self.reasoning.kind!r} ({no_reasoning});"
                " use reasoning.kind=none"
            )
        if isinstance(self.model, BERT4RecConfig):
            check_bidirectional_training(self.model, self.train.sample_mode, self.reasoning.enabled)
        if self.reasoning.enabled and self.train.loss != "ce":
            raise ValueError(
                "reasoning objectives score every item (ERL's KL needs whole distributions); "
                "use train.loss=ce with reasoning.kind=" + self.reasoning.kind
            )
        if self.train.item_updates == "touched" and self.objective != "sampled":
            raise ValueError(
                f"train.item_updates='touched' needs the sampled-softmax objective; this run trains"
                f" {self.objective!r}, which scores the whole catalogue, so every item row gets a gradient each"
                " step: use train.item_updates='dense'"
            )
        if self.reasoning.enabled and self.train.epochs <= self.reasoning.warmup_epochs:
            raise ValueError(
                f"train.epochs ({self.train.epochs}) must exceed reasoning.warmup_epochs"
                f" ({self.reasoning.warmup_epochs}): a reasoning run's checkpoint is chosen after its warm-up"
            )
        if self.eval.depth is not None and not self.reasoning.enabled:
            raise ValueError(
                f"eval.depth={self.eval.depth!r} chooses among reasoning steps; it needs reasoning.kind = erl | prl"
                " (or eval.depth = none)"
            )
        if self.eval.inference == "auto":
            self.eval = self.eval.model_copy(update={"inference": self.inference()[0]})
        if self.eval.inference == "step":
            top = self.reasoning.table_size if self.reasoning.enabled else 0
            if self.eval.inference_step is None or self.eval.inference_step > top:
                raise ValueError(f"eval.inference='step' needs eval.inference_step in 0..{top}")
        return self

    def inference(self) -> tuple[str, int | None]:
        """How a reasoning model's per-step states become one user vector, ``('last'|'mean'|'step', step)``:
        ``eval.inference``, where ``'auto'`` means the objective's own (ERL: mean, PRL: last). The one place
        'auto' is resolved (a bare EvalConfig outside a run treats it as 'last')."""
        mode = self.reasoning.default_inference if self.eval.inference == "auto" else self.eval.inference
        return mode, self.eval.inference_step if mode == "step" else None

    @property
    def objective(self) -> str:
        """The registered training objective this run uses: the reasoning kind, BERT4Rec's cloze, or
        ``train.loss``."""
        if self.reasoning.enabled:
            return self.reasoning.kind
        if getattr(self.model, "train_objective", "next") == "cloze":
            return "cloze"
        return self.train.loss

    def default_run_dir(self) -> str:
        model = self.model.kind + (f"-{self.reasoning.kind}" if self.reasoning.enabled else "")
        return self.run_dir or f"runs/{self.data.name}-{model}-s{self.train.seed}"


def check_bidirectional_training(cfg: BERT4RecConfig, sample_mode: str, reasoning: bool) -> None:
    """Reject the settings under which a bidirectional encoder would leak targets or cannot reason."""
    if cfg.train_objective == "cloze" and reasoning:
        raise ValueError(
            "model.train_objective='cloze' has no reasoning variant (ReaRec trains next-item on the last "
            "column); use model.train_objective='next' with reasoning.kind=" + ("erl/prl")
        )
    if cfg.train_objective == "next" and sample_mode == "all":
        raise ValueError(
            "BERT4Rec is bidirectional: in train.sample_mode='all' every position would see the item it must "
            "predict. Use train.sample_mode='last' (one prefix per row, ReaRec's setting) or "
            "model.train_objective='cloze'"
        )


def operational_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> frozenset[str]:
    """Dotted keys of the settings marked operational (``json_schema_extra={"operational": True}``)."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("operational"):
            keys.add(prefix + name)
        annotation = field.annotation
        members = [a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type)]
        for member in members:
            if issubclass(member, BaseModel):
                keys |= operational_keys(member, f"{prefix}{name}.")
    return frozenset(keys)


def flat_settings(cfg: BaseModel) -> dict[str, Any]:
    """Every setting of a config under its dotted key (``reasoning.erl_lambda``), as the CLI overrides name them."""

    def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for key, value in obj.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): obj}

    return flat(cfg.model_dump(mode="json"))


def changed_settings(old: BaseModel, new: BaseModel) -> list[str]:
    """Dotted keys whose values differ between two configs of one schema (the engine's :class:`RunConfig`, the
    LLM's run config), apart from the schema's operational ones, which do not change what a run computes: the
    identity check of a run that resumes."""
    a, b = flat_settings(old), flat_settings(new)
    skip = operational_keys(type(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in skip)
