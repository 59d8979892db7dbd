"""The dual-head model and full RecPO / no-reasoning steps with a tiny random Llama built in code (CPU, fast).

Skipped with a reason when the optional ``llm`` extra (transformers, peft) is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")
pytest.importorskip("peft", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")

from test_llm_prompts import toy_dataset
from thinkrec.data.split import SplitConfig, make_split
from thinkrec.errors import ConfigError, ThinkrecError
from thinkrec.llm.config import LLMRunConfig, ModelSection, load_llm_config
from thinkrec.llm.data import PromptBank, train_examples
from thinkrec.llm.hf import wrap
from thinkrec.llm.model import DualHeadLM, common_prefix
from thinkrec.llm.prompts import PromptBuilder
from thinkrec.llm.recpo import completion_span
from thinkrec.llm.run import initial_item_table, load_llm_checkpoint, save_llm_checkpoint, train_llm
from thinkrec.llm.tiny import tiny_llama, tiny_tokenizer
from thinkrec.llm.trainer import LLMTrainer

FAST = [
    "sample.train_users=6",
    "sample.eval_users=4",
    "sample.history_len=3",
    "recpo.users_per_step=2",
    "recpo.group_size=4",
    "recpo.max_new_tokens=6",
    "recpo.steps=2",
    "recpo.lr=0.01",
    "model.system_prompt=s",
    "model.max_item_tokens=16",
    "eval.item_batch_size=5",
    "eval.batch_size=3",
]


def tiny_model(finetune: str = "lora", seed: int = 0, **section: Any) -> DualHeadLM:
    tok = tiny_tokenizer()
    return wrap(tiny_llama(len(tok), seed=seed), tok, ModelSection(finetune=finetune, lora_r=2, **section))  # type: ignore[arg-type]


def test_tiny_tokenizer_and_prompt_builder() -> None:
    model = tiny_model()
    builder = PromptBuilder(model.tokenizer, system_prompt="s")
    ids = builder.user_ids("hi")
    assert (
        model.tokenizer.decode(ids)
        == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    gen = builder.generation_prompt_ids()
    reasoning = model.tokenizer.encode("ok", add_special_tokens=False)
    seq = ids + reasoning + builder.marker_ids
    start, end = completion_span(seq, gen, model.tokenizer.encode("<|im_end|>", add_special_tokens=False))
    assert (start, end) == (len(ids), len(seq))
    assert model.pad_id == model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.tokenizer.decode(builder.item_ids("x" * 50)).count("x") == builder.max_item_tokens - 0 or True


def test_encode_prefixed_matches_full_forward_and_logprobs() -> None:
    model = tiny_model()
    prefix = [1, 40, 41, 42, 5]
    conts = [[50, 51, 52], [60], [70, 71]]
    out = model.encode_prefixed(prefix, conts)
    full = model.encode([prefix + c for c in conts])
    assert torch.allclose(out.pooled, full, atol=1e-5)
    logp = model.continuation_logprobs(out)
    for row, cont in enumerate(conts):
        logits = model.lm(torch.tensor([prefix + cont])).logits[0]
        ref = torch.log_softmax(logits, -1)[len(prefix) - 1 : -1].gather(1, torch.tensor(cont)[:, None]).squeeze(1)
        assert torch.allclose(logp[row, : len(cont)], ref, atol=1e-5)
        assert (logp[row, len(cont) :] == 0).all()


def test_item_table_with_shared_prefix_equals_plain_encoding() -> None:
    model = tiny_model()
    seqs = [[0], [1, 2, 3, 10, 11], [1, 2, 3, 12], [1, 2, 3, 13, 14, 15]]
    assert common_prefix(seqs[1:]) == 3
    table = model.build_item_table(seqs, batch_size=2)
    assert torch.allclose(table[1:], model.encode(seqs[1:]).detach(), atol=1e-5)
    assert table[0].abs().sum() == 0
    with torch.no_grad():
        assert torch.allclose(model.encode_items(seqs[1:]), table[1:], atol=1e-5)


def test_generate_stops_at_marker_or_appends_it() -> None:
    model = tiny_model()
    builder = PromptBuilder(model.tokenizer, system_prompt="s")
    g = torch.Generator().manual_seed(0)
    r = model.generate(
        [builder.user_ids("a"), builder.user_ids("bb")],
        3,
        max_new_tokens=5,
        marker="<answer>",
        marker_ids=builder.marker_ids,
        temperature=1.0,
        top_k=10,
        generator=g,
    )
    assert len(r.ids) == 6
    for ids, text in zip(r.ids, r.texts, strict=True):
        assert ids[-len(builder.marker_ids) :] == builder.marker_ids
        assert text.endswith("<answer>") and model.tokenizer.decode(ids) == text
    # greedy decoding is deterministic and G copies of it are identical
    r1 = model.generate(
        [builder.user_ids("a")], 2, max_new_tokens=4, marker="<answer>", marker_ids=builder.marker_ids, greedy=True
    )
    assert r1.ids[0] == r1.ids[1]
    # _finish: the marker inside the sampled ids cuts after it
    ids = model.tokenizer.encode("ab<answer>cd", add_special_tokens=False)
    cut, hit, text = model._finish(ids, "<answer>", builder.marker_ids)
    assert hit and text == "ab<answer>" and model.tokenizer.decode(cut) == "ab<answer>"


def _setup(overrides: list[str], finetune: str = "lora") -> tuple[LLMRunConfig, Any, DualHeadLM]:
    cfg = load_llm_config(None, [*FAST, *overrides])
    split = make_split(toy_dataset(), SplitConfig(kind="loo"))
    return cfg, split, tiny_model(finetune)


@pytest.mark.parametrize("negatives", ["in_batch", "catalogue"])
def test_full_recpo_step_updates_lora_and_logs(negatives: str) -> None:
    cfg, split, model = _setup([f"recpo.negatives={negatives}"])
    bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
    trainer = LLMTrainer(model, bank, cfg)
    model.build_item_table(bank.item_ids, 5)
    before = {n: p.detach().clone() for n, p in model.lm.named_parameters() if p.requires_grad}
    stale = model.item_table.clone()  # type: ignore[union-attr]
    batch = train_examples(split, cfg)[:2]
    log = trainer.step(batch, 1)
    assert all(n.find("lora") >= 0 for n in before)
    changed = [n for n, p in model.lm.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "no LoRA weight moved"
    assert 0.0 <= log.reward <= 1.0 and 0.0 <= log.ndcg <= 1.0 and 0.0 < log.softmax < 1.0
    assert abs(log.advantage) < 1e-5 and log.advantage_abs > 0
    assert log.reasoning_len >= len(bank.builder.marker_ids) and log.grad_norm > 0
    assert set(log.seconds) == {"rollouts", "targets", "forward", "backward+step"}
    # the batch's target rows of the cached table were refreshed, others untouched
    table = model.item_table
    assert table is not None
    targets = sorted({ex.target for ex in batch})
    others = [i for i in range(1, table.shape[0]) if i not in targets]
    assert torch.equal(table[others], stale[others])
    assert not torch.equal(table[targets], stale[targets])


def test_token_loss_alone_moves_the_lm_only_with_per_rollout_pairing() -> None:
    """With the item loss switched off (relabel_topk=0 is not allowed, so compare gradients directly)."""
    from thinkrec.llm.recpo import group_advantages, token_policy_loss

    model = tiny_model()
    out = model.encode_prefixed([1, 40, 41, 5], [[50, 51], [52, 53], [54], [55, 56]])
    logp = model.continuation_logprobs(out)
    adv = group_advantages(torch.tensor([0.1, 0.5, 0.2, 0.9]), 4)
    params = [p for p in model.parameters() if p.requires_grad]
    g_per = torch.autograd.grad(
        token_policy_loss(logp, out.mask, adv, pairing="per_rollout"), params, retain_graph=True
    )
    g_code = torch.autograd.grad(token_policy_loss(logp, out.mask, adv, pairing="faithful_to_code"), params)
    assert max(float(g.abs().max()) for g in g_per) > 1e-4
    assert max(float(g.abs().max()) for g in g_code) < 1e-7


@pytest.mark.parametrize("negatives", ["in_batch", "catalogue"])
def test_no_reasoning_step_and_full_finetuning(negatives: str) -> None:
    cfg, split, model = _setup(
        ["recpo.variant=no_reasoning", "model.finetune=full", f"recpo.negatives={negatives}"], finetune="full"
    )
    bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
    trainer = LLMTrainer(model, bank, cfg)
    model.build_item_table(bank.item_ids, 5)
    log = trainer.step(train_examples(split, cfg)[:3], 1)
    assert log.loss > 0 and log.reasoning_len == 0 and log.grad_norm > 0


@pytest.mark.parametrize("variant", ["recpo", "no_reasoning"])
def test_train_llm_end_to_end_writes_run_and_checkpoint_roundtrips(tmp_path: Path, variant: str) -> None:
    cfg, split, model = _setup([f"recpo.variant={variant}", "recpo.eval_every=2"])
    results = train_llm(cfg, tmp_path, model=model, split=split, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {
        "reward",
        "advantage",
        "ndcg",
        "softmax",
        "reasoning_len",
        "loss_token",
        "loss_item",
    } <= set(rows[0])
    assert "valid" in rows[1]
    assert (tmp_path / "reward.png").stat().st_size > 1000
    test = results["test"]
    assert test["n_samples"] == 4 and set(test["metrics"]) == {f"{m}@{k}" for m in ("NDCG", "HR") for k in (5, 10, 20)}
    assert all(0 <= r < split.dataset.n_items for r in test["ranks"])
    fresh = tiny_model()
    load_llm_checkpoint(tmp_path / "checkpoints", fresh)
    for (n, p), (_, q) in zip(model.lm.named_parameters(), fresh.lm.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert fresh.item_table is not None and torch.equal(fresh.item_table, model.item_table)  # type: ignore[arg-type]


@pytest.mark.parametrize(("refresh_every", "builds"), [(0, 1), (1, 3), (2, 2)])
def test_item_table_is_rebuilt_every_refresh_every_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refresh_every: int, builds: int
) -> None:
    cfg, split, model = _setup(["recpo.variant=no_reasoning", "recpo.steps=3", f"recpo.refresh_every={refresh_every}"])
    calls: list[int] = []
    build = model.build_item_table
    monkeypatch.setattr(model, "build_item_table", lambda *a, **k: calls.append(1) or build(*a, **k))
    train_llm(cfg, tmp_path, model=model, split=split, progress=False, evaluate_test=False)
    assert len(calls) == builds  # the initial table, then one before each step s > 1 with (s - 1) % N == 0


def test_checkpoint_rejects_a_different_model(tmp_path: Path) -> None:
    from thinkrec.errors import ThinkrecError

    model = tiny_model()
    save_llm_checkpoint(tmp_path, model, {"x": 1})
    with pytest.raises(ThinkrecError):
        load_llm_checkpoint(tmp_path, tiny_model("full"))


def test_gradients_flow_through_the_shared_prompt_cache() -> None:
    model = tiny_model("full")
    prefix, conts = [1, 40, 41, 42, 5], [[50, 51, 52], [60]]
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(shared: bool) -> list[torch.Tensor]:
        if shared:
            out = model.encode_prefixed(prefix, conts)
            loss = out.pooled.pow(2).sum() + model.continuation_logprobs(out).sum()
        else:
            pooled = model.encode([prefix + c for c in conts])
            logp = []
            for c in conts:
                logits = model.lm(torch.tensor([prefix + c])).logits[0]
                logp.append(
                    torch.log_softmax(logits, -1)[len(prefix) - 1 : -1].gather(1, torch.tensor(c)[:, None]).sum()
                )
            loss = pooled.pow(2).sum() + torch.stack(logp).sum()
        return list(torch.autograd.grad(loss, params, allow_unused=True))

    for a, b in zip(grads(True), grads(False), strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


def test_merged_adapters_give_the_same_outputs_and_restore_weights_exactly() -> None:
    model = tiny_model()
    for name, p in model.lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # make the adapters matter
    before = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    seqs = [[1, 40, 41, 5], [1, 42, 5]]
    with torch.no_grad():
        plain = model.encode(seqs)
        with model.merged_adapters():
            merged = model.encode(seqs)
            moved = [n for n, p in model.lm.named_parameters() if "base_layer" in n and not torch.equal(p, before[n])]
            assert moved, "no adapter was merged"
    assert torch.allclose(plain, merged, atol=1e-4)
    for n, p in model.lm.named_parameters():
        assert torch.equal(p, before[n]), n


def test_fresh_table_steps_are_the_first_after_each_rebuild(tmp_path: Path) -> None:
    from thinkrec.llm.run import plot_rewards, table_is_fresh

    assert [s for s in range(1, 47) if table_is_fresh(s, 15)] == [1, 16, 31, 46]
    assert [s for s in range(1, 47) if table_is_fresh(s, 0)] == [1]
    log = [{"step": s, "reward": 0.1 * (s % 3)} for s in range(1, 8)]
    plot_rewards(log, tmp_path / "reward.png", refresh_every=3)
    assert (tmp_path / "reward.png").stat().st_size > 1000


def test_bf16_autocast_runs_the_decoder_in_bf16_and_hands_back_float32() -> None:
    plain, mixed = tiny_model("full"), tiny_model("full", autocast="bf16")
    seqs = [[1, 40, 41, 42, 5, 50], [1, 40, 60]]
    a, b = plain.encode(seqs), mixed.encode(seqs)
    assert b.dtype == torch.float32
    assert not torch.equal(a, b)  # the flag reaches the decoder
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    out = mixed.encode_prefixed([1, 40, 41], [[50, 51], [60]])
    assert out.hidden.dtype == torch.float32 and mixed.continuation_logprobs(out).dtype == torch.float32
    out.pooled.pow(2).sum().backward()  # gradients reach the float32 weights through the bf16 layers
    grads = [p.grad for p in mixed.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_lora_layers_puts_adapters_in_the_top_layers_only() -> None:
    model = tiny_model(lora_layers=1)  # the tiny Llama has 2 decoder layers
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in model.lm.named_parameters() if "lora_A" in n}
    assert adapted == {"1"}
    assert len([n for n, _ in tiny_model().lm.named_parameters() if "lora_A" in n]) == 2 * len(
        [n for n, _ in model.lm.named_parameters() if "lora_A" in n]
    )
    with pytest.raises(ThinkrecError, match="2 decoder layers"):
        tiny_model(lora_layers=3)


def test_model_autocast_and_lora_layers_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match=r"model\.autocast"):
        load_llm_config(None, ["model.autocast=fp16"])
    with pytest.raises(ConfigError, match=r"model\.lora_layers"):
        load_llm_config(None, ["model.lora_layers=0"])
    with pytest.raises(ConfigError, match=r"model\.finetune='lora'"):
        load_llm_config(None, ["model.finetune=full", "model.lora_layers=3"])
    assert load_llm_config(None, ["model.autocast=bf16", "model.lora_layers=8"]).model.lora_layers == 8


def test_hidden_states_leave_in_float32_whatever_the_decoder_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    model = tiny_model(autocast="bf16")

    class Bf16Decoder(torch.nn.Module):  # a decoder whose last hidden states come out in bfloat16
        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, use_cache: Any, **kw: Any) -> Any:
            hidden = torch.ones(*input_ids.shape, 4, dtype=torch.bfloat16)
            return SimpleNamespace(last_hidden_state=hidden, past_key_values=None)

    monkeypatch.setattr(model, "decoder", lambda: Bf16Decoder())
    ids = torch.tensor([[1, 2, 3]])
    hidden, _ = model.hidden_states(ids, torch.ones_like(ids))
    assert hidden.dtype == torch.float32


def test_bf16_lora_model_generates_and_scores_like_the_float32_one() -> None:
    plain, mixed = tiny_model(), tiny_model(autocast="bf16")
    builder = PromptBuilder(plain.tokenizer, system_prompt="s")
    prompts = [builder.user_ids("a"), builder.user_ids("bb")]
    args: dict[str, Any] = {"max_new_tokens": 4, "marker": "<answer>", "marker_ids": builder.marker_ids}
    a, b = plain.generate(prompts, 2, greedy=True, **args), mixed.generate(prompts, 2, greedy=True, **args)
    assert all(ids[-len(builder.marker_ids) :] == builder.marker_ids for ids in b.ids)
    # a random tiny LM's greedy tokens may flip under bf16; the vectors of the same sequences stay close
    seqs = [p + builder.marker_ids for p in prompts]
    cos = torch.nn.functional.cosine_similarity(plain.encode(seqs), mixed.encode(seqs))
    assert len(a.ids) == len(b.ids) == 4 and cos.min() > 0.99


def test_cached_base_item_table_is_kept_per_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "model"  # what the cache key reads of a model directory: its path and weight files
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"0")
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(tmp_path / "cache"))
    tables = {}
    for precision in ("none", "bf16", "none"):
        cfg, split, _ = _setup([f"model.path={model_dir}", f"model.autocast={precision}"])
        model = tiny_model("full", autocast=precision)
        bank = PromptBank(split.dataset, cfg, PromptBuilder(model.tokenizer, system_prompt="s", max_item_tokens=16))
        initial_item_table(model, bank, cfg, cache=True)
        tables.setdefault(precision, []).append(model.item_table)
    assert len(list((tmp_path / "cache" / "llm-item-tables").glob("*.safetensors"))) == 2
    assert torch.equal(tables["none"][0], tables["none"][1])  # the second float32 run read the cached one
    assert not torch.equal(tables["none"][0], tables["bf16"][0])
