"""The reward's item table, a fixed item side, centred vectors, the format reward and the device setting,
with a tiny random Llama built in code (CPU, fast)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformers", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")
pytest.importorskip("peft", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")

from test_llm_model import _setup, tiny_model
from thinkrec.llm.config import load_llm_config
from thinkrec.llm.data import PromptBank, train_examples
from thinkrec.llm.prompts import PromptBuilder
from thinkrec.llm.recpo import cosine_scores, format_bonus, fused_reward
from thinkrec.llm.trainer import LLMTrainer


def distinct_model(**section: Any) -> Any:
    """A tiny LoRA model whose item vectors differ (the default init makes them equal in float32, and
    the in-batch loss then has no gradient); ``section``: more model settings."""
    from thinkrec.llm.config import ModelSection
    from thinkrec.llm.hf import wrap
    from thinkrec.llm.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    return wrap(tiny_llama(len(tok), init_std=0.5), tok, ModelSection(lora_r=2, **section))


def _perturb_adapters(model: Any) -> None:
    for name, p in model.lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)  # adapters that change the item vectors


def _trainer(overrides: list[str], finetune: str = "lora") -> tuple[LLMTrainer, Any, list[Any]]:
    cfg, split, model = _setup(overrides, finetune)
    _perturb_adapters(model)
    bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
    return LLMTrainer(model, bank, cfg), split, train_examples(split, cfg)[:2]


def _tables_seen_by_reward(trainer: LLMTrainer, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Copies of the cached item table at every reward scoring (``score_all``) of one step."""
    seen: list[torch.Tensor] = []
    model = trainer.model
    score_all = model.score_all

    def spy(users: torch.Tensor) -> torch.Tensor:
        assert model.item_table is not None
        seen.append(model.item_table.clone())
        return score_all(users)

    monkeypatch.setattr(model, "score_all", spy)
    return seen


@pytest.mark.parametrize("variant", ["recpo", "no_reasoning"])
def test_reward_ranks_against_the_table_before_the_steps_refresh(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    trainer, _, batch = _trainer([f"recpo.variant={variant}"])
    model = trainer.model
    model.build_item_table(trainer.bank.item_ids, 5)
    assert model.item_table is not None
    before = model.item_table.clone()
    seen = _tables_seen_by_reward(trainer, monkeypatch)
    trainer.step(batch, 1)
    assert seen and all(torch.equal(t, before) for t in seen)  # every reward saw the pre-step table
    targets = sorted({ex.target for ex in batch})
    assert not torch.equal(model.item_table[targets], before[targets])  # refreshed afterwards


def test_after_refresh_order_scores_against_the_fresh_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, _, batch = _trainer(["recpo.reward_table=after_refresh"])
    model = trainer.model
    model.build_item_table(trainer.bank.item_ids, 5)
    assert model.item_table is not None
    before = model.item_table.clone()
    seen = _tables_seen_by_reward(trainer, monkeypatch)
    trainer.step(batch, 1)
    targets = sorted({ex.target for ex in batch})
    others = [i for i in range(1, before.shape[0]) if i not in targets]
    assert not torch.equal(seen[0][targets], before[targets]) and torch.equal(seen[0][others], before[others])


@pytest.mark.parametrize("variant", ["recpo", "no_reasoning"])
def test_fixed_item_side_keeps_the_adapter_free_table(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    trainer, _, batch = _trainer(["recpo.item_side=fixed", "recpo.negatives=catalogue", f"recpo.variant={variant}"])
    model = trainer.model
    monkeypatch.setattr(model, "encode_items", lambda *a, **k: pytest.fail("a fixed item side encodes no items"))
    trainer.ensure_item_table()
    assert model.item_table is not None
    table = model.item_table.clone()
    with torch.no_grad(), model.adapters_disabled():
        base = model.encode(trainer.bank.item_ids[1:4])
    with torch.no_grad():
        adapted = model.encode(trainer.bank.item_ids[1:4])
    assert torch.allclose(table[1:4], base, atol=1e-5) and not torch.allclose(table[1:4], adapted, atol=1e-3)
    assert all(p.requires_grad for n, p in model.lm.named_parameters() if "lora" in n)  # flags restored
    log = trainer.step(batch, 1)
    # the no-reasoning loss always has a gradient; RecPO's is zero when a group's rewards tie
    assert (log.grad_norm > 0 or variant == "recpo") and torch.equal(model.item_table, table)
    trainer.evaluate(batch, rebuild=True)  # evaluation does not rebuild a fixed table either
    assert torch.equal(model.item_table, table)


def test_fixed_item_side_rejects_a_table_refresh() -> None:
    from thinkrec.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="refresh_every"):
        load_llm_config(None, ["recpo.item_side=fixed", "recpo.refresh_every=3"])
    with pytest.raises((ConfigError, ValueError), match="select_metric"):
        load_llm_config(None, ["recpo.select_metric=NDCG@50"])


def test_centred_scores_are_cosines_after_subtracting_the_mean_item() -> None:
    model = tiny_model()
    table = torch.tensor([[0.0, 0.0], [1.0, 0.1], [1.0, -0.1], [1.2, 0.0]])
    model.item_table = table
    users = torch.tensor([[1.0, 0.2]])
    plain = model.score_all(users)
    model.center_items = True
    mean = table[1:].mean(0)
    assert torch.allclose(model.score_all(users), cosine_scores(users - mean, table - mean, model.tau))
    # nearly parallel items: the raw cosines barely differ, the centred ones spread out
    centred = model.score_all(users)
    assert (centred[0, 1:].max() - centred[0, 1:].min()) > 10 * (plain[0, 1:].max() - plain[0, 1:].min())


def test_centred_training_step_runs() -> None:
    trainer, _, batch = _trainer(["model.center_items=true", "recpo.negatives=catalogue", "recpo.variant=no_reasoning"])
    trainer.model.center_items = True
    log = trainer.step(batch, 1)
    assert log.grad_norm > 0 and 0 <= log.ndcg <= 1


def test_format_reward_pays_for_a_marker_written_within_the_budget() -> None:
    assert format_bonus([True, False, True], 0.1).tolist() == pytest.approx([0.1, 0.0, 0.1])
    scores = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    masked = torch.zeros(2, 3, dtype=torch.bool)
    targets = torch.tensor([2, 2])
    plain = fused_reward(scores, targets, masked, 0.0, 3)
    bonus = fused_reward(scores, targets, masked, 0.0, 3, format_bonus([True, False], 0.5))
    assert bonus.reward.tolist() == pytest.approx([1.5, 1.0])
    assert torch.equal(bonus.ndcg, plain.ndcg)


def test_device_setting_places_model_and_table() -> None:
    from thinkrec.errors import ConfigError
    from thinkrec.llm.hf import wrap
    from thinkrec.llm.tiny import tiny_llama, tiny_tokenizer

    cfg = load_llm_config(None, ["model.device=cpu", "model.lora_r=2"])
    tok = tiny_tokenizer()
    model = wrap(tiny_llama(len(tok)), tok, cfg.model)
    assert model.device == torch.device("cpu")
    assert model.build_item_table([[0], [1, 40, 5], [1, 41, 5]]).device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            wrap(tiny_llama(len(tok)), tok, cfg.model.model_copy(update={"device": "cuda"}))


# ----------------------------------------------------------------------------- evaluation and selection
def test_popularity_ranks_use_training_counts_and_the_same_masking() -> None:
    import numpy as np

    from test_llm_prompts import toy_dataset
    from thinkrec.data.split import SplitConfig, make_split
    from thinkrec.llm.data import Example
    from thinkrec.llm.evaluation import popularity_ranks, training_counts

    counts = np.array([0.0, 5, 3, 8, 1])
    ex = Example(user=0, position=2, shown=[3], shown_times=[0], target=2, target_time=0, seen=[3])
    assert popularity_ranks(counts, [ex], mask_history=True).tolist() == [1]  # item 1 (5) beats it; 3 masked
    assert popularity_ranks(counts, [ex], mask_history=False).tolist() == [2]
    split = make_split(toy_dataset(), SplitConfig(kind="loo"))
    c = training_counts(split)
    assert c[0] == 0 and c.sum() == split.n_train_interactions
    ds = split.dataset
    manual = np.zeros(ds.n_items + 1)
    for u in range(ds.n_users):
        for item in ds.sequence(u)[: split.train_lengths[u]]:
            manual[item] += 1
    assert np.array_equal(c, manual)


def test_compare_reports_pairs_samples_and_tests_both_metrics() -> None:
    from thinkrec.llm.evaluation import compare_reports

    a = {"ranks": [0, 30, 5, 40] * 10, "samples": [[u, 1] for u in range(40)]}
    b = {"ranks": [0, 3, 5, 40] * 10, "samples": [[u, 1] for u in range(40)]}
    out = compare_reports(a, b, k=20, resamples=300)
    assert out["n"] == 40 and out["HR@20"]["only_b"] == 10 and out["HR@20"]["only_a"] == 0
    assert out["HR@20"]["b"] == pytest.approx(0.75) and out["HR@20"]["a"] == pytest.approx(0.5)
    assert out["NDCG@20"]["mean_diff"] > 0 and out["NDCG@20"]["p_value"] == 0.0
    with pytest.raises(ValueError, match="different samples"):
        compare_reports(a, {**b, "samples": [[u, 2] for u in range(40)]})
    with pytest.raises(ValueError, match="not paired"):
        compare_reports(a, {"ranks": [0]})


def test_evaluation_report_has_cost_popularity_and_samples() -> None:
    from thinkrec.llm.run import evaluation

    trainer, split, _ = _trainer([])
    report = evaluation(trainer, split, trainer.cfg, "test", progress=False)
    assert report["n_samples"] == 4 and len(report["samples"]) == 4 and len(report["popularity"]["ranks"]) == 4
    cost = report["cost"]
    assert cost["device"] == "cpu" and cost["seconds_per_user"] > 0 and cost["peak_memory_mb"] > 0
    assert cost["generated_tokens"] > 0 and cost["tokens_per_second"] > 0
    assert set(report["popularity"]["metrics"]) == set(report["metrics"])
    assert "most_popular" in report["protocol"] and report["protocol"]["history_masking"].startswith("the user")


def test_evaluation_counts_the_texts_that_ended_with_the_model_s_own_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from thinkrec.llm.run import evaluation

    trainer, split, _ = _trainer([])
    generate = trainer.model.generate
    calls = iter(range(1000))

    def every_third_ends(*args: Any, **kwargs: Any) -> Any:  # the tiny model never writes the marker by itself
        rollouts = generate(*args, **kwargs)
        return replace(rollouts, hit_marker=[next(calls) % 3 == 0 for _ in rollouts.hit_marker])

    monkeypatch.setattr(trainer.model, "generate", every_third_ends)
    report = evaluation(trainer, split, trainer.cfg, "test", progress=False)
    assert report["n_samples"] == 4 and report["marker_rate"] == pytest.approx(2 / 4)  # texts 0 and 3 of 4
    no_reasoning, split, _ = _trainer(["recpo.variant=no_reasoning"])
    assert evaluation(no_reasoning, split, no_reasoning.cfg, "test", progress=False)["marker_rate"] == 0.0


def test_best_validation_weights_are_selected_and_used_for_the_test(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thinkrec.llm.run import load_llm_checkpoint, train_llm

    cfg, split, _ = _setup(["recpo.variant=no_reasoning", "recpo.steps=3", "recpo.eval_every=1"])
    model = distinct_model()
    values = iter([0.1, 0.5, 0.2, 0.3, 0.0])  # steps 0, 1, 2, 3, then the test
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(self: LLMTrainer, examples: list[Any], progress: bool = False, rebuild: bool = True) -> Any:
        snapshots.append({n: p.detach().clone() for n, p in self.model.lm.named_parameters() if p.requires_grad})
        v = next(values)
        metrics = {f"{m}@{k}": v for m in ("NDCG", "HR") for k in (5, 10, 20)}
        return {"metrics": metrics, "n_samples": len(examples), "ranks": [0] * len(examples), "cost": {}}

    monkeypatch.setattr(LLMTrainer, "evaluate", fake_evaluate)
    results = train_llm(cfg, tmp_path, model=model, split=split, progress=False)
    sel = results["selection"]
    assert sel["best_step"] == 1 and sel["best_value"] == 0.5 and len(sel["history"]) == 4
    assert sel["most_popular"] is not None
    for n, p in snapshots[-1].items():  # the test evaluation saw the step-1 weights
        assert torch.equal(p, snapshots[1][n]), n
    assert not all(torch.equal(snapshots[3][n], snapshots[1][n]) for n in snapshots[1])  # training moved on
    fresh = distinct_model()
    info = load_llm_checkpoint(tmp_path / "checkpoints", fresh)
    assert info["checkpoint"] == "best" and info["step"] == 1
    for n, p in fresh.lm.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, snapshots[1][n]), n
    assert (tmp_path / "checkpoints" / "last.json").exists()


def test_init_from_starts_from_another_runs_weights(tmp_path: Any) -> None:
    from thinkrec.errors import ThinkrecError
    from thinkrec.llm.run import initialise_from, train_llm

    cfg, split, model = _setup(["recpo.variant=no_reasoning", "recpo.negatives=catalogue"])
    train_llm(cfg, tmp_path / "cold", model=model, split=split, progress=False, evaluate_test=False)
    cfg2, _, fresh = _setup([f"init_from={tmp_path / 'cold'}", "model.lora_r=2"])
    cfg2 = cfg2.model_copy(update={"model": cfg.model})
    info = initialise_from(fresh, cfg2)
    assert info["checkpoint"] == "last" and fresh.item_table is None
    for (n, p), (_, q) in zip(model.lm.named_parameters(), fresh.lm.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    other = cfg2.model_copy(update={"model": cfg.model.model_copy(update={"lora_r": 8})})
    with pytest.raises(ThinkrecError, match="lora_r"):
        initialise_from(tiny_model(), other)
    for key, value in (("lora_layers", 1), ("autocast", "bf16")):  # adapters of other layers / precision
        other = cfg2.model_copy(update={"model": cfg.model.model_copy(update={key: value})})
        with pytest.raises(ThinkrecError, match=key):
            initialise_from(tiny_model(), other)


def test_the_log_popularity_prior_is_the_training_counts_and_travels_with_the_checkpoint(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thinkrec.errors import ThinkrecError
    from thinkrec.llm import run
    from thinkrec.llm.evaluation import training_counts
    from thinkrec.llm.run import initialise_from, load_llm_run, train_llm

    over = ["recpo.variant=no_reasoning", "recpo.negatives=catalogue", "model.item_prior=log_popularity"]
    cfg, split, model = _setup(over)
    train_llm(cfg, tmp_path / "run", model=model, split=split, progress=False, evaluate_test=False)
    want = torch.log1p(torch.as_tensor(training_counts(split), dtype=torch.float32))
    assert model.item_prior is not None and torch.equal(model.item_prior, want)
    assert want[1:].max() > 0 and want[0] == 0  # counts of the training prefixes; the pad item has none
    # the scores add the prior to the cosines: a zero user vector scores the prior alone
    assert model.item_table is not None
    assert torch.allclose(model.score_all(torch.zeros(1, model.item_table.shape[1])), want[None])
    # the training loss scores with it too (catalogue negatives)
    from thinkrec.llm.recpo import catalogue_target_logprobs, history_mask

    bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
    trainer, batch = LLMTrainer(model, bank, cfg), train_examples(split, cfg)[:2]
    users, items = torch.randn(2, model.item_table.shape[1]), model.item_table[[ex.target for ex in batch]]
    columns, masked = torch.tensor([0, 1]), history_mask([ex.seen for ex in batch], trainer.n_columns)
    got = trainer._target_logprobs(users, items, batch, columns, masked)
    ids = torch.tensor([ex.target for ex in batch])
    table, c_users, c_items = (model.centred(x) for x in (model.item_table, users, items))
    want_lp = catalogue_target_logprobs(c_users, table, c_items, ids, ids, masked, model.tau, want)
    assert torch.allclose(got, want_lp, atol=1e-6)
    assert not torch.allclose(got, catalogue_target_logprobs(c_users, table, c_items, ids, ids, masked, model.tau))
    # and with in-batch negatives, each column gets its own item's prior
    from thinkrec.llm.recpo import inbatch_target_logprobs

    trainer.cfg = cfg.model_copy(update={"recpo": cfg.recpo.model_copy(update={"negatives": "in_batch"})})
    got = trainer._target_logprobs(users, items, batch, columns, masked)
    want_lp = inbatch_target_logprobs(c_users, c_items, columns, model.tau, want[ids])
    assert torch.allclose(got, want_lp, atol=1e-6)
    assert not torch.allclose(got, inbatch_target_logprobs(c_users, c_items, columns, model.tau))
    # evaluate / serve load it from the checkpoint, without the split
    monkeypatch.setattr(run, "build_model", lambda cfg: tiny_model())
    _, loaded = load_llm_run(tmp_path / "run")
    assert loaded.item_prior is not None and torch.equal(loaded.item_prior, want)
    # a RecPO run must start from a cold start fit with the same prior
    plain, _, _ = _setup(["recpo.variant=no_reasoning"])
    other = plain.model_copy(update={"init_from": str(tmp_path / "run")})
    with pytest.raises(ThinkrecError, match="item_prior"):
        initialise_from(tiny_model(), other)
    # a checkpoint and a config that disagree are refused
    config = tmp_path / "run" / "config.json"
    config.write_text(config.read_text().replace('"log_popularity"', '"none"'))
    with pytest.raises(ThinkrecError, match="item prior"):
        load_llm_run(tmp_path / "run")


def test_the_item_head_starts_as_identity_trains_and_travels_with_the_checkpoint(tmp_path: Any) -> None:
    from thinkrec.errors import ThinkrecError
    from thinkrec.llm.run import load_llm_checkpoint, train_llm

    over = ["recpo.variant=no_reasoning", "recpo.negatives=catalogue", "recpo.item_side=fixed"]
    over += ["recpo.refresh_every=0", "model.item_head=linear", "model.center_items=true"]
    cfg, split, _ = _setup(over)
    model, plain = tiny_model(item_head="linear", center_items=True), tiny_model(center_items=True)
    assert model.item_head is not None and plain.item_head is None
    eye = torch.eye(model.item_head.weight.shape[0])
    assert torch.equal(model.item_head.weight, eye)
    bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
    LLMTrainer(model, bank, cfg).ensure_item_table()
    with pytest.raises(ValueError, match="item_head"):  # a trainer refuses a model built without the config's head
        LLMTrainer(plain, bank, cfg)
    no_head = cfg.model_copy(update={"model": cfg.model.model_copy(update={"item_head": "none"})})
    LLMTrainer(plain, bank, no_head).ensure_item_table()
    users = torch.randn(3, eye.shape[0])
    assert torch.allclose(model.score_all(users), plain.score_all(users), atol=1e-6)  # identity: the same scores
    train_llm(cfg, tmp_path / "run", model=model, split=split, progress=False, evaluate_test=False)
    assert not torch.equal(model.item_head.weight, eye)  # trained (the item side itself is fixed)
    with torch.no_grad():  # the scores compare centred users with the centred, then mapped rows
        mean = model.item_table[1:].mean(0)
        mapped = torch.nn.functional.normalize(model.item_head(model.item_table - mean), dim=-1)
    want = torch.nn.functional.normalize(users - mean, dim=-1) @ mapped.T / model.tau
    assert torch.allclose(model.score_all(users), want, atol=1e-5)
    fresh = tiny_model(item_head="linear", center_items=True)
    load_llm_checkpoint(tmp_path / "run" / "checkpoints", fresh)
    assert fresh.item_head is not None and torch.equal(fresh.item_head.weight, model.item_head.weight)
    with pytest.raises(ThinkrecError, match="item head"):
        load_llm_checkpoint(tmp_path / "run" / "checkpoints", tiny_model(center_items=True))


def test_validation_also_runs_after_the_last_step(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from thinkrec.llm.run import train_llm

    cfg, split, model = _setup(["recpo.variant=no_reasoning", "recpo.steps=3", "recpo.eval_every=2"])
    seen: list[int] = []

    def fake_evaluate(self: LLMTrainer, examples: list[Any], progress: bool = False, rebuild: bool = True) -> Any:
        seen.append(len(seen))
        metrics = {f"{m}@{k}": 0.1 for m in ("NDCG", "HR") for k in (5, 10, 20)}
        return {"metrics": metrics, "n_samples": len(examples), "ranks": [0] * len(examples), "cost": {}}

    monkeypatch.setattr(LLMTrainer, "evaluate", fake_evaluate)
    results = train_llm(cfg, tmp_path, model=model, split=split, progress=False, evaluate_test=False)
    assert [h["step"] for h in results["selection"]["history"]] == [0, 2, 3]
    assert results["selection"]["best_step"] == 0  # ties keep the earlier weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
@pytest.mark.parametrize("variant", ["recpo", "no_reasoning"])
def test_a_step_and_an_evaluation_on_cuda(variant: str) -> None:
    from thinkrec.llm.config import ModelSection
    from thinkrec.llm.hf import wrap
    from thinkrec.llm.run import evaluation
    from thinkrec.llm.tiny import tiny_llama, tiny_tokenizer

    cfg, split, _ = _setup([f"recpo.variant={variant}", "recpo.negatives=catalogue", "model.center_items=true"])
    tok = tiny_tokenizer()
    model = wrap(tiny_llama(len(tok), init_std=0.5), tok, ModelSection(lora_r=2, device="cuda", center_items=True))
    bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
    trainer = LLMTrainer(model, bank, cfg)
    trainer.ensure_item_table()
    assert model.device.type == "cuda" and model.item_table is not None and model.item_table.is_cuda
    log = trainer.step(train_examples(split, cfg)[:2], 1)
    assert log.grad_norm >= 0
    report = evaluation(trainer, split, cfg, "test", progress=False)
    assert report["cost"]["device"].startswith("cuda") and report["cost"]["peak_memory_kind"] == "cuda allocated"
