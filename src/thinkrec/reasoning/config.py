"""The ``reasoning`` section of a run: which ReaRec objective, how many steps, its hyper-parameters.

One class per kind (tag ``kind``): ``none`` (the plain backbone), ``erl`` and ``prl``. A key of another kind
is rejected with one message (``reasoning.prl_alpha`` with ``kind = "erl"``), so a setting never silently
does nothing. Configs written by the earlier single flat schema (every key of every kind, e.g. the
``config.json`` of an old run) still load: see :func:`migrate_flat`.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator

ReasoningKind = Literal["none", "erl", "prl"]
InferenceMode = Literal["last", "mean", "step"]


class NoReasoningConfig(BaseModel):
    """No latent reasoning: the plain backbone (K = 0)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none"] = Field(
        "none",
        description=(
            "'none': the plain backbone; 'erl': ensemble reasoning learning (mean of steps, KL diversity);"
            " 'prl': progressive reasoning learning (progressive temperatures + contrastive noise)"
        ),
    )

    @property
    def enabled(self) -> bool:
        return False

    @property
    def steps(self) -> int:
        """The plain backbone reasons for 0 steps."""
        return 0

    @property
    def warmup_epochs(self) -> int:
        """Nothing to warm up: every epoch trains the final objective."""
        return 0

    @property
    def table_size(self) -> int:
        return 0

    @property
    def default_inference(self) -> InferenceMode:
        return "last"


class LatentReasoningConfig(BaseModel):
    """What ERL and PRL share: the reasoner (steps, position table, feedback) and the warm-up."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["erl", "prl"]
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
    warmup_epochs: int = Field(
        2,
        description=(
            "warm-up epochs (see warmup_trains); a warm-up epoch is never selected as the run's best checkpoint"
        ),
        ge=0,
    )
    warmup_trains: Literal["backbone", "reasoning"] = Field(
        "backbone",
        description=(
            "what the warm-up epochs train: 'backbone' = the plain backbone loss (CE on r_0), the reasoning"
            " losses switch on after it (the paper's advice); 'reasoning' = the objective's own loss from the"
            " first epoch, only PRL's noisy view and contrastive term wait (the research code)"
        ),
    )
    train_depth: Literal["fixed", "uniform"] = Field(
        "fixed",
        description=(
            "reasoning depth in training: 'fixed' = every batch reasons 'steps' steps (the paper); 'uniform' ="
            " each batch draws its depth uniformly from 1..steps (seeded per epoch), so that every step is"
            " trained as an exit, as recurrent-depth models do; inference still uses 'steps' (or eval.depth)"
        ),
    )
    normalise_feedback: bool = Field(
        True,
        description=(
            "pass each fed-back input z_k = r_(k-1) + RPE[k] through the backbone's input LayerNorm +"
            " dropout, like an item token (the research code's choice; with model.input_norm = false there is"
            " no LayerNorm, only the dropout); false feeds z_k raw"
        ),
    )
    feedback_dropout: float | None = Field(
        None,
        description=(
            "dropout on the fed-back input z_k after the input LayerNorm (with normalise_feedback); default:"
            " the backbone's input dropout, as for an item token (the research code: the same 0.2 for both)"
        ),
        ge=0,
        lt=1,
    )

    @model_validator(mode="after")
    def _check(self) -> LatentReasoningConfig:
        if self.max_steps is not None and self.max_steps < self.steps:
            raise ValueError(f"reasoning.max_steps ({self.max_steps}) must be >= reasoning.steps ({self.steps})")
        return self

    @property
    def enabled(self) -> bool:
        return True

    @property
    def table_size(self) -> int:
        """Rows of the reasoning position table (the largest K usable at inference)."""
        return self.max_steps if self.max_steps is not None else self.steps


class ERLConfig(LatentReasoningConfig):
    """Ensemble reasoning learning: the user vector is the mean of r_0..r_K, a KL term diversifies the steps."""

    kind: Literal["erl"] = Field("erl", description="ensemble reasoning learning")
    erl_lambda: float = Field(
        0.01,
        description=(
            "ERL: weight of the KL diversity term that is subtracted from the loss. Small on purpose: the"
            " term rewards disagreement between steps and a large weight collapses training (NaN); 0.01 is"
            " the middle of the paper's grid {0.001 .. 0.1}"
        ),
        ge=0,
    )

    @property
    def default_inference(self) -> InferenceMode:
        """What eval.inference='auto' means for ERL: the mean of the steps."""
        return "mean"


class PRLConfig(LatentReasoningConfig):
    """Progressive reasoning learning: progressive step temperatures, r_K at inference, clean-vs-noisy contrast."""

    kind: Literal["prl"] = Field("prl", description="progressive reasoning learning")
    prl_alpha: float = Field(
        5.0,
        description="PRL: step k < K is trained at temperature tau * alpha^(K-k) (softer targets early)",
        gt=0,
    )
    step_ce: Literal["sum", "mean"] = Field(
        "sum",
        description=(
            "PRL: how the cross-entropies of the early steps r_0..r_(K-1) combine: 'sum' (the paper's"
            " formula) or 'mean' (the research code)"
        ),
    )
    noise_std: float = Field(
        0.01, description="PRL: std of the Gaussian noise added to the reasoning inputs of the noisy view", ge=0
    )
    rcl_weight: float = Field(
        1.0, description="PRL: weight of the reasoning-aware contrastive (InfoNCE) loss; 0 turns it off", ge=0
    )
    rcl_view: Literal["shared", "reencode"] = Field(
        "shared",
        description=(
            "PRL: how the noisy view is made. 'shared': it reasons from the clean view's item pass and feeds"
            " back its own noisy states (z_k = noisy r_(k-1) + RPE[k] + noise). 'reencode' (the research"
            " code): the sequence is encoded again with its own dropout masks and step k's input is the clean"
            " r_(k-1) + RPE[k] + noise"
        ),
    )
    rcl_similarity: Literal["cosine", "dot"] = Field(
        "cosine",
        description=(
            "PRL: similarity of the contrastive loss (divided by tau). 'dot' is the research code's choice;"
            " states come out of a LayerNorm (|r|^2 ~ hidden), so at tau = 0.07 its logits are in the"
            " hundreds: with the shared view the loss is then almost always zero, with the re-encoded view"
            " (other dropout masks) it can be large; cosine keeps a usable scale"
        ),
    )

    @property
    def default_inference(self) -> InferenceMode:
        """What eval.inference='auto' means for PRL: the last step."""
        return "last"


KINDS: dict[str, type[BaseModel]] = {"none": NoReasoningConfig, "erl": ERLConfig, "prl": PRLConfig}

# The keys of the earlier flat schema, which every saved config of that time carries.
FLAT_KEYS = frozenset(
    {
        "kind",
        "steps",
        "max_steps",
        "tau",
        "erl_lambda",
        "prl_alpha",
        "noise_std",
        "rcl_weight",
        "rcl_similarity",
        "warmup_epochs",
        "normalise_feedback",
    }
)


def migrate_flat(data: Any) -> Any:
    """Fit a reasoning section to its kind's class before validation.

    A missing ``kind`` means ``none``. A key that belongs only to other kinds is dropped when it holds that
    key's default (a preset or a hand-written section may spell out defaults), and dropped whatever its value
    when the section has every key of the earlier flat schema (a ``config.json`` saved by it, where such a
    key had no effect). Otherwise it is an error: a setting of another kind would silently do nothing.
    """
    if not isinstance(data, dict):
        return data
    kind = data.get("kind", "none")
    member = KINDS.get(kind) if isinstance(kind, str) else None
    if member is None:
        return data  # the discriminated union reports the unknown kind
    legacy = data.keys() >= FLAT_KEYS
    out = {"kind": kind}
    foreign: list[str] = []
    for key, value in data.items():
        if key == "kind" or key in member.model_fields:
            out[key] = value
            continue
        owners = [k for k, m in KINDS.items() if key in m.model_fields]
        if not owners:
            close = difflib.get_close_matches(key, [k for m in KINDS.values() for k in m.model_fields], n=1)
            if close and close[0] not in member.model_fields:  # a misspelt key of another kind
                kinds = " / ".join(repr(k) for k, m in KINDS.items() if close[0] in m.model_fields)
                foreign.append(f"reasoning.{key} (unknown; did you mean 'reasoning.{close[0]}' of kind {kinds}?)")
            out[key] = value  # otherwise reported as an unknown key, with suggestions among the kind's keys
        elif not legacy and any(value != KINDS[k].model_fields[key].get_default() for k in owners):
            foreign.append(f"reasoning.{key} (a setting of kind {' / '.join(map(repr, owners))})")
    if foreign:
        raise ValueError(f"reasoning.kind = {kind!r} has no {', '.join(foreign)}; remove it or change reasoning.kind")
    return out


ReasoningConfig = Annotated[
    NoReasoningConfig | ERLConfig | PRLConfig, Field(discriminator="kind"), BeforeValidator(migrate_flat)
]
AnyReasoning = NoReasoningConfig | ERLConfig | PRLConfig

_ADAPTER: TypeAdapter[AnyReasoning] = TypeAdapter(ReasoningConfig)


def reasoning_config(**data: Any) -> AnyReasoning:
    """The reasoning section of ``data`` (``kind`` picks the class; a missing kind means ``none``)."""
    return _ADAPTER.validate_python(data)
