"""A cold start with the decoder frozen: fit R²ec's recommendation head on cached user vectors.

    python -m benchmarks.llm.llm_head_probe extract RUN OUT --train 1200 --shard 0/2 --threads 1 [SIZES]
    python -m benchmarks.llm.llm_head_probe extract RUN OUT --train 1200 --shard 1/2 --threads 1 [SIZES]
    python -m benchmarks.llm.llm_head_probe fit RUN OUT --train 1200 [SIZES]

(SIZES: ``--valid-users 300 --test-users 1000``, the same for every command.)

Does what SmolLM2 makes of a prompt carry anything a most-popular list does not, once the recommendation head
is fitted on thousands of prefixes? The LoRA cold start (``llm_ml100k_coldstart.toml``) asks the same, but
every step runs the decoder forward and backward, which one CPU thread affords a few hundred times. With the
decoder frozen the user vector of a prompt (prompt + answer marker, no reasoning: the no-reasoning twin's
vector) never changes, so it is computed once and the head trains on the cached vectors in seconds.

``extract`` encodes, with the weights RUN selected (an untrained run: the base model), ``--valid-users``
validation and ``--test-users`` test samples drawn as RUN's config draws them (``sample.seed``) and the first
``--train`` of its training prefixes in a seeded shuffle; ``--shard i/n`` takes every n-th one so that n
one-thread processes share the work. Vectors go to OUT in chunks of ``--chunk`` (a killed extraction resumes
after its last chunk).

``fit`` scores ``cos(u - m, W (v - m)) / tau + log(1 + count_v)`` as the model does (``m`` the mean item
vector, ``tau`` and the popularity prior as RUN has them; ``W`` starts at the identity, as
``model.item_head = "linear"``), trains ``W`` with AdamW on full-catalogue InfoNCE (the user's history
masked, the training loss of the cold start), checks validation NDCG@20 after every epoch and keeps the best
epoch, then ranks the test samples once: paired bootstrap (NDCG@20) and McNemar (HR@20) against most popular
and against the untrained head (W = I, which is RUN's own no-reasoning ranking) on the same samples. Test
labels are read only for that last report. Writes ``OUT/probe.json`` (with provenance) and prints it;
``--run-dir DIR`` also writes DIR as an R²ec run with the fitted head (``model.item_head = "linear"``), which
``thinkrec llm evaluate`` and ``recommend`` read and ``thinkrec llm train --init-from DIR`` starts from.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from benchmarks import harness
from thinkrec.eval.metrics import metrics_from_ranks, per_sample, target_ranks
from thinkrec.llm.data import Example, PromptBank, eval_examples, train_examples
from thinkrec.llm.evaluation import compare_reports, popularity_ranks, training_counts
from thinkrec.llm.recpo import catalogue_target_logprobs, history_mask, mask_scores
from thinkrec.llm.run import load_llm_run, load_split, make_builder, save_llm_checkpoint
from thinkrec.llm.trainer import LLMTrainer
from thinkrec.storage import atomic_save_tensors, atomic_write_json, atomic_write_text

PARTS = ("valid", "test", "train")
KS = [5, 10, 20]


def load_parts(args: argparse.Namespace) -> tuple[Any, LLMTrainer, Any, dict[str, list[Example]]]:
    """RUN's config (with ``--valid-users`` / ``--test-users``), a trainer over its model and prompts, the split
    and the samples of each part (train: the first ``--train`` prefixes of a seeded shuffle)."""
    cfg, model = load_llm_run(args.run)
    sizes = {"valid_users": args.valid_users, "eval_users": args.test_users}
    sizes = {key: value for key, value in sizes.items() if value is not None}
    cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update=sizes)})
    split = load_split(cfg)
    train = train_examples(split, cfg)
    random.Random(cfg.sample.seed).shuffle(train)
    parts = {
        "valid": eval_examples(split, cfg, "valid"),
        "test": eval_examples(split, cfg, "test"),
        "train": train[: args.train],
    }
    return cfg, LLMTrainer(model, PromptBank(split.dataset, cfg, make_builder(model, cfg)), cfg), split, parts


def extract(args: argparse.Namespace) -> None:
    _, trainer, _, parts = load_parts(args)
    shard, shards = (int(x) for x in args.shard.split("/"))
    trainer.model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    check_samples(args.out, parts, write=True)
    for part in PARTS:
        mine = list(range(len(parts[part])))[shard::shards]
        for c, start in enumerate(range(0, len(mine), args.chunk)):
            path = args.out / f"{part}-{shard}of{shards}-{c:04d}.safetensors"
            if path.exists():
                continue
            idx = mine[start : start + args.chunk]
            with torch.no_grad():  # one prompt at a time: no padding (batches of 8 were slower on a CPU)
                vecs = torch.cat([trainer.user_vectors([parts[part][i]], reasoning=False)[0] for i in idx])
            atomic_save_tensors(path, {"index": torch.as_tensor(idx), "vectors": vecs.float()})
            print(f"{part} shard {shard}/{shards}: {start + len(idx)}/{len(mine)}", file=sys.stderr, flush=True)


def check_samples(out: Path, parts: dict[str, list[Example]], write: bool) -> None:
    """Refuse an OUT whose vectors belong to other samples: ``OUT/samples.json`` lists each part's
    ``(user, position)`` pairs as extracted (written by the first ``extract``); every part asked for now must
    be a prefix of them (so ``fit --train`` may take fewer training prefixes than were extracted)."""
    file = out / "samples.json"
    now = {part: [[ex.user, ex.position] for ex in examples] for part, examples in parts.items()}
    if not file.exists():
        if not write:
            raise SystemExit(f"{out}: no samples.json; run extract first")
        atomic_write_json(file, now)
        return
    saved = json.loads(file.read_text())
    for part, pairs in now.items():
        if saved.get(part, [])[: len(pairs)] != pairs:
            raise SystemExit(
                f"{file}: the {part} samples differ from those asked for now (other sizes, seed or run); "
                "give the same --train / --valid-users / --test-users, or another OUT"
            )


def cached(out: Path, part: str, n: int) -> torch.Tensor:
    """The first ``n`` vectors of ``part`` in sample order (every shard's chunks); an error when any is
    missing."""
    rows: dict[int, torch.Tensor] = {}
    for path in sorted(out.glob(f"{part}-*.safetensors")):
        chunk = load_file(str(path))
        rows.update(zip(chunk["index"].tolist(), chunk["vectors"], strict=True))
    missing = sum(i not in rows for i in range(n))
    if missing:
        raise SystemExit(f"{out}: {missing} of {n} {part} vectors not extracted yet (run extract)")
    return torch.stack([rows[i] for i in range(n)])


def write_run(directory: Path, cfg: Any, model: Any, info: dict[str, Any]) -> None:
    """An R²ec run directory: RUN's config with ``model.item_head = "linear"``, and as its best checkpoint
    ``model``'s state (RUN's weights, item table and prior, and the fitted head ``W``) -- for ``thinkrec llm
    evaluate``, ``recommend``, serving, or ``thinkrec llm train ... model.item_head=linear --init-from
    DIRECTORY``."""
    head_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"item_head": "linear"})})
    (directory / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / "config.json", json.loads(head_cfg.model_dump_json()))
    save_llm_checkpoint(directory / "checkpoints", model, info, name="best")


def fit(args: argparse.Namespace) -> None:
    cfg, trainer, split, parts = load_parts(args)
    check_samples(args.out, parts, write=False)
    model = trainer.model
    with torch.no_grad():  # RUN's item table: from its checkpoint, else built as its evaluation builds it
        trainer.ensure_item_table()
    assert model.item_table is not None
    # the model's own score with a fresh item head W = I (model.item_head = "linear"): score_all ranks, and
    # training scores as the cold start does (centred users, the table through the head, the prior)
    d = model.hidden_size
    model.item_head = torch.nn.Linear(d, d, bias=False)
    torch.nn.init.eye_(model.item_head.weight)
    head = model.item_head
    users = {part: cached(args.out, part, len(parts[part])) for part in PARTS}
    targets = {part: torch.as_tensor([ex.target for ex in parts[part]]) for part in PARTS}
    masks = {part: history_mask([ex.seen for ex in parts[part]], len(model.item_table)) for part in PARTS}
    shuffle = torch.Generator().manual_seed(args.seed)  # the batches' order (loading the run reseeds torch)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)

    def ranks(part: str) -> np.ndarray:
        scores = model.score_all(users[part])
        return target_ranks(mask_scores(scores, masks[part]), targets[part]).numpy()

    def ndcg(ranked: np.ndarray) -> float:
        return float(per_sample(ranked, "NDCG@20").mean())

    # W = I: RUN's own no-reasoning ranking (its test ranks are reported, never used by the fit)
    untrained = {part: ranks(part) for part in ("valid", "test")}
    n = len(parts["train"])
    best = (ndcg(untrained["valid"]), 0, head.weight.detach().clone())
    history: list[dict[str, Any]] = [{"epoch": 0, "valid_NDCG@20": best[0]}]
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(n, generator=shuffle)
        total = 0.0
        for start in range(0, n, args.batch):
            idx = order[start : start + args.batch]
            ids = targets["train"][idx]
            mapped = model.item_space(model.item_table)
            logp = catalogue_target_logprobs(
                model.centred(users["train"][idx]),
                mapped,
                mapped[ids],
                ids,
                ids,
                masks["train"][idx],
                model.tau,
                model.item_prior,
            )
            loss = -logp.mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
        score = ndcg(ranks("valid"))
        history.append({"epoch": epoch, "train_loss": total / n, "valid_NDCG@20": score})
        print(json.dumps(history[-1]), file=sys.stderr, flush=True)
        if score > best[0]:
            best = (score, epoch, head.weight.detach().clone())
        elif epoch - best[1] >= args.patience:
            break
    with torch.no_grad():
        head.weight.copy_(best[2])
    counts = training_counts(split)
    reports = {
        "head fitted (W, best validation epoch)": {"ranks": ranks("test")},
        "head untrained (W = I: the run's own no-reasoning ranking)": {"ranks": untrained["test"]},
        "most popular (training counts)": {"ranks": popularity_ranks(counts, parts["test"], mask_history=True)},
    }
    fitted = reports["head fitted (W, best validation epoch)"]
    record = harness.stamp(
        {
            "benchmark": "llm_head_probe",
            "run": str(args.run),
            "protocol": (
                f"{cfg.data.name}, split {cfg.data.split.model_dump()},"
                f" full catalogue ({len(model.item_table) - 1} items),"
                " pad and the user's whole history masked, pessimistic ties, no reasoning (prompt + marker);"
                f" {n} training prefixes (seeded shuffle, sample.seed={cfg.sample.seed}),"
                f" {len(parts['valid'])} validation and {len(parts['test'])} test samples as RUN's config draws them"
            ),
            "model": {
                "path": str(cfg.model.path),
                "tau": model.tau,
                "item_prior": cfg.model.item_prior,
                "center_items": model.center_items,
            },
            "fit": {
                "lr": args.lr,
                "batch": args.batch,
                "epochs_max": args.epochs,
                "patience": args.patience,
                "seed": args.seed,
                "best_epoch": best[1],
                "best_valid_NDCG@20": best[0],
                "valid_NDCG@20_untrained": ndcg(untrained["valid"]),
                "valid_NDCG@20_most_popular": ndcg(popularity_ranks(counts, parts["valid"], mask_history=True)),
                "history": history,
            },
            "test": {name: metrics_from_ranks(np.asarray(r["ranks"]), KS) for name, r in reports.items()},
            "test_ranks": {name: [int(r) for r in rep["ranks"]] for name, rep in reports.items()},
            # a = the fitted head, b = the named row: mean_diff = b - a; only_a = the head's hits alone
            "tests_vs_fitted": {name: compare_reports(fitted, r) for name, r in reports.items() if r is not fitted},
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "probe.json", json.dumps(record, indent=2, default=float))
    atomic_save_tensors(args.out / "item_head.safetensors", {"item_head.weight": best[2]})
    if args.run_dir is not None:
        info = {"step": 0, "source": "llm_head_probe", "run": str(args.run), "best_epoch": best[1]}
        write_run(args.run_dir, cfg, model, {**info, "valid_NDCG@20": best[0]})
    print(json.dumps(record, indent=2, default=float))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("extract", "fit"):
        p = sub.add_parser(name)
        p.add_argument("run", type=Path, help="an LLM run directory (thinkrec llm train)")
        p.add_argument("out", type=Path, help="where the cached vectors (and probe.json) go")
        p.add_argument("--train", type=int, default=1200, help="training prefixes (default 1200)")
        p.add_argument("--valid-users", type=int, help="validation samples (default: RUN's sample.valid_users)")
        p.add_argument("--test-users", type=int, help="test samples (default: RUN's sample.eval_users)")
        p.add_argument("--threads", type=int, default=1)
    ex = sub.choices["extract"]
    ex.add_argument("--shard", default="0/1", help="i/n: every n-th sample from the i-th (default 0/1)")
    ex.add_argument("--chunk", type=int, default=25)
    fi = sub.choices["fit"]
    fi.add_argument("--lr", type=float, default=1e-3)
    fi.add_argument("--batch", type=int, default=64)
    fi.add_argument("--epochs", type=int, default=200)
    fi.add_argument("--patience", type=int, default=20)
    fi.add_argument("--seed", type=int, default=0)
    fi.add_argument("--run-dir", type=Path, help="also write an R²ec run directory with the fitted head")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    (extract if args.command == "extract" else fit)(args)


if __name__ == "__main__":
    main()
