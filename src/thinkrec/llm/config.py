"""The typed configuration of an R²ec run (``thinkrec llm train CONFIG key.path=value ...``).

Every section forbids unknown keys and every field has a description. Loaded from TOML/YAML with dotted
overrides exactly like the engine's :mod:`thinkrec.config.loader`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from thinkrec.config.schema import OPERATIONAL, DataConfig
from thinkrec.data.config import SourceConfig
from thinkrec.data.split import SplitConfig
from thinkrec.device import DeviceSetting
from thinkrec.llm.recpo import AdvantageKind, LossPairing


def _ml100k_time() -> DataConfig:
    return DataConfig(
        name="ml100k-time",
        source=SourceConfig(format="ml100k", path="ml-100k"),
        split=SplitConfig(kind="time", valid_cut=0.8, test_cut=0.9),
    )


class SampleConfig(BaseModel):
    """Which users and examples of the split an (affordable) LLM run uses."""

    model_config = ConfigDict(extra="forbid")

    train_users: int = Field(300, ge=1, description="training users drawn (seeded) from users with >= 2 training items")
    examples_per_user: int = Field(1, ge=1, description="training examples (random prefixes) per drawn user")
    eval_users: int = Field(
        1000,
        ge=1,
        description=(
            "test samples drawn (seeded) from the split's; the same samples for every run with the same data,"
            " split and sample.seed, so two runs' per-sample results pair up (>= 1,000 for a significance test)"
        ),
    )
    valid_users: int | None = Field(
        None,
        ge=1,
        description="validation samples for checkpoint selection (null = eval_users); fewer is cheaper mid-run",
    )
    history_len: int = Field(
        20,
        ge=1,
        description=(
            "most recent history items shown in the prompt (an over-long prompt keeps its instruction and its"
            " most recent lines, model.max_prompt_tokens)"
        ),
    )
    seed: int = Field(0, description="seed of the user / example / evaluation-sample draws")


class ModelSection(BaseModel):
    """The causal LM and how it is fine-tuned."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description=(
            "a local Hugging Face model directory; null = the default SmolLM2-135M-Instruct written by"
            " 'thinkrec llm prepare-model' (under $THINKREC_CACHE_DIR/models)"
        ),
    )
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA adapters (peft) or full fine-tuning")
    lora_r: int = Field(4, ge=1, description="LoRA rank (the code's 4)")
    lora_alpha: int = Field(128, gt=0, description="LoRA alpha (the code's 128: scaling alpha/r = 32)")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get LoRA adapters",
    )
    lora_layers: int | None = Field(
        None,
        ge=1,
        description=(
            "adapters only in the top this many decoder layers (null: every layer, as the paper); the layers"
            " below then run without autograd, which makes a training step cheaper (a departure from the paper)"
        ),
    )
    tau: float = Field(0.02, gt=0, description="temperature of cosine similarity (score = cos / tau)")
    max_prompt_tokens: int = Field(1024, ge=16, description="user prompts are cut to their last this many tokens")
    max_item_tokens: int = Field(128, ge=8, description="item texts are cut to this many tokens")
    system_prompt: str | None = Field(
        "You are a helpful movie recommendation assistant.",
        description=(
            "the system turn of every prompt (users and items alike); null = the chat template's own default"
            " (SmolLM2 inserts a long one)"
        ),
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: torch's choice)", json_schema_extra=OPERATIONAL
    )
    device: DeviceSetting = Field(
        "auto",
        description=(
            "where the LM, its item table and every tensor it makes live: auto (a CUDA GPU when torch sees one,"
            " else the CPU), cpu, or cuda (an error without a GPU)"
        ),
        json_schema_extra=OPERATIONAL,
    )
    autocast: Literal["none", "bf16"] = Field(
        "none",
        description=(
            "mixed precision of the decoder's layers: bf16 runs them in bfloat16 (about 2x faster on a CPU"
            " with AVX512-BF16 or AMX, and on GPUs; several times slower on other CPUs); hidden states, scores"
            " and log-probabilities stay float32"
        ),
    )
    item_prior: Literal["none", "log_popularity"] = Field(
        "none",
        description=(
            "log_popularity adds log(1 + the item's training-period interaction count) to every item's logit"
            " (cos / tau + prior), in losses, rewards, evaluation and serving alike, so the LM learns how a user"
            " departs from popularity (a departure from the paper, whose score is the cosine alone); none = the"
            " paper's score"
        ),
    )
    item_head: Literal["none", "linear"] = Field(
        "none",
        description=(
            "linear: a d x d map (identity at the start, no bias) applied to every item vector before the cosine,"
            " trained with the adapters; with item_side = fixed it lets the item side learn while every row of"
            " the table stays current (a departure from the paper); none = the paper's item vectors"
        ),
    )
    center_items: bool = Field(
        False,
        description=(
            "subtract the mean item vector from user and item vectors before the cosine (a small LM's hidden"
            " states are nearly parallel: mean item-item cosine ~0.96 on ML-100K); applies to rewards, losses"
            " and evaluation alike"
        ),
    )


class PromptSection(BaseModel):
    """Nouns and item text used in prompts."""

    model_config = ConfigDict(extra="forbid")

    noun_singular: str = Field("movie", description="what one item is called in prompts")
    noun_plural: str = Field("movies", description="what items are called in prompts")
    item_fields: list[str] | None = Field(
        None, description="item text columns shown in item prompts (null = every column the dataset has)"
    )
    field_words: int = Field(32, ge=1, description="each non-title field is cut to this many words ('...' appended)")
    time_format: Literal["auto", "relative", "date", "none"] = Field(
        "auto",
        description=(
            "what precedes each history line: 'relative' ('3d 2.0h ago', the paper's), 'date' (YYYY-MM-DD of the"
            " interaction), 'none'; auto = 'date' for ml100k (its users rate in bursts, so most relative times"
            " read 'minutes ago') and seqrecbench (day timestamps), 'relative' for timestamped tables, 'none'"
            " without timestamps"
        ),
    )
    relative_time: bool | None = Field(
        None,
        description="older configs' switch: true = time_format 'relative', false = 'none' (null = use time_format)",
    )
    show_ratings: bool | None = Field(
        None, description="show each history item's rating ('rated 4/5'; null = when the source has ratings: ml100k)"
    )
    side_info: bool = Field(
        True,
        description=(
            "read what the raw files hold beyond titles (ml100k: ratings, genres, release year) for prompts and"
            " item text; false = titles only"
        ),
    )
    answer_marker: str = Field("<answer>", description="the plain-text marker that ends the reasoning")


class RecPOSection(BaseModel):
    """RecPO (or the no-reasoning baseline) optimisation."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["recpo", "no_reasoning"] = Field(
        "recpo", description="'recpo' = reasoning + RecPO; 'no_reasoning' = contrastive training on the prompt alone"
    )
    pairing: LossPairing = Field(
        "per_rollout",
        description="'per_rollout' = each rollout's own advantage (paper); 'faithful_to_code' = the released bug",
    )
    negatives: Literal["in_batch", "catalogue"] = Field(
        "in_batch",
        description=(
            "item-loss softmax: 'in_batch' = over the step's B targets (paper and code); 'catalogue' = over every"
            " item (cached vectors, the step's targets freshly encoded), history masked, like the reward"
        ),
    )
    reward_table: Literal["before_refresh", "after_refresh"] = Field(
        "before_refresh",
        description=(
            "which cached item table the step's reward ranks against: 'before_refresh' (the released code's"
            " order: score, then write the step's freshly encoded targets into the table) or 'after_refresh'"
            " (targets refreshed first: the target is then the one fresh row among stale ones)"
        ),
    )
    item_side: Literal["trained", "fixed"] = Field(
        "trained",
        description=(
            "'trained' (paper): item vectors come from the trained model and get gradients; 'fixed': the item"
            " table is built once by the adapter-free model (or the initial weights under full fine-tuning)"
            " and never changes -- only the user side learns (departs from the paper, see docs/llm.md)"
        ),
    )
    format_reward: float = Field(
        0.0,
        ge=0,
        description=(
            "added to a rollout's reward when it wrote the end marker itself within max_new_tokens (teaches"
            " the format: a short rationale, then the marker); 0 = off (paper)"
        ),
    )
    refresh_every: int = Field(
        0,
        ge=0,
        description=(
            "rebuild the whole cached item table every N steps (0 = never: only the step's targets are"
            " re-encoded, as in the paper's code, and the other rows go stale between evaluations, which"
            " rebuild it)"
        ),
    )
    group_size: int = Field(4, ge=1, description="rollouts per user (G)")
    users_per_step: int = Field(4, ge=1, description="users per step (B); the in-batch item loss has B-1 negatives")
    micro_users: int | None = Field(
        None,
        ge=1,
        description=(
            "run a step's forward+backward in chunks of at most this many users (per process), accumulating"
            " gradients before the one optimiser step: the same update up to float summation order, with one"
            " chunk's activations in memory instead of the whole step's (null = all users at once)"
        ),
        json_schema_extra=OPERATIONAL,
    )
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature (the code's 2.0; see decisions)")
    top_k: int = Field(50, ge=0, description="rollout top-k sampling (0 = off)")
    max_new_tokens: int = Field(64, ge=1, description="reasoning tokens per rollout at most (the code's 640)")
    beta: float = Field(0.05, ge=0, le=1, description="weight of the softmax term in the fused reward")
    ndcg_cutoff: int = Field(1000, ge=1, description="NDCG cut-off of the reward (capped at the catalogue size)")
    advantage: AdvantageKind = Field("gaussian", description="group normalisation of rewards")
    adv_std_floor: float = Field(
        1e-6, ge=0, description="gaussian advantages divide by max(std, this): reward noise is not blown up (0 = code)"
    )
    relabel_topk: int = Field(2, ge=1, description="rollouts per group that get the item loss")
    clip_low: float = Field(0.2, ge=0, description="PPO clip epsilon below 1")
    clip_high: float = Field(0.28, ge=0, description="PPO clip epsilon above 1 (clip-higher)")
    steps: int = Field(20, ge=1, description="optimiser steps")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float | None = Field(1.0, description="clip the gradient norm (null = off)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (the code's 32 had no effect)")
    eval_every: int = Field(
        0,
        ge=0,
        description=(
            "evaluate on validation before the first step, every this many steps and after the last, and keep"
            " the best weights (checkpoints/best.*), which the test evaluation then uses (0 = no validation:"
            " the final weights)"
        ),
    )
    select_metric: str = Field("NDCG@20", description="the validation metric of best-checkpoint selection")
    seed: int = Field(42, description="root seed: initialisation, data order and rollout sampling")
    save_every: int = Field(
        25,
        ge=0,
        description=(
            "write the resumable training state (checkpoints/resume.safetensors: trainable tensors, optimiser,"
            " random streams, data position, item table, best-validation tracking) every this many steps and"
            " after the last, so a killed run continues from there when the same command runs again (0 = never:"
            " a killed run starts over)"
        ),
        json_schema_extra=OPERATIONAL,
    )
    resume: bool = Field(
        True,
        description=(
            "continue from the run directory's resumable state if it holds one (false = start over there,"
            " deleting what the run before wrote)"
        ),
        json_schema_extra=OPERATIONAL,
    )


class LLMEvalSection(BaseModel):
    """Full-catalogue evaluation of the LLM recommender."""

    model_config = ConfigDict(extra="forbid")

    ks: list[int] = Field([5, 10, 20], description="cut-offs K of HR@K and NDCG@K")
    batch_size: int = Field(16, ge=1, description="users per greedy-reasoning batch")
    item_batch_size: int = Field(64, ge=1, description="items per encoding batch of the item table")
    mask_history: bool = Field(True, description="exclude the user's whole history from the ranking (paper)")
    popularity_baseline: bool = Field(
        True,
        description=(
            "also rank by training-interaction counts on the same samples, catalogue and masking, and report"
            " it beside the model (validation and test)"
        ),
    )


class LLMRunConfig(BaseModel):
    """An R²ec run: data, model, prompts, RecPO and evaluation."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=_ml100k_time, description="dataset and split (as the engine's)")
    sample: SampleConfig = Field(default_factory=SampleConfig)
    model: ModelSection = Field(default_factory=ModelSection)
    prompt: PromptSection = Field(default_factory=PromptSection)
    recpo: RecPOSection = Field(default_factory=RecPOSection)
    eval: LLMEvalSection = Field(default_factory=LLMEvalSection)
    run_dir: str | None = Field(
        None,
        description="output folder (default runs/llm-<data.name>-<variant>-s<seed>)",
        json_schema_extra=OPERATIONAL,
    )
    init_from: str | None = Field(
        None,
        description=(
            "start from the trained weights of this run directory (its best checkpoint, else its last), e.g."
            " a no_reasoning cold start before RecPO; its model section must match"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> LLMRunConfig:
        if self.model.lora_layers is not None and self.model.finetune != "lora":
            raise ValueError("model.lora_layers places LoRA adapters: it needs model.finetune='lora' (or null)")
        if self.recpo.item_side == "fixed" and self.recpo.refresh_every:
            raise ValueError("recpo.item_side='fixed' keeps the item table: recpo.refresh_every must be 0")
        if self.recpo.select_metric not in {f"{m}@{k}" for m in ("NDCG", "HR") for k in self.eval.ks}:
            raise ValueError(f"recpo.select_metric={self.recpo.select_metric!r}: use NDCG@K or HR@K with K in eval.ks")
        return self

    def default_run_dir(self) -> str:
        return self.run_dir or f"runs/llm-{self.data.name}-{self.recpo.variant}-s{self.recpo.seed}"


def load_llm_config(path: str | None = None, overrides: list[str] | None = None) -> LLMRunConfig:
    """Load a TOML/YAML file (or the defaults) and apply dotted overrides; errors name the nearest key."""
    from thinkrec.config.loader import load_into

    return load_into(LLMRunConfig, path, overrides, presets=False)
