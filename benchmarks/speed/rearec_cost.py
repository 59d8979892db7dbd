"""Cost of latent reasoning on CPU: inference time for K = 0..5 and training-epoch time of PRL vs SASRec.

    python -m benchmarks.speed.rearec_cost --preset ml100k-time-sasrec-prl --threads 2 --repeats 3

Inference: the whole test set of the preset's split is evaluated with the serving path (only the
configured inference mode is scored, ``per_step=False``) for K = 0..5 with the same weights; K = 0 is the
plain backbone. Timings are interleaved over ``--repeats`` rounds; the fastest round of each K counts (as in
``speed_engine``: other activity on a shared machine only adds time), with the ratio to K = 0; medians
are printed too, and the median over rounds of each round's own ratio to K = 0 (every round times all K
back to back, so that ratio cancels slow drifts of a noisy host). Training: one epoch of the base SASRec
preset (all positions) and one of its PRL variant (K = 2, after warm-up, all prefixes at once),
interleaved, median of ``--repeats``; ratio PRL / SASRec.
Weights are freshly initialised: timing does not depend on them. Writes one record per measurement and a
summary record (to stdout and ``benchmarks/out/speed/``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from benchmarks import harness
from thinkrec.allocator import tune_allocator
from thinkrec.config.loader import load_config
from thinkrec.config.schema import RunConfig
from thinkrec.data.batches import TrainSampler, trim
from thinkrec.data.split import Split
from thinkrec.eval.evaluator import chunk_size, encode_in_blocks, evaluate, history_chunks, pass_rows
from thinkrec.models.model import SeqRecModel
from thinkrec.runs import build, build_objective, load_data


def epoch_seconds(preset: str, overrides: list[str], epoch: int) -> float:
    cfg = load_config(preset, [*overrides, "progress=never"])
    _, split = load_data(cfg)
    model = build(cfg, split.dataset.n_items)
    objective = build_objective(cfg)
    start_epoch = getattr(objective, "start_epoch", None)
    if start_epoch is not None:
        start_epoch(epoch)  # past the warm-up: the reasoning losses are on
    sampler = TrainSampler(split, cfg.model.max_len, cfg.train.sample_mode, cfg.train.stride)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    model.train()
    t0 = time.perf_counter()
    for batch in sampler.batches(cfg.train.batch_size, np.random.default_rng(0)):
        out = objective(model, batch)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(out.total)
        optimizer.step()
    return time.perf_counter() - t0


def encoder_breakdown(model: SeqRecModel, split: Split, cfg: RunConfig, steps: int, repeats: int) -> dict[str, float]:
    """Where K reasoning steps spend their time at inference: the encoder alone (no scoring) over the test
    chunks the evaluator builds, K = 0 vs K = ``steps``, and the reasoner's own share of the latter (the
    rest of the difference is assembling the chunk's key/value cache from the item passes). Also the
    linear-layer FLOPs of the reasoning tokens relative to the item pass's, counted on the same passes, and
    all the FLOPs the steps add (linear layers and attention over the cache) relative to the whole K = 0
    evaluation's (item pass, its attention, catalogue scores): what an implementation running every FLOP at
    one rate would measure as K = 2 / K = 0 minus one. Single-token steps run at a lower rate than the batched item pass
    and catalogue product, so that is a floor in practice. Fastest of ``repeats`` interleaved rounds."""
    size = chunk_size(cfg.eval, model.n_items)
    chunks = [
        torch.from_numpy(trim(history)[0])
        for _, _, history in history_chunks(split, split.test, model.backbone.max_len, size)
    ]
    reasoner = cast(nn.Module, model.reasoner)
    spent = [0.0, 0.0]  # start of the current call, total

    def started(*_: Any) -> None:
        spent[0] = time.perf_counter()

    def finished(*_: Any) -> None:
        spent[1] += time.perf_counter() - spent[0]

    encode: dict[int, list[float]] = {0: [], steps: []}
    in_reasoner: list[float] = []
    hooks = [reasoner.register_forward_pre_hook(started), reasoner.register_forward_hook(finished)]
    try:
        with torch.no_grad():
            for _ in range(repeats):
                for k in encode:
                    spent[1] = 0.0
                    t0 = time.perf_counter()
                    for inputs in chunks:
                        encode_in_blocks(model, inputs, k, cfg.eval)
                    encode[k].append(time.perf_counter() - t0)
                    if k:
                        in_reasoner.append(spent[1])
    finally:
        for hook in hooks:
            hook.remove()
    # linear-layer FLOPs per token of one full block; the final block of the item pass projects only the
    # last column (its keys/values are folded into the queries, never formed for every column)
    d, layers = cfg.model.hidden, cfg.model.layers
    ffn = getattr(cfg.model, "ffn", None) or 4 * d
    heads = getattr(cfg.model, "heads", 1)
    full = 2 * (4 * d * d + 2 * d * ffn)
    item_flops = reasoning_flops = item_attention = reasoning_attention = samples = 0
    for inputs in chunks:
        rows = pass_rows(inputs, cfg.eval)  # the evaluator's own passes
        for start in range(0, inputs.shape[0], rows):
            (block,) = trim(inputs[start : start + rows].numpy())  # the pass is trimmed to its longest row
            b, w = block.shape
            samples += b
            item_flops += b * w * (layers - 1) * full + b * full
            reasoning_flops += b * steps * layers * full
            # attention products (scores and mix): W x W per lower block, the folded last column (per head a
            # pass over the W d-wide inputs) in the final block, and each reasoning token over the columns
            # before it in every block
            item_attention += b * ((layers - 1) * 4 * w * w * d + 4 * heads * w * d)
            reasoning_attention += b * layers * sum(4 * heads * (w + k) * d for k in range(1, steps + 1))
    scoring = samples * model.n_items * d * 2  # one user vector against the catalogue, both K
    k0_flops = item_flops + item_attention + scoring
    k0, kk, reason = min(encode[0]), min(encode[steps]), min(in_reasoner)
    return {
        "encoder_k0_seconds": k0,
        f"encoder_k{steps}_seconds": kk,
        "reasoner_seconds": reason,
        "cache_assembly_seconds": kk - k0 - reason,
        "reasoning_over_item_linear_flops": reasoning_flops / item_flops,
        # what K reasoning steps add to the arithmetic of the whole K = 0 evaluation (item pass, its attention,
        # the catalogue scores): K / K = 0 minus one, for an implementation running every FLOP at one rate
        "reasoning_over_k0_evaluation_flops": (reasoning_flops + reasoning_attention) / k0_flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ml100k-time-sasrec-prl")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-k", type=int, default=5)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the encoder alone and the reasoner's share (K = trained K)"
    )
    harness.add_records_argument(parser)
    args = parser.parse_args()
    records = harness.Records("speed", f"rearec_cost_{args.preset}", args.records)
    tune_allocator()  # as the CLI does
    torch.set_num_threads(args.threads)
    overrides = [f"reasoning.max_steps={args.max_k}"]
    cfg = load_config(args.preset, overrides)
    _, split = load_data(cfg)
    model = build(cfg, split.dataset.n_items)
    model.eval()
    times: dict[int, list[float]] = {k: [] for k in range(args.max_k + 1)}
    evaluate(model, split, split.test, cfg.eval, steps=0, per_step=False)  # warm-up
    for _ in range(args.repeats):
        for k in times:
            t0 = time.perf_counter()
            evaluate(model, split, split.test, cfg.eval, steps=k, per_step=False)
            times[k].append(time.perf_counter() - t0)
    # the fastest round counts (other activity on the machine only ever adds time); the median is printed too
    base, base_median = min(times[0]), statistics.median(times[0])
    summary: dict[str, object] = {
        "kind": "summary",
        "preset": args.preset,
        "threads": args.threads,
        "n_test": len(split.test),
        "n_items": split.dataset.n_items,
    }
    for k, values in times.items():
        fastest, med = min(values), statistics.median(values)
        # each round times every K back to back, so the ratio within a round cancels the machine's slow
        # drifts; the median over rounds is the robust figure on a noisy host
        paired = statistics.median(v / b for v, b in zip(values, times[0], strict=True))
        row = {
            "kind": "inference",
            "steps": k,
            "seconds": fastest,
            "ratio_to_k0": fastest / base,
            "median_seconds": med,
            "median_ratio_to_k0": med / base_median,
            "paired_median_ratio_to_k0": paired,
            "all_seconds": values,
        }
        records.write(row)
        summary[f"inference_ratio_k{k}"] = fastest / base
        summary[f"inference_paired_ratio_k{k}"] = paired
    if args.breakdown:
        parts = encoder_breakdown(model, split, cfg, cfg.reasoning.steps, args.repeats)
        records.write({"kind": "breakdown", "steps": cfg.reasoning.steps, **parts})
        summary.update({f"breakdown_{k}": v for k, v in parts.items()})
    if not args.skip_training:
        base_preset = args.preset.rsplit("-", 1)[0]  # e.g. ml100k-time-sasrec
        warm = cfg.reasoning.warmup_epochs
        sasrec, prl = [], []
        for _ in range(args.repeats):
            sasrec.append(epoch_seconds(base_preset, [], warm))
            prl.append(epoch_seconds(args.preset, [], warm))
        ratio = statistics.median(prl) / statistics.median(sasrec)
        row = {
            "kind": "training",
            "sasrec_epoch_seconds": statistics.median(sasrec),
            "prl_epoch_seconds": statistics.median(prl),
            "steps": cfg.reasoning.steps,
            "ratio": ratio,
        }
        records.write(row)
        summary["training_ratio"] = ratio
        summary["training_bound"] = cfg.reasoning.steps + 3
    records.write(summary)


if __name__ == "__main__":
    main()
