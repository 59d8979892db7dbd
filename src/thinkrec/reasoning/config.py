"""The ``reasoning`` section of a run: which ReaRec objective, how many steps, its hyper-parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ReasoningKind = Literal["none", "erl", "prl"]
InferenceMode = Literal["last", "mean", "step"]


class ReasoningConfig(BaseModel):
    """Latent multi-step reasoning (ReaRec, arXiv 2503.22675) on top of the backbone."""

    model_config = ConfigDict(extra="forbid")

    kind: ReasoningKind = Field(
        "none",
        description=(
            "'none': the plain backbone; 'erl': ensemble reasoning learning (mean of steps, KL diversity);"
            " 'prl': progressive reasoning learning (progressive temperatures + contrastive noise)"
        ),
    )
    steps: int = Field(2, description="reasoning steps K used in training and by default at inference", ge=1)
    max_steps: int | None = Field(
        None,
        description=(
            "rows of the reasoning position table; inference may use any K <= max_steps (rows beyond"
            " 'steps' are never trained). Default: steps"
        ),
        ge=1,
    )
    tau: float | None = Field(
        None,
        description=(
            "temperature of the reasoning objectives' scores (r . E / tau); default: model.temperature, so"
            " the base model and its reasoning variants train at the same temperature. Ranking metrics do"
            " not depend on it"
        ),
        gt=0,
    )
    erl_lambda: float = Field(
        0.01,
        description=(
            "ERL: weight of the KL diversity term that is subtracted from the loss. Small on purpose: the"
            " term rewards disagreement between steps and a large weight collapses training (NaN); 0.01 is"
            " the middle of the paper's grid {0.001 .. 0.1}"
        ),
        ge=0,
    )
    prl_alpha: float = Field(
        5.0,
        description="PRL: step k < K is trained at temperature tau * alpha^(K-k) (softer targets early)",
        gt=0,
    )
    noise_std: float = Field(
        0.01, description="PRL: std of the Gaussian noise added to the reasoning inputs of the noisy view", ge=0
    )
    rcl_weight: float = Field(
        1.0, description="PRL: weight of the reasoning-aware contrastive (InfoNCE) loss; 0 turns it off", ge=0
    )
    rcl_similarity: Literal["cosine", "dot"] = Field(
        "cosine",
        description=(
            "PRL: similarity of the contrastive loss (divided by tau). 'dot' is the research code's choice;"
            " states come out of a LayerNorm (|r|^2 ~ hidden), so at tau = 0.07 its positive logit is ~900"
            " for hidden 64 and the loss is almost always zero; cosine keeps a usable scale"
        ),
    )
    warmup_epochs: int = Field(
        2,
        description="epochs of the plain backbone loss (CE on r_0) before the reasoning losses switch on",
        ge=0,
    )
    normalise_feedback: bool = Field(
        True,
        description=(
            "pass each fed-back input z_k = r_(k-1) + RPE[k] through the backbone's input LayerNorm +"
            " dropout, like an item token (the research code's choice); false feeds z_k raw"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ReasoningConfig:
        if self.max_steps is not None and self.max_steps < self.steps:
            raise ValueError(f"reasoning.max_steps ({self.max_steps}) must be >= reasoning.steps ({self.steps})")
        return self

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def table_size(self) -> int:
        """Rows of the reasoning position table (the largest K usable at inference)."""
        return self.max_steps if self.max_steps is not None else self.steps

    @property
    def default_inference(self) -> InferenceMode:
        """What eval.inference='auto' means for this objective: 'mean' for ERL, 'last' otherwise."""
        return "mean" if self.kind == "erl" else "last"
