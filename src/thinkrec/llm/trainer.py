"""One RecPO step, the no-reasoning step, and full-catalogue evaluation of the dual-head model.

A RecPO step on ``B`` users (r2ec.md §4.3, single process):

1. **Rollouts**: every prompt is prefilled once and ``G`` completions are sampled together (no-grad).
2. **Targets**: the ``B`` target item sequences are encoded *with* gradients once (shared prefix run once).
   With ``recpo.item_side = "fixed"`` they are the fixed table's rows instead (no gradient, no refresh).
3. **Per group** (one user = one mini-batch, as in the code): the prompt is encoded once with gradients and
   its ``G`` completions run on the repeated cache; the same forward gives the completion log-probs and the
   user vectors. Rewards use the *detached* user vectors of this forward against the full cached table with
   the history masked -- the policy has not changed since sampling (one optimiser step per RecPO step), so
   no separate no-grad scoring pass is needed. Advantages, top-k mask and both losses follow.
4. **Refresh**: the targets' detached vectors are written into the cached table *after* the rewards
   (``recpo.reward_table = "before_refresh"``, the released code's order: every row the reward ranks was
   encoded by the same, older model). ``"after_refresh"`` writes them before step 3, so the target is the
   one fresh row among stale ones -- a reward that partly measures freshness.
5. The gradient of the sum of the group losses (what plain DDP / one GPU does: gradients of the ``B``
   mini-batches add up), gradient clipping, one AdamW step.

Micro-batching (``recpo.micro_users``): steps 3 and 5 run in chunks of at most that many users -- each
chunk's forward is followed at once by its backward, so only one chunk's activations are held -- and the
gradients accumulate before the one optimiser step. Everything that spans the whole step is computed once
for the whole step first: the rollouts, the target vectors (step 2; the chunks see a detached copy whose
gradient is collected and back-propagated through the target encoding once, after the last chunk) and the
cached table the rewards and the catalogue softmax rank against. Advantages are normalised within one user's
group, and a chunk holds whole users, so they do not depend on the chunking; every loss is a per-user term
(RecPO) or a sum over users divided by the whole step's ``B`` (no reasoning), so the accumulated gradient is
the full step's up to float summation order.

Data-parallel (``accelerate launch``, see :mod:`thinkrec.llm.distributed`): every replica encodes all ``B``
targets (so in-batch negatives and the cached table are the same everywhere), runs steps 1 and 3 for its
share of the users, and the gradients are summed over replicas before step 4 -- the same update as one
process on the whole batch. Evaluation splits the samples and gathers their ranks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from thinkrec.eval.metrics import metrics_from_ranks, target_ranks
from thinkrec.llm.config import LLMRunConfig
from thinkrec.llm.data import Example, PromptBank
from thinkrec.llm.distributed import Replicas
from thinkrec.llm.model import DualHeadLM
from thinkrec.llm.recpo import (
    catalogue_target_logprobs,
    contrastive_loss,
    format_bonus,
    fused_reward,
    group_advantages,
    history_mask,
    inbatch_target_logprobs,
    item_loss,
    mask_scores,
    token_policy_loss,
    topk_mask,
)


@dataclass
class StepLog:
    """What one step logs (means over the step's rollouts unless said otherwise)."""

    step: int
    reward: float = 0.0
    advantage: float = 0.0
    advantage_abs: float = 0.0
    ndcg: float = 0.0
    softmax: float = 0.0
    reasoning_len: float = 0.0
    marker_rate: float = 0.0
    loss: float = 0.0
    loss_token: float = 0.0
    loss_item: float = 0.0
    grad_norm: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - start
        return now


class LLMTrainer:
    """Runs RecPO (or no-reasoning) steps and evaluations for a :class:`DualHeadLM`."""

    def __init__(
        self, model: DualHeadLM, bank: PromptBank, cfg: LLMRunConfig, replicas: Replicas | None = None
    ) -> None:
        self.model = model
        self.replicas = replicas or Replicas()
        self.bank = bank
        self.cfg = cfg
        if (model.item_prior is None) != (cfg.model.item_prior == "none"):
            has = "has a prior" if model.item_prior is not None else "has none"
            raise ValueError(
                f"model.item_prior={cfg.model.item_prior!r} but the model {has}"
                " (thinkrec.llm.run.item_prior builds it from the split)"
            )
        if (model.item_head is None) != (cfg.model.item_head == "none"):
            raise ValueError(f"model.item_head={cfg.model.item_head!r} but the model was built otherwise")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.params = params
        self.replicas.broadcast_params(params)
        r = cfg.recpo
        self.optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / r.warmup_steps) if r.warmup_steps else 1.0
        )
        # replicas sample different rollouts for their different users
        self.device = model.device
        self.generator = torch.Generator(device=self.device).manual_seed(r.seed + 7919 * self.replicas.rank)
        self.n_columns = bank.ds.n_items + 1
        self.cutoff = min(r.ndcg_cutoff, bank.ds.n_items)

    # ---------------------------------------------------------------------------------------- training
    def step(self, examples: list[Example], step: int) -> StepLog:
        if self.cfg.recpo.variant == "no_reasoning":
            return self.step_no_reasoning(examples, step)
        return self.step_recpo(examples, step)

    def _chunk_size(self, n_users: int) -> int:
        """Users per forward+backward chunk (``recpo.micro_users``; unset = all ``n_users`` at once)."""
        micro = self.cfg.recpo.micro_users
        return max(1, min(micro, n_users) if micro else n_users)

    @staticmethod
    def _detached_items(items: torch.Tensor) -> torch.Tensor:
        """A leaf copy of the step's target vectors for the chunks' losses: their gradients collect in its
        ``.grad`` and go through the target encoding once (:meth:`_backward_items`)."""
        return items.detach().requires_grad_(True) if items.requires_grad else items

    @staticmethod
    def _backward_items(items: torch.Tensor, leaf: torch.Tensor) -> None:
        if leaf is not items and leaf.grad is not None:
            items.backward(leaf.grad)  # type: ignore[no-untyped-call]

    def _optimise(self, log: StepLog) -> None:
        """Sum the (already accumulated) gradients over replicas, clip, one AdamW step."""
        self.replicas.sum_grads(self.params)
        clip = self.cfg.recpo.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip else float("inf"))
        log.grad_norm = float(norm)
        self.optimizer.step()
        self.scheduler.step()

    def ensure_item_table(self, rebuild: bool = False, progress: bool = False) -> None:
        """Build the cached item table when missing, or rebuild it when asked -- except a fixed item side,
        whose table (the adapter-free model's) is built once and kept."""
        model, batch = self.model, self.cfg.eval.item_batch_size
        if self.cfg.recpo.item_side == "fixed":
            if model.item_table is None:
                if not model.has_adapters() and self.cfg.model.finetune == "full":
                    raise RuntimeError("a fixed item side under full fine-tuning needs its saved item table")
                model.build_item_table(self.bank.item_ids, batch, progress, base=True)
            return
        if rebuild or model.item_table is None:
            model.build_item_table(self.bank.item_ids, batch, progress)

    def _targets(self, examples: list[Example]) -> torch.Tensor:
        """Target item vectors: freshly encoded with gradients, or the fixed table's rows (no gradient)."""
        self.ensure_item_table()
        ids = [ex.target for ex in examples]
        if self.cfg.recpo.item_side == "fixed":
            assert self.model.item_table is not None
            return self.model.item_table[torch.as_tensor(ids, device=self.model.item_table.device)]
        return self.model.encode_items([self.bank.item_ids[i] for i in ids])

    def _refresh(self, examples: list[Example], vecs: torch.Tensor) -> None:
        """Write the step's target vectors (detached) into the cached table (not for a fixed item side)."""
        if self.cfg.recpo.item_side == "trained":
            self.model.refresh_items([ex.target for ex in examples], vecs)

    def _target_logprobs(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        examples: list[Example],
        columns: torch.Tensor,
        masked: torch.Tensor,
    ) -> torch.Tensor:
        """Each user row's log-probability of its target (``columns``: its column among the step's targets
        ``items``), over the step's targets or over the whole catalogue (``recpo.negatives``)."""
        model = self.model
        tau = model.tau
        # centred on the mean of the table as the reward saw it (a no-op without model.center_items); items
        # then through the item head (with its gradient, every row of the table too)
        users, items = model.centred(users), model.item_space(items)
        ids = torch.as_tensor([ex.target for ex in examples], dtype=torch.long, device=users.device)
        prior = None if model.item_prior is None else model.item_prior.to(users.device)
        if self.cfg.recpo.negatives == "in_batch":
            return inbatch_target_logprobs(users, items, columns, tau, None if prior is None else prior[ids])
        assert model.item_table is not None  # built by _targets
        table = model.item_space(model.item_table.detach())  # a gradient reaches the head only, never the table
        return catalogue_target_logprobs(users, table, items, ids, ids[columns], masked, tau, prior)

    def step_recpo(self, examples: list[Example], step: int) -> StepLog:
        r = self.cfg.recpo
        model, g = self.model, r.group_size
        timer, t = Timer(), time.perf_counter()
        log = StepLog(step)
        own = self.replicas.shard(list(enumerate(examples)))  # (column of the target, example)
        prompts = [self.bank.user_ids(ex) for _, ex in own]
        marker_ids = self.bank.builder.marker_ids
        rollouts = model.generate(
            prompts,
            g,
            max_new_tokens=r.max_new_tokens,
            marker=self.cfg.prompt.answer_marker,
            marker_ids=marker_ids,
            temperature=r.temperature,
            top_k=r.top_k,
            generator=self.generator,
        )
        t = timer.add("rollouts", t)
        model.train()
        items = self._targets(examples)
        if r.reward_table == "after_refresh":
            self._refresh(examples, items)
        t = timer.add("targets", t)
        self.optimizer.zero_grad(set_to_none=True)
        leaf = self._detached_items(items)
        size = self._chunk_size(len(own))
        rewards_all, adv_all, ndcg_all, soft_all = [], [], [], []
        chunk = torch.zeros((), device=self.device)
        total, tok_sum, item_sum = 0.0, 0.0, 0.0
        for u, (column, ex) in enumerate(own):
            completions = rollouts.ids[u * g : (u + 1) * g]
            out = model.encode_prefixed(prompts[u], completions)
            logprobs = model.continuation_logprobs(out)
            scores = model.score_all(out.pooled)
            masked = history_mask([ex.seen] * g, self.n_columns, device=self.device)
            targets = torch.full((g,), ex.target, dtype=torch.long, device=self.device)
            bonus = format_bonus(rollouts.hit_marker[u * g : (u + 1) * g], r.format_reward) if r.format_reward else None
            rewards = fused_reward(scores, targets, masked, r.beta, self.cutoff, bonus)
            adv = group_advantages(rewards.reward, g, r.advantage, std_floor=r.adv_std_floor)
            top = topk_mask(adv, g, r.relabel_topk)
            l_tok = token_policy_loss(logprobs, out.mask, adv, r.clip_low, r.clip_high, r.pairing)
            columns = torch.full((g,), column, dtype=torch.long, device=self.device)
            p_own = self._target_logprobs(out.pooled, leaf, examples, columns, masked)
            l_item = item_loss(p_own, adv, top, r.clip_low, r.clip_high, r.pairing)
            chunk = chunk + l_tok + l_item
            tok_sum += float(l_tok.detach())
            item_sum += float(l_item.detach())
            rewards_all.append(rewards.reward)
            adv_all.append(adv)
            ndcg_all.append(rewards.ndcg)
            soft_all.append(rewards.softmax)
            del out, logprobs, l_tok, l_item, p_own
            if (u + 1) % size == 0 or u + 1 == len(own):  # the chunk's backward frees its activations
                t = timer.add("forward", t)
                total += float(chunk.detach())
                chunk.backward()  # type: ignore[no-untyped-call]
                chunk = torch.zeros((), device=self.device)
                t = timer.add("backward+step", t)
        if r.reward_table == "before_refresh":
            self._refresh(examples, items)
        t = timer.add("forward", t)
        self._backward_items(items, leaf)
        self._optimise(log)
        timer.add("backward+step", t)
        local = {
            "reward": torch.cat(rewards_all).tolist() if rewards_all else [],
            "adv": torch.cat(adv_all).tolist() if adv_all else [],
            "ndcg": torch.cat(ndcg_all).tolist() if ndcg_all else [],
            "softmax": torch.cat(soft_all).tolist() if soft_all else [],
            "length": [len(c) for c in rollouts.ids],
            "marker": [float(h) for h in rollouts.hit_marker],
            "loss": [total, tok_sum, item_sum],
        }
        every = self.replicas.gather(local)
        pooled = {key: [v for part in every for v in part[key]] for key in local if key != "loss"}
        log.reward = float(np.mean(pooled["reward"]))
        log.advantage = float(np.mean(pooled["adv"]))
        log.advantage_abs = float(np.mean(np.abs(pooled["adv"])))
        log.ndcg = float(np.mean(pooled["ndcg"]))
        log.softmax = float(np.mean(pooled["softmax"]))
        log.reasoning_len = float(np.mean(pooled["length"]))
        log.marker_rate = float(np.mean(pooled["marker"]))
        log.loss, log.loss_token, log.loss_item = (sum(part["loss"][i] for part in every) for i in range(3))
        log.seconds = timer.seconds
        return log

    def step_no_reasoning(self, examples: list[Example], step: int) -> StepLog:
        """The baseline: in-batch InfoNCE between prompt+marker vectors and target item vectors."""
        model = self.model
        timer, t = Timer(), time.perf_counter()
        log = StepLog(step)
        model.train()
        items = self._targets(examples)
        if self.cfg.recpo.reward_table == "after_refresh":
            self._refresh(examples, items)
        own = self.replicas.shard(list(enumerate(examples)))
        self.optimizer.zero_grad(set_to_none=True)
        leaf = self._detached_items(items)
        size = self._chunk_size(len(own))
        vectors, total = [], 0.0
        for start in range(0, len(own), size):
            part = own[start : start + size]
            users = model.encode([self.bank.builder.with_marker(self.bank.user_ids(ex)) for _, ex in part])
            columns = torch.as_tensor([column for column, _ in part], dtype=torch.long, device=self.device)
            masked = history_mask([ex.seen for _, ex in part], self.n_columns, device=self.device)
            # the mean over the whole batch, as sums of this chunk's rows / B (chunks' and replicas' gradients
            # add up)
            loss = contrastive_loss(self._target_logprobs(users, leaf, examples, columns, masked)) * (
                len(part) / len(examples)
            )
            vectors.append(users.detach())
            total += float(loss.detach())
            del users
            t = timer.add("forward", t)
            loss.backward()  # type: ignore[no-untyped-call]
            t = timer.add("backward+step", t)
        with torch.no_grad():  # the reward of the whole step's user vectors at once (as without chunks)
            scores = model.score_all(torch.cat(vectors))
            targets = torch.as_tensor([ex.target for _, ex in own], device=self.device)
            masked = history_mask([ex.seen for _, ex in own], self.n_columns, device=self.device)
            rewards = fused_reward(scores, targets, masked, 0.0, self.cutoff)
            del scores
        if self.cfg.recpo.reward_table == "before_refresh":
            self._refresh(examples, items)
        t = timer.add("forward", t)
        self._backward_items(items, leaf)
        self._optimise(log)
        timer.add("backward+step", t)
        every = self.replicas.gather((rewards.reward.tolist(), rewards.ndcg.tolist(), rewards.softmax.tolist(), total))
        log.reward = float(np.mean([v for part in every for v in part[0]]))
        log.ndcg = float(np.mean([v for part in every for v in part[1]]))
        log.softmax = float(np.mean([v for part in every for v in part[2]]))
        log.loss = log.loss_item = sum(part[3] for part in every)
        log.seconds = timer.seconds
        return log

    # -------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def user_vectors(self, examples: list[Example], reasoning: bool) -> tuple[torch.Tensor, list[str], list[bool]]:
        """User vectors (greedy reasoning first when ``reasoning``), the reasoning texts, and per text whether
        the model wrote the answer marker itself (False where the length limit cut it and the marker was
        appended, and without reasoning)."""
        model = self.model
        prompts = [self.bank.user_ids(ex) for ex in examples]
        if not reasoning:
            vectors = model.encode([self.bank.builder.with_marker(p) for p in prompts])
            return vectors, [""] * len(examples), [False] * len(examples)
        rollouts = model.generate(
            prompts,
            1,
            max_new_tokens=self.cfg.recpo.max_new_tokens,
            marker=self.cfg.prompt.answer_marker,
            marker_ids=self.bank.builder.marker_ids,
            greedy=True,
        )
        vectors = model.encode([p + c for p, c in zip(prompts, rollouts.ids, strict=True)])
        return vectors, rollouts.texts, rollouts.hit_marker

    @torch.no_grad()
    def evaluate(self, examples: list[Example], progress: bool = False, rebuild: bool = True) -> dict[str, Any]:
        """HR/NDCG@ks on the full catalogue (pad item and, if configured, history masked), per-sample ranks,
        and the inference cost (``cost``: seconds per user for reasoning and for scoring, generated tokens
        per second, peak memory)."""
        model = self.model
        model.eval()
        progress = progress and self.replicas.is_main
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.ensure_item_table(rebuild, progress)
        t_items = time.perf_counter() - t0
        reasoning = self.cfg.recpo.variant == "recpo"
        examples = self.replicas.shard(examples)
        ranks: list[np.ndarray] = []
        lengths: list[int] = []
        texts: list[str] = []
        ended: list[bool] = []
        t_reason, t_score = 0.0, 0.0
        bs = self.cfg.eval.batch_size
        starts: Iterable[int] = range(0, len(examples), bs)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="evaluate", unit="batch", leave=False)
        for start in starts:
            part = examples[start : start + bs]
            t = time.perf_counter()
            users, part_texts, part_ended = self.user_vectors(part, reasoning)
            self._sync()
            t_reason += time.perf_counter() - t
            t = time.perf_counter()
            texts.extend(part_texts)
            ended.extend(part_ended)
            lengths.extend(len(self.model.tokenizer.encode(x, add_special_tokens=False)) for x in part_texts)
            scores = model.score_all(users)
            seen = [ex.seen if self.cfg.eval.mask_history else [] for ex in part]
            scores = mask_scores(scores, history_mask(seen, self.n_columns, device=scores.device))
            targets = torch.as_tensor([ex.target for ex in part], device=scores.device)
            ranks.append(target_ranks(scores, targets).cpu().numpy())
            t_score += time.perf_counter() - t
        own_ranks = np.concatenate(ranks).tolist() if ranks else []
        every = self.replicas.gather((own_ranks, texts, lengths, t_reason, t_score, ended))
        all_ranks = np.asarray(self.replicas.unshard([part[0] for part in every]), dtype=np.int64)
        texts = self.replicas.unshard([part[1] for part in every])
        lengths = self.replicas.unshard([part[2] for part in every])
        ended = self.replicas.unshard([part[5] for part in every])
        model.train()
        n = max(1, len(all_ranks))
        reason_s, score_s = sum(part[3] for part in every), sum(part[4] for part in every)
        tokens = int(sum(lengths))
        return {
            "metrics": {k: v for k, v in metrics_from_ranks(all_ranks, self.cfg.eval.ks).items() if "MRR" not in k},
            "n_samples": len(all_ranks),
            "ranks": all_ranks.tolist(),
            "reasoning_len": float(np.mean(lengths)) if reasoning and lengths else 0.0,
            "marker_rate": float(np.mean(ended)) if reasoning and ended else 0.0,
            "examples": texts[:5],
            "seconds": {"item_table": t_items, "total": time.perf_counter() - t0},
            "cost": {
                "device": str(self.device),
                "processes": self.replicas.world,
                "batch_size": bs,
                "seconds_per_user": (reason_s + score_s) / n,
                "reasoning_seconds_per_user": reason_s / n,
                "scoring_seconds_per_user": score_s / n,
                "generated_tokens": tokens,
                "tokens_per_second": tokens / reason_s if reasoning and reason_s > 0 else 0.0,
                **peak_memory(self.device),
                "note": (
                    "reasoning = greedy generation (recpo) plus the user-vector forward (the prompt forward"
                    " alone for no_reasoning); scoring = full-catalogue cosines, masking and ranks; seconds"
                    " summed over processes; the item table build is excluded (seconds.item_table)"
                ),
            },
        }

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process: the GPU's allocated peak since the evaluation began on CUDA, else the
    process's peak resident set (ru_maxrss, since the process started: an upper bound for the evaluation)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_kind": "cuda allocated"}
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"peak_memory_mb": mb, "peak_memory_kind": "process max RSS (since start)"}
