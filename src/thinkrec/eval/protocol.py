"""The evaluation protocol, written next to every number thinkrec prints or saves."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thinkrec.eval.depth import parse_selector


class EvalConfig(BaseModel):
    """How models are evaluated (RecBole: eval_args.mode = full, topk, valid_metric)."""

    model_config = ConfigDict(extra="forbid")

    ks: list[Annotated[int, Field(ge=1)]] = Field(
        [5, 10, 20], description="cut-offs K (>= 1) for NDCG@K, HR@K (= Recall@K) and MRR@K", min_length=1
    )
    mask_history: bool = Field(False, description="exclude the user's history items from the ranking")
    batch_size: int = Field(
        1024, description="evaluation samples per chunk", ge=1, json_schema_extra={"operational": True}
    )
    memory_budget_mb: int = Field(
        256,
        description="upper bound on the score matrix of one chunk (samples x items x 4 bytes)",
        ge=1,
        json_schema_extra={"operational": True},
    )
    encode_tokens: int = Field(
        12800,
        description=(
            "history positions per encoder pass (rows x width): passes of thousands of histories would stream"
            " every activation through main memory, tiny ones pay per-operation overhead; results do not depend"
            " on it"
        ),
        ge=1,
        json_schema_extra={"operational": True},
    )
    workers: int = Field(
        0,
        description=(
            "threads that encode and score independent groups of rows at once, each operation on one thread"
            " (faster than splitting every small operation over threads); 0 = one per torch thread"
            " (train.threads), 1 = off; results do not depend on it"
        ),
        ge=0,
        json_schema_extra={"operational": True},
    )
    inference: Literal["auto", "last", "mean", "step"] = Field(
        "auto",
        description=(
            "reasoning models' user vector: 'last' = r_K, 'mean' = mean of r_0..r_K, 'step' = r_(inference_step);"
            " 'auto' = the objective's own (ERL: mean, PRL: last)"
        ),
    )
    inference_step: int | None = Field(None, description="with inference='step': which step to score", ge=0)
    autocast: Literal["none", "bf16"] = Field(
        "none",
        description=(
            "encode histories in bfloat16 (only faster on AMX / AVX512-BF16 CPUs, ~10x slower elsewhere);"
            " scores and ranks stay float32"
        ),
    )
    depth: str | None = Field(
        None,
        description=(
            "reasoning models: choose each user's reasoning step at inference with this named selector, in"
            " evaluation (reported next to fixed K), recommend, batch and serving: fixed[:k], mean, best-fixed,"
            " weights, agree, agree-kl, entropy, router, router-prefix (thinkrec.eval.depth). Selectors with"
            " thresholds or weights are fit once on the run's validation samples (never test) and saved in the run"
            " directory;"
            " none = the inference mode alone"
        ),
        json_schema_extra={"operational": True},
    )

    @field_validator("depth")
    @classmethod
    def _known_selector(cls, value: str | None) -> str | None:
        """A registered selector name (``none`` is no selector)."""
        if value is None or value.strip() == "none":
            return None
        parse_selector(value)  # a ValueError naming the valid ones
        return value.strip()


def describe_protocol(cfg: EvalConfig, split_protocol: dict[str, Any], seed: int, n_items: int) -> dict[str, Any]:
    """A self-contained description of how a number was measured."""
    return {
        **split_protocol,
        "candidates": f"full catalogue ({n_items} items)",
        "history_masking": "history items excluded" if cfg.mask_history else "history items not masked",
        "encoder_precision": "bfloat16" if cfg.autocast == "bf16" else "float32",
        "ks": list(cfg.ks),
        "ranking": "pessimistic ties (items scoring equal to the target rank before it)",
        "seed": seed,
    }
