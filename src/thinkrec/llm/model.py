"""The dual-head model: one causal LM that writes reasoning (LM head) and embeds users and items (rec head).

- **User vector**: the final-layer hidden state (after the final norm, before the LM head) of the last real
  token of ``prompt + reasoning + <answer>``, located with the attention mask (never with a pad id).
- **Item vector**: the same for the item sequence (item prompt, assistant turn pre-filled with the marker).
- **Score**: ``cos(h_u, h_v) / tau``, plus ``item_prior[v]`` when the model carries one (``model.item_prior =
  "log_popularity"``: ``log(1 + training count)``, fixed, saved with the checkpoint). No parameters beyond
  the LM's, unless the item head below.
  With ``center_items`` both sides are shifted by the mean item vector first (``cos(h_u - m, h_v - m)``,
  ``m`` = the mean of the table's item rows, no gradient): a small LM's last hidden states are nearly
  parallel (mean pairwise cosine ~0.96 on ML-100K), so raw cosines differ in the third decimal; the shift
  keeps what tells items apart. With an item head (``model.item_head = "linear"``: a trained ``d x d`` map,
  identity at the start) item vectors are centred, then mapped: ``cos(h_u - m, W (h_v - m))``.
- **Device**: the model and every tensor it makes live on ``self.device`` (the LM's parameters'); the cached
  item table too. Results that leave the model (ranks, texts) are moved to the CPU by their callers.

Efficiency (what the 4x4 step profile showed matters on CPU):

- :meth:`DualHeadLM.encode_prefixed` runs a shared prefix once and its continuations as a batch on the
  expanded key/value cache -- one user's prompt is encoded once for its G rollouts, with gradients flowing
  through the cache; all item sequences share the system + instruction prefix, which is encoded once per
  table build.
- :meth:`DualHeadLM.generate` prefills each prompt once, repeats its cache G times and decodes all rollouts
  together, computing the LM head on the last position only, with stop-string detection on the text.
- The LM head is applied only to the positions whose log-probabilities are needed.
- With ``autocast`` the decoder's layers run in bfloat16 (a training step about 2.2x faster on a CPU with
  AVX512-BF16, SmolLM2-135M); the hidden states leave :meth:`DualHeadLM.hidden_states` in float32, so user and item
  vectors, scores and the LM head's log-probabilities (PPO ratios) are computed in float32 either way.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from thinkrec.llm.recpo import cosine_scores, pool_last, selective_logprobs


def cache_keyword(decoder: nn.Module) -> str:
    """The name of a Hugging Face decoder's key/value cache, in its inputs and outputs: ``cache`` in recent
    transformers (``past_key_values`` is deprecated there, to go in 5.40), ``past_key_values`` before."""
    return _cache_keyword(type(decoder).forward)


@functools.cache
def _cache_keyword(forward: Callable[..., Any]) -> str:  # one signature look-up per decoder class
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


@dataclass
class PrefixedOutput:
    """Hidden states of ``S`` continuations of one prefix."""

    hidden: torch.Tensor  # [S, T, d] hidden states of the continuation tokens
    mask: torch.Tensor  # [S, T] 1 for real continuation tokens (right padding)
    prefix_last: torch.Tensor  # [d] hidden state of the prefix's last token (predicts continuation token 0)
    pooled: torch.Tensor  # [S, d] the hidden state of every continuation's last real token
    tokens: torch.Tensor  # [S, T] continuation ids (pad where mask is 0)


@dataclass
class Rollouts:
    """Sampled completions, user-major: ``ids[g * n + j]`` is rollout ``j`` of prompt ``g``."""

    ids: list[list[int]]  # completion ids ending with the marker ids
    hit_marker: list[bool]  # False when the marker was appended (length limit or end of turn)
    texts: list[str]  # completion text up to and including the marker


def right_pad(
    seqs: list[list[int]], pad_id: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)  # built on the CPU, moved once (no per-row device copies)


def left_pad(
    seqs: list[list[int]], pad_id: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of all sequences."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


class DualHeadLM(nn.Module):
    """A Hugging Face causal LM (optionally LoRA-wrapped in place) used as reasoner and recommender."""

    def __init__(
        self,
        causal_lm: Any,
        tokenizer: Any,
        tau: float,
        pad_id: int,
        eos_ids: list[int],
        center_items: bool = False,
        autocast: bool = False,
        item_head: bool = False,
    ) -> None:
        super().__init__()
        self.lm = causal_lm  # the causal LM module; peft injects LoRA layers into it in place
        self.tokenizer = tokenizer
        self.tau = tau
        self.pad_id = pad_id
        self.eos_ids = set(eos_ids)
        self.center_items = center_items
        self.autocast = autocast  # the decoder's layers in bfloat16 (model.autocast = "bf16")
        self.item_table: torch.Tensor | None = None  # [N + 1, d], row = item id (row 0: the pad item)
        self.item_prior: torch.Tensor | None = None  # [N + 1] added to each item's logit (model.item_prior)
        self.item_head: nn.Linear | None = None  # model.item_head = "linear": W applied to item vectors
        if item_head:
            d = int(causal_lm.config.hidden_size)
            head = nn.Linear(d, d, bias=False, device=next(causal_lm.parameters()).device)
            nn.init.eye_(head.weight)
            self.item_head = head

    @property
    def device(self) -> torch.device:
        """Where the LM's weights are (and every tensor the model makes)."""
        device: torch.device = next(self.lm.parameters()).device
        return device

    def item_mean(self) -> torch.Tensor | None:
        """The mean item vector subtracted before cosines (``center_items``), from the cached table's item
        rows (not the pad row), detached; ``None`` when not centring or before the table exists."""
        if not self.center_items or self.item_table is None or self.item_table.shape[0] < 2:
            return None
        return self.item_table[1:].mean(dim=0).detach()

    def centred(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors - item_mean()`` (unchanged when not centring); gradients flow through ``vectors``."""
        mean = self.item_mean()
        return vectors if mean is None else vectors - mean.to(vectors.dtype)

    def item_space(self, vectors: torch.Tensor) -> torch.Tensor:
        """Item vectors as the scorer compares them: centred (``center_items``), then through the item head
        (when there is one); gradients flow through ``vectors`` and the head."""
        centred = self.centred(vectors)
        return centred if self.item_head is None else self.item_head(centred)

    # ---------------------------------------------------------------------------------------- forwards
    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.hidden_size)

    def decoder(self) -> Any:
        return self.lm.get_decoder()

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(hidden)  # type: ignore[no-any-return]

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Final-layer hidden states (after the final norm, float32 also under ``autocast``) and the key/value
        cache."""
        decoder = self.decoder()
        keyword = cache_keyword(decoder)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{keyword: past},
            )
        return out.last_hidden_state.float(), getattr(out, keyword)

    def encode(self, seqs: list[list[int]]) -> torch.Tensor:
        """Pooled last-token vectors of whole sequences (right-padded batch, no shared prefix)."""
        ids, mask = right_pad(seqs, self.pad_id, self.device)
        hidden, _ = self.hidden_states(ids, mask)
        return pool_last(hidden, mask)

    def prefix_cache(self, prefix: list[int]) -> tuple[torch.Tensor, Any]:
        """Run ``prefix`` once: its last hidden state and key/value cache (batch 1)."""
        ids = torch.as_tensor([prefix], dtype=torch.long, device=self.device)
        hidden, cache = self.hidden_states(ids, torch.ones_like(ids), use_cache=True)
        return hidden[0, -1], cache

    def encode_prefixed(
        self,
        prefix: list[int],
        continuations: list[list[int]],
        cached: tuple[torch.Tensor, Any] | None = None,
    ) -> PrefixedOutput:
        """Encode ``prefix + c`` for every continuation ``c`` with the prefix run once.

        ``cached`` (from :meth:`prefix_cache`, no-grad use only) skips the prefix forward; it is copied,
        never modified. With gradients enabled the prefix is recomputed and gradients flow through its cache.
        Every continuation must be non-empty.
        """
        if any(len(c) == 0 for c in continuations):
            raise ValueError("encode_prefixed needs non-empty continuations")
        if cached is None:
            prefix_last, cache = self.prefix_cache(prefix)
        else:
            prefix_last, cache = cached[0], copy.deepcopy(cached[1])
        n = len(continuations)
        if n > 1:
            cache.batch_repeat_interleave(n)
        ids, mask = right_pad(continuations, self.pad_id, self.device)
        p = len(prefix)
        full_mask = torch.cat([torch.ones(n, p, dtype=torch.long, device=self.device), mask], dim=1)
        positions = (p + torch.arange(ids.shape[1], device=self.device)).expand(n, -1)
        hidden, _ = self.hidden_states(ids, full_mask, position_ids=positions, past=cache, use_cache=True)
        return PrefixedOutput(hidden, mask, prefix_last, pool_last(hidden, mask), ids)

    def continuation_logprobs(self, out: PrefixedOutput) -> torch.Tensor:
        """Log-probabilities (temperature 1) of every continuation token, ``[S, T]`` (0 at padding)."""
        s = out.hidden.shape[0]
        predictors = torch.cat([out.prefix_last.expand(s, 1, -1), out.hidden[:, :-1]], dim=1)
        logits = self.lm_head(predictors)
        return selective_logprobs(logits, out.tokens) * out.mask

    @contextmanager
    def merged_adapters(self) -> Iterator[None]:
        """No-grad use only: LoRA deltas merged into the base weights, restored exactly afterwards.

        Sampling and table builds run the model hundreds of times per step; merged adapters skip peft's
        per-layer Python overhead and extra matmuls (the released code merges before syncing to vLLM too).
        A no-op without LoRA layers.
        """
        layers = [m for m in self.lm.modules() if hasattr(m, "merge") and hasattr(m, "lora_A")]
        saved = [m.base_layer.weight.data.clone() for m in layers]
        for m in layers:
            m.merge()
        try:
            yield
        finally:
            for m, w in zip(layers, saved, strict=True):
                m.unmerge()
                m.base_layer.weight.data.copy_(w)

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The adapter-free base model (LoRA layers switched off), trainable flags restored afterwards.
        A no-op without LoRA layers."""
        layers = [m for m in self.lm.modules() if hasattr(m, "enable_adapters") and hasattr(m, "lora_A")]
        flags = {n: p.requires_grad for n, p in self.lm.named_parameters()}
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
            for n, p in self.lm.named_parameters():
                p.requires_grad_(flags[n])

    def has_adapters(self) -> bool:
        return any(hasattr(m, "lora_A") for m in self.lm.modules())

    # ------------------------------------------------------------------------------------ item table
    @torch.no_grad()
    def build_item_table(
        self, item_seqs: list[list[int]], batch_size: int = 64, progress: bool = False, base: bool = False
    ) -> torch.Tensor:
        """Encode every item sequence (index = item id; row 0 = pad item, zeros) and cache the table.
        ``base``: with the adapters switched off (the adapter-free model's item vectors)."""
        with self.adapters_disabled() if base else self.merged_adapters():
            return self._build_item_table(item_seqs, batch_size, progress)

    def _build_item_table(self, item_seqs: list[list[int]], batch_size: int, progress: bool) -> torch.Tensor:
        was_training = self.training
        self.eval()
        n_prefix = max(0, min(common_prefix(item_seqs[1:]), min(len(s) for s in item_seqs[1:]) - 1))
        prefix = item_seqs[1][:n_prefix]
        cached = self.prefix_cache(prefix) if n_prefix else None
        table = torch.zeros(len(item_seqs), self.hidden_size, device=self.device)
        starts: Iterable[int] = range(1, len(item_seqs), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="item table", unit="batch", leave=False)
        for start in starts:
            chunk = item_seqs[start : start + batch_size]
            if cached is not None:
                vecs = self.encode_prefixed(prefix, [s[n_prefix:] for s in chunk], cached).pooled
            else:
                vecs = self.encode(chunk)
            table[start : start + len(chunk)] = vecs.float()
        self.item_table = table
        self.train(was_training)
        return table

    def encode_items(self, item_seqs: list[list[int]]) -> torch.Tensor:
        """Item vectors with gradients (training targets); the shared prefix is run once."""
        n_prefix = common_prefix(item_seqs)
        n_prefix = min(n_prefix, min(len(s) for s in item_seqs) - 1)
        if n_prefix <= 0:
            return self.encode(item_seqs)
        return self.encode_prefixed(item_seqs[0][:n_prefix], [s[n_prefix:] for s in item_seqs]).pooled

    def refresh_items(self, item_ids: list[int], vectors: torch.Tensor) -> None:
        """Write (detached) fresh vectors of ``item_ids`` into the cached table."""
        if self.item_table is not None:
            index = torch.as_tensor(item_ids, dtype=torch.long, device=self.item_table.device)
            self.item_table[index] = vectors.detach().float().to(self.item_table.device)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """``[R, N + 1]`` cosine / tau against the cached item table (column = item id), both sides centred
        when ``center_items``, plus the item prior when the model has one."""
        if self.item_table is None:
            raise RuntimeError("the item table has not been built; call build_item_table first")
        table = self.item_table
        with torch.no_grad():  # rewards and rankings: never differentiated
            items = self.item_space(table)
        scores = cosine_scores(self.centred(users.detach().float().to(table.device)), items, self.tau)
        return scores if self.item_prior is None else scores + self.item_prior.to(scores.device)

    # ------------------------------------------------------------------------------------ generation
    def _pick(
        self, logits: torch.Tensor, greedy: bool, temperature: float, top_k: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        if greedy:
            return logits.argmax(dim=-1)
        logits = logits.float() / temperature
        if 0 < top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def _finish(self, ids: list[int], marker: str, marker_ids: list[int]) -> tuple[list[int], bool, str]:
        """Cut a completion right after the first marker; append the marker when it never came."""
        decode = self.tokenizer.decode
        text = str(decode(ids, skip_special_tokens=False))
        at = text.find(marker)
        if at < 0:
            return ids + marker_ids, False, text + marker
        cut = text[: at + len(marker)]
        if text == cut:
            return ids, True, cut
        # the last token overshoots the marker: keep the sampled tokens that fit, re-encode the rest
        k = len(ids)
        while k > 0 and not cut.startswith(str(decode(ids[:k], skip_special_tokens=False))):
            k -= 1
        head = str(decode(ids[:k], skip_special_tokens=False))
        tail = list(self.tokenizer.encode(cut[len(head) :], add_special_tokens=False))
        return ids[:k] + tail, True, cut

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        *,
        max_new_tokens: int,
        marker: str,
        marker_ids: list[int],
        greedy: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """``n`` completions per prompt, stopping at ``marker`` (kept) or an end-of-turn token.

        Each prompt is prefilled once (left-padded batch); its cache is repeated ``n`` times and all
        rollouts decode together.
        """
        with self.merged_adapters():
            return self._generate(prompts, n, max_new_tokens, marker, marker_ids, greedy, temperature, top_k, generator)

    def _generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        marker: str,
        marker_ids: list[int],
        greedy: bool,
        temperature: float,
        top_k: int,
        generator: torch.Generator | None,
    ) -> Rollouts:
        was_training = self.training
        self.eval()
        device = self.device
        ids, mask = left_pad(prompts, self.pad_id, device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden, cache = self.hidden_states(ids, mask, position_ids=positions, use_cache=True)
        logits = self.lm_head(hidden[:, -1])
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            positions = positions.repeat_interleave(n, dim=0)
        rows = logits.shape[0]
        next_pos = positions[:, -1] + 1
        out: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        window = max(len(marker), len(marker_ids)) + 1
        for step in range(max_new_tokens):
            tokens = self._pick(logits, greedy, temperature, top_k, generator)
            picked = tokens.tolist()  # one device-to-host copy per decoding step
            for r in range(rows):
                if done[r]:
                    continue
                t = int(picked[r])
                if t in self.eos_ids:
                    done[r] = True
                    continue
                out[r].append(t)
                if marker in str(self.tokenizer.decode(out[r][-window:], skip_special_tokens=False)):
                    done[r] = True
            if all(done) or step == max_new_tokens - 1:
                break
            tokens = tokens.masked_fill(torch.as_tensor(done, device=device), self.pad_id)
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype, device=device)], dim=1)
            hidden, cache = self.hidden_states(
                tokens[:, None], mask, position_ids=next_pos[:, None], past=cache, use_cache=True
            )
            next_pos = next_pos + 1
            logits = self.lm_head(hidden[:, -1])
        self.train(was_training)
        finished = [self._finish(o, marker, marker_ids) for o in out]
        return Rollouts([f[0] for f in finished], [f[1] for f in finished], [f[2] for f in finished])
