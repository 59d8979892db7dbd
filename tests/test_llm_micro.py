"""``recpo.micro_users``: a step's forward+backward in chunks of users with gradient accumulation gives the
update and the step log of the whole step at once (tiny random Llama built in code, CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformers", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")
pytest.importorskip("peft", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")

from test_llm_honest import _perturb_adapters, distinct_model
from test_llm_model import _setup
from thinkrec.config.schema import operational_keys
from thinkrec.llm.config import LLMRunConfig, load_llm_config
from thinkrec.llm.data import PromptBank, train_examples
from thinkrec.llm.prompts import PromptBuilder
from thinkrec.llm.trainer import LLMTrainer, StepLog

USERS = 5  # 1 and 2 users per chunk: several chunks, and a short last one for 2
LR = 0.01  # test_llm_model.FAST's recpo.lr


def _one_step(overrides: list[str], micro: int | None, start: dict[str, torch.Tensor] | None) -> tuple[Any, ...]:
    """One step from the same weights; returns the trainable tensors after it, their gradients and the log."""
    cfg, split, _ = _setup([*overrides, f"recpo.users_per_step={USERS}", f"recpo.micro_users={micro or 'null'}"])
    model = distinct_model()  # well-separated vectors: no near-ties for float noise to flip in the reward ranks
    _perturb_adapters(model)
    named = {n: p for n, p in model.lm.named_parameters() if p.requires_grad}
    with torch.no_grad():
        if start is None:
            start = {n: p.detach().clone() for n, p in named.items()}
        for n, p in named.items():
            p.copy_(start[n])
    bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
    trainer = LLMTrainer(model, bank, cfg)
    batch = train_examples(split, cfg)[:USERS]
    assert len(batch) == USERS
    log = trainer.step(batch, 1)
    after = {n: p.detach().clone() for n, p in named.items()}
    grads = {n: p.grad.detach().clone() for n, p in named.items() if p.grad is not None}
    table = model.item_table.clone() if model.item_table is not None else None
    return start, after, grads, log, table


def _same_log(a: StepLog, b: StepLog) -> None:
    for key in ("reward", "advantage", "advantage_abs", "ndcg", "softmax", "reasoning_len", "marker_rate"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-6, abs=1e-7), key
    for key in ("loss", "loss_token", "loss_item", "grad_norm"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-4, abs=1e-6), key


CASES = {
    "no_reasoning": ["recpo.variant=no_reasoning"],
    "no_reasoning-catalogue-centred": [
        "recpo.variant=no_reasoning",
        "recpo.negatives=catalogue",
        "model.center_items=true",
    ],
    "recpo": ["recpo.variant=recpo"],
    "recpo-catalogue-after-refresh": [
        "recpo.variant=recpo",
        "recpo.negatives=catalogue",
        "recpo.reward_table=after_refresh",
        "model.center_items=true",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_micro_users_give_the_whole_steps_update_and_log(case: str) -> None:
    overrides = CASES[case]
    start, full, full_grads, full_log, full_table = _one_step(overrides, None, None)
    assert full_grads and max(float(g.abs().max()) for g in full_grads.values()) > 1e-6
    assert any(not torch.equal(full[n], start[n]) for n in full), "the step moved nothing"
    top = max(float(g.abs().max()) for g in full_grads.values())
    for micro in (1, 2):
        _, after, grads, log, table = _one_step(overrides, micro, start)
        assert set(grads) == set(full_grads)
        for n in full:
            # the accumulated (clipped) gradient is the whole step's up to float summation order
            noise = 5e-5 * top
            torch.testing.assert_close(grads[n], full_grads[n], rtol=1e-4, atol=noise, msg=f"{micro}: grad {n}")
            # AdamW's first update is lr * g / (|g| + eps): the same wherever the gradient's sign is certain; an
            # entry whose gradient lies within the tolerance above of 0 may flip sign between summation orders
            # (one thread or several) and move by up to lr either way in either run
            clear = full_grads[n].abs() > 2 * noise
            torch.testing.assert_close(after[n][clear], full[n][clear], rtol=1e-5, atol=1e-6, msg=f"{micro}: {n}")
            assert float((after[n] - full[n]).abs().max()) <= 2 * LR + 1e-6
        _same_log(log, full_log)
        assert table is not None and full_table is not None
        torch.testing.assert_close(table, full_table, rtol=1e-5, atol=1e-5)


def test_micro_users_is_operational_and_validated() -> None:
    assert "recpo.micro_users" in operational_keys(LLMRunConfig)
    assert load_llm_config(None, []).recpo.micro_users is None
    assert load_llm_config(None, ["recpo.micro_users=4"]).recpo.micro_users == 4
    with pytest.raises(Exception, match="micro_users"):
        load_llm_config(None, ["recpo.micro_users=0"])
