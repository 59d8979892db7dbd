"""Full-catalogue evaluation, chunked so memory stays bounded."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from thinkrec.blocking import rows_per_block
from thinkrec.data.batches import eval_histories, trim
from thinkrec.data.split import EvalSamples, Split
from thinkrec.errors import ThinkrecError
from thinkrec.eval.metrics import metrics_from_ranks, target_ranks
from thinkrec.eval.protocol import EvalConfig
from thinkrec.models.model import SeqRecModel
from thinkrec.parallel import resolve_workers, row_workers
from thinkrec.precision import warn_slow_bf16
from thinkrec.storage import atomic_write_bytes


@dataclass
class EvalResult:
    """Ranks of every sample for every reasoning step (``[K+1, n]``) and for the chosen inference mode."""

    ranks: np.ndarray  # int64 [n] for the configured inference mode
    step_ranks: np.ndarray  # int64 [K+1, n]; row k scores with step k alone
    mean_ranks: np.ndarray | None  # int64 [n] when K > 0: scoring with the mean of steps
    mode: str = "last"  # the inference mode of ``ranks``: 'last', 'mean' or 'step <k>'

    def metrics(self, ks: list[int]) -> dict[str, float]:
        return metrics_from_ranks(self.ranks, ks)

    def save(self, path: Path) -> None:
        """Write the per-sample ranks to ``path`` (``.npz``, atomically; uint16 when they fit, so a Beauty
        test set takes ~100 KB): significance tests and subgroup analyses read them without the model."""
        named = {"ranks": self.ranks, "step_ranks": self.step_ranks}
        if self.mean_ranks is not None:
            named["mean_ranks"] = self.mean_ranks
        top = max(int(a.max(initial=0)) for a in named.values())
        dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.int64
        arrays = {name: a.astype(dtype) for name, a in named.items()}
        buffer = io.BytesIO()
        arrays["mode"] = np.array(self.mode)
        np.savez_compressed(buffer, allow_pickle=False, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> EvalResult:
        """The ranks :meth:`save` wrote (as int64)."""
        try:
            with np.load(path) as arrays:
                return cls(
                    ranks=arrays["ranks"].astype(np.int64),
                    step_ranks=arrays["step_ranks"].astype(np.int64),
                    mean_ranks=arrays["mean_ranks"].astype(np.int64) if "mean_ranks" in arrays else None,
                    mode=str(arrays["mode"]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ThinkrecError(
                f"{path}: not a ranks file written by thinkrec ({exc}); delete it and re-evaluate"
            ) from exc


def _ranks(
    model: SeqRecModel,
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    history: torch.Tensor | None,
) -> np.ndarray:
    """Pessimistic 0-based rank of each target column; history items are set to -inf when given.

    Scores are computed in cache-sized row blocks; each block's target score is read from the same
    block, so ties are judged on identical numbers. The scorer's temperature is left out: dividing by a
    positive number does not change an order, and it would cost a pass over every block.
    """
    ranks = torch.empty(len(users), dtype=torch.long)
    block = rows_per_block(items.shape[0])
    users, items = model.scorer.prepare(users, items)  # e.g. cosine: normalised once, not per block
    for start in range(0, len(users), block):
        rows = slice(start, start + block)
        scores = (users[rows] @ items.T).float()
        if history is not None:
            # History ids are 1-based item ids; padding (0) is skipped.
            hist = history[rows]
            index = torch.arange(len(hist))[:, None].expand_as(hist)
            real = hist > 0
            scores[index[real], hist[real] - 1] = float("-inf")
        ranks[rows] = target_ranks(scores, targets[rows], overwrite=True)
    result: np.ndarray = ranks.numpy()
    return result


def encode_in_blocks(model: SeqRecModel, inputs: torch.Tensor, steps: int | None, cfg: EvalConfig) -> torch.Tensor:
    """User states ``[B, K+1, d]`` of left-padded histories ``inputs [B, W]``, encoded in passes of at most
    ``cfg.encode_tokens`` positions: one pass over thousands of histories streams every activation through
    main memory (ML-100K's 943 x 50 test histories: several times slower than in passes), while passes of a
    few dozen rows pay every operation's fixed cost many times."""
    # one autocast region for all passes: the weights are cast to bf16 once, not once per pass
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
        return model.encode_passes(inputs, pass_rows(inputs, cfg), steps).float()


def pass_rows(inputs: torch.Tensor | np.ndarray, cfg: EvalConfig) -> int:
    """Rows of each encoder pass over histories ``inputs [B, W]`` (:func:`encode_in_blocks`)."""
    return max(1, cfg.encode_tokens // max(1, inputs.shape[1]))


def history_chunks(
    split: Split, samples: EvalSamples, max_len: int, size: int
) -> Iterator[tuple[np.ndarray, EvalSamples, np.ndarray]]:
    """The evaluation's chunks of at most ``size`` samples, shortest history first (so each chunk is trimmed to
    little padding): sample indices, the samples, and their left-padded histories ``[n, max_len]``."""
    order = np.argsort(np.minimum(samples.positions, max_len), kind="stable")
    for start in range(0, len(samples), size):
        sl = order[start : start + size]
        part = samples.subset(sl)
        yield sl, part, eval_histories(split, part, max_len)


def chunk_size(cfg: EvalConfig, n_items: int) -> int:
    budget = cfg.memory_budget_mb * 2**20 // (4 * max(1, n_items))
    return max(1, min(cfg.batch_size, budget))


@torch.no_grad()
def evaluate(
    model: SeqRecModel,
    split: Split,
    samples: EvalSamples,
    cfg: EvalConfig,
    steps: int | None = None,
    progress: bool = False,
    per_step: bool = True,
) -> EvalResult:
    """Rank every sample's target among all items, in chunks of at most ``cfg.memory_budget_mb``.

    With ``per_step`` (default) every reasoning step is also scored on its own (for step curves and the
    oracle analysis); without it only the configured inference mode is scored (what serving costs).
    """
    model.eval()
    if cfg.autocast == "bf16":
        warn_slow_bf16("eval.autocast")
    max_len = model.backbone.max_len
    n = len(samples)
    size = chunk_size(cfg, model.n_items)
    k_plus_1 = (steps if steps is not None else model.reasoning_steps) + 1
    # 'auto' is resolved from reasoning.kind by RunConfig; a bare EvalConfig treats it as 'last'.
    mode, step = (cfg.inference, cfg.inference_step) if k_plus_1 > 1 else ("last", None)
    mode = "last" if mode == "auto" else mode
    if mode == "step" and (step is None or not 0 <= step < k_plus_1):
        raise ThinkrecError(f"eval.inference_step {step} is outside the steps evaluated (0..{k_plus_1 - 1})")
    step_ranks = np.zeros((k_plus_1, n), dtype=np.int64)
    mean_ranks = np.zeros(n, dtype=np.int64) if k_plus_1 > 1 else None
    ranks = np.zeros(n, dtype=np.int64)
    chunks: Iterator[tuple[np.ndarray, EvalSamples, np.ndarray]] = history_chunks(split, samples, max_len, size)
    n_chunks = -(-n // size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="evaluate", unit="chunk", leave=False, total=n_chunks)
    items = model.item_vectors()

    # a piece: sample indices, the samples, their histories trimmed to the chunk's width, and untrimmed
    Piece = tuple[np.ndarray, EvalSamples, np.ndarray, np.ndarray]

    def run(piece: Piece) -> None:
        sl, part, inputs, history = piece
        states = encode_in_blocks(model, torch.from_numpy(inputs), steps, cfg)
        targets = torch.from_numpy(part.targets - 1)
        hist = torch.from_numpy(history) if cfg.mask_history else None

        def rank_of(user: torch.Tensor) -> np.ndarray:
            return _ranks(model, user, items, targets, hist)

        if per_step:
            for k in range(k_plus_1):
                step_ranks[k, sl] = rank_of(states[:, k])
            if mean_ranks is not None:
                mean_ranks[sl] = rank_of(states.mean(dim=1))
            if mode == "last":
                ranks[sl] = step_ranks[-1, sl]
            elif mode == "mean":
                assert mean_ranks is not None
                ranks[sl] = mean_ranks[sl]
            else:
                ranks[sl] = step_ranks[step or 0, sl]
        else:
            ranks[sl] = rank_of(model.user_vector(states, mode, step))

    def pieces(parts: int) -> Iterator[Piece]:
        """The chunks, each cut at pass boundaries into up to ``parts`` pieces of whole encoder passes: the
        pieces keep the chunk's width, so every pass (and a reasoning cache's width) is the chunk's own."""
        for sl, part, history in chunks:
            (inputs,) = trim(history)
            rows = pass_rows(inputs, cfg)
            passes = -(-len(sl) // rows)
            per = -(-passes // parts) * rows  # whole passes per piece
            for a in range(0, len(sl), per):
                cut = slice(a, a + per)
                yield sl[cut], part.subset(np.arange(len(sl))[cut]), inputs[cut], history[cut]
            if bar is not None:
                bar.update(1)

    with row_workers(resolve_workers(cfg.workers)) as runner:
        if runner.workers == 1:
            for piece in pieces(1):
                run(piece)
        else:
            # whole chunks when there are enough for every worker to take two; else each chunk is cut into
            # two pieces per worker (ML-100K's 943 test users are one chunk of four passes)
            parts = 1 if n_chunks >= 2 * runner.workers else 2 * runner.workers
            stream = pieces(parts)
            for wave in iter(lambda: list(islice(stream, runner.workers if parts == 1 else parts)), []):
                runner.map(run, wave)
    if bar is not None:
        bar.close()
    return EvalResult(ranks, step_ranks, mean_ranks, mode if mode != "step" else f"step {step}")
