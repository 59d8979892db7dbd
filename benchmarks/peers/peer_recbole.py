"""Speed benchmark of the RecBole 1.2.1 *peer*: time SASRec training batches and one full-ranking evaluation.

Run with the PEER venv's python (made by ``benchmarks/peers/peer_setup.sh``), never with thinkrec's: this script
imports recbole and does not import thinkrec. RecBole is not a dependency of thinkrec.

    .peer-venv/bin/python benchmarks/peers/peer_recbole.py --inter-source ml100k --train-batches 20 --eval
    .peer-venv/bin/python benchmarks/peers/peer_recbole.py --inter-source seqrecbench \
        --dataset-name amazon2014-beauty --train-batches 20

The interactions are converted to a RecBole atomic ``<name>.inter`` file in the work dir, so RecBole never
tries to download anything. The protocol is leave-one-out (``eval_args = {split: {LS: valid_and_test},
order: TO, mode: full, group_by: user}``), cross-entropy over the whole catalogue
(``train_neg_sample_args: None``), every interaction kept (no rating threshold, no k-core filtering).

Exactly one line of JSON goes to stdout at the end; everything else (RecBole's logging included) goes to
stderr. With ``--eval-on-request`` the script first prints ``{"ready": true}`` after training, then times one
test evaluation per ``eval`` line read from stdin (one JSON line each, ``{"eval_seconds": ...}``) until
``quit`` or end of input, so another process can alternate its own evaluations with RecBole's
(``benchmarks/speed/eval_paired.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import numpy.typing as npt
    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed
except ImportError as exc:  # pragma: no cover - depends on the interpreter used
    sys.exit(
        f"peer_recbole: {exc}. Run this script with the peer venv's python "
        "(bash benchmarks/peers/peer_setup.sh; .peer-venv/bin/python benchmarks/peers/peer_recbole.py ...)."
    )

REPO_ROOT = Path(__file__).resolve().parents[2]
WARMUP_BATCHES = 2


def log(message: str) -> None:
    print(f"peer_recbole: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_data = os.environ.get("THINKREC_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset-name",
        default=None,
        help="RecBole dataset token; for seqrecbench also the folder name (default for ml100k: ml-100k)",
    )
    p.add_argument("--inter-source", choices=["ml100k", "seqrecbench"], required=True)
    p.add_argument("--data-dir", type=Path, default=Path(default_data), help="default $THINKREC_DATA_DIR")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the .inter file and RecBole's logs/checkpoints go (default: a temp dir, removed at exit)",
    )
    p.add_argument("--model", choices=["SASRec", "GRU4Rec"], default="SASRec")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--inner-size", type=int, default=None, help="SASRec FFN size (default 4 x hidden)")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=4096, help="users per evaluation batch")
    p.add_argument("--dropout", type=float, default=0.2, help="hidden and attention dropout")
    p.add_argument("--train-batches", type=int, default=20, help="timed batches, after 2 warm-up batches")
    p.add_argument("--eval", action="store_true", help="also time one full-ranking pass over the test users")
    p.add_argument("--eval-repeats", type=int, default=1, help="evaluations to time; the fastest is reported")
    p.add_argument(
        "--eval-on-request",
        action="store_true",
        help="after training, time one test evaluation per 'eval' line on stdin (JSON line per answer)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=2020)
    args = p.parse_args(argv)
    if args.dataset_name is None:
        if args.inter_source != "ml100k":
            p.error("--dataset-name is required with --inter-source seqrecbench")
        args.dataset_name = "ml-100k"
    if args.train_batches < 1:
        p.error("--train-batches must be >= 1")
    return args


# --------------------------------------------------------------------------------------------- data


def read_ml100k(data_dir: Path) -> tuple[list[str], list[str], npt.NDArray[np.int64]]:
    """``ml-100k/u.data``: tab-separated user, item, rating, timestamp; every row kept (ratings ignored)."""
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    with open(data_dir / "ml-100k" / "u.data", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            user, item, _rating, ts = line.rstrip("\n").split("\t")
            users.append(user)
            items.append(item)
            times.append(int(ts))
    return users, items, np.asarray(times, dtype=np.int64)


def read_seqrecbench(data_dir: Path, name: str) -> tuple[list[str], list[str], npt.NDArray[np.int64]]:
    """``seqrecbench/<name>/derived/interactions.tsv.gz``: header user_id, item_id, timestamp."""
    path = data_dir / "seqrecbench" / name / "derived" / "interactions.tsv.gz"
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:3] != ["user_id", "item_id", "timestamp"]:
            raise ValueError(f"{path}: unexpected header {header}")
        for line in f:
            if not line.strip():
                continue
            user, item, ts = line.rstrip("\n").split("\t")[:3]
            users.append(user)
            items.append(item)
            times.append(int(float(ts)))
    return users, items, np.asarray(times, dtype=np.int64)


def write_atomic_inter(path: Path, users: list[str], items: list[str], times: npt.NDArray[np.int64]) -> None:
    """Write RecBole's ``.inter`` file with a tie-free timestamp.

    Tie-breaking (the choice made here): the ``timestamp:float`` written is the row's rank in a *stable*
    sort by (original timestamp, row index in the source file), i.e. 0..N-1. So chronological order is kept,
    and interactions with equal timestamps keep their file order (seqrecbench files are chronological per
    user, so each user's sequence is exactly the file's). Ranks rather than raw seconds because RecBole
    keeps float fields as float32 tensors: raw epoch seconds (~1.4e9) are only resolved to 128 s in
    float32, which would merge near-simultaneous events into ties; integers below 2**24 are exact. Only
    per-user order matters for the leave-one-out split, so nothing else changes.
    """
    order = np.argsort(times, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    if len(order) >= 2**24:
        raise ValueError("too many interactions for exact float32 ranks")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, item, r in zip(users, items, rank.tolist(), strict=True):
            f.write(f"{user}\t{item}\t{r}\n")


def check_work_dir(work_dir: Path) -> None:
    """Refuse a work dir inside the repo unless git ignores it (outputs must never land in tracked files)."""
    try:
        work_dir.relative_to(REPO_ROOT)
    except ValueError:
        return
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", str(work_dir)], check=False).returncode
    if ignored != 0:
        sys.exit(f"peer_recbole: --work-dir {work_dir} is inside the repo and not git-ignored")


# --------------------------------------------------------------------------------------------- RecBole


def recbole_config(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        # environment: CPU only, no workers, no downloads (the .inter file is already in data_path)
        "data_path": str(work_dir),
        "checkpoint_dir": str(work_dir / "saved"),
        "use_gpu": False,
        "gpu_id": "",
        "device": "cpu",
        "worker": 0,
        "seed": args.seed,
        "reproducibility": True,
        "show_progress": False,
        "state": "INFO",
        "log_wandb": False,
        "save_dataset": False,
        "save_dataloaders": False,
        # data: every interaction kept. These also override properties/dataset/ml-100k.yaml, which RecBole
        # loads for a dataset called "ml-100k" (it sets normalize_all: True and loads a rating column).
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "normalize_all": False,
        "normalize_field": None,
        "val_interval": None,
        "threshold": None,
        "rm_dup_inter": None,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        # protocol: leave-one-out, full ranking, cross-entropy
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        # training
        "train_batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "learner": "adam",
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "epochs": 1,
    }
    if args.model == "SASRec":
        cfg |= {
            "hidden_size": args.hidden,
            "inner_size": args.inner_size or 4 * args.hidden,
            "n_layers": args.layers,
            "n_heads": args.heads,
            "hidden_dropout_prob": args.dropout,
            "attn_dropout_prob": args.dropout,
        }
    else:  # GRU4Rec
        cfg |= {
            "embedding_size": args.hidden,
            "hidden_size": args.hidden,
            "num_layers": args.layers,
            "dropout_prob": args.dropout,
        }
    return cfg


def cycle(loader: Any) -> Iterator[Any]:
    """RecBole's training batches, starting a new (reshuffled) epoch when one runs out."""
    while True:
        yield from loader


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    # RecBole 1.2.1 calls fillna(inplace=True) on column views, which pandas 2.2 warns about once per field.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")

    if args.inter_source == "ml100k":
        users, items, times = read_ml100k(args.data_dir)
    else:
        users, items, times = read_seqrecbench(args.data_dir, args.dataset_name)
    inter_path = work_dir / args.dataset_name / f"{args.dataset_name}.inter"
    write_atomic_inter(inter_path, users, items, times)
    log(f"wrote {len(users)} interactions to {inter_path}")

    # RecBole creates log/, log_tensorboard/ and saved/ relative to the current directory.
    os.chdir(work_dir)
    # Config also parses sys.argv for --key=value pairs; hide our own arguments from it.
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]
    try:
        config = Config(model=args.model, dataset=args.dataset_name, config_dict=recbole_config(args, work_dir))
    finally:
        sys.argv = saved_argv
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)  # its console handler writes to stderr

    dataset = create_dataset(config)
    train_data, _valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    optimizer = trainer.optimizer  # built by RecBole's Trainer: Adam, lr 1e-3, weight_decay 0
    device = config["device"]

    # Training: time only what RecBole's Trainer._train_epoch does per batch (zero_grad, calculate_loss,
    # loss.item(), backward, optimizer step; no AMP, no grad clipping on CPU). Fetching/collating the batch
    # from RecBole's dataloader is NOT timed. 2 warm-up batches first, then --train-batches timed ones.
    model.train()
    batches = cycle(train_data)
    step_seconds: list[float] = []
    for i in range(WARMUP_BATCHES + args.train_batches):
        interaction = next(batches)
        start = time.perf_counter()
        interaction = interaction.to(device)
        optimizer.zero_grad()
        loss = model.calculate_loss(interaction)
        loss_value = loss.item()
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if i >= WARMUP_BATCHES:
            step_seconds.append(elapsed)
        kind = "warm-up" if i < WARMUP_BATCHES else "timed"
        log(f"batch {i} ({kind}): {elapsed:.3f}s, loss {loss_value:.4f}")

    n_train = len(train_data._dataset)
    batches_per_epoch = math.ceil(n_train / args.batch_size)
    seconds_per_batch = statistics.fmean(step_seconds)

    # Evaluation: one call of RecBole's own Trainer.evaluate on the test dataloader (no checkpoint load).
    # Timed: iterating the full-sort test dataloader (building each batch of users' last-50 histories),
    # model.full_sort_predict (sequence encoder + scores against every item), masking the padding item,
    # the Collector's torch.topk and the Evaluator's Hit/NDCG@10. History items are not masked (RecBole
    # does not mask them for sequential models).
    eval_seconds: float | None = None
    eval_result: dict[str, float] | None = None
    eval_all: list[float] = []
    if args.eval:
        for _ in range(max(1, args.eval_repeats)):
            start = time.perf_counter()
            result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
            eval_all.append(time.perf_counter() - start)
        eval_seconds = min(eval_all)
        eval_result = {k: float(v) for k, v in result.items()}
        log(f"evaluation: {eval_seconds:.3f}s (fastest of {len(eval_all)}) {eval_result}")
    if args.eval_on_request:
        serve_evaluations(trainer, test_data)

    return {
        "peer": "recbole",
        "version": recbole.__version__,
        "model": args.model,
        "dataset": args.dataset_name,
        "inter_source": args.inter_source,
        "n_interactions": len(users),
        "n_users": int(dataset.user_num - 1),  # RecBole counts the padding id 0
        "n_items": int(dataset.item_num - 1),
        "n_train_instances": n_train,
        "batch_size": args.batch_size,
        "batches_per_epoch": batches_per_epoch,
        "warmup_batches": WARMUP_BATCHES,
        "train_batches_timed": args.train_batches,
        "seconds_per_batch": seconds_per_batch,
        "seconds_per_batch_median": statistics.median(step_seconds),
        "est_epoch_seconds": seconds_per_batch * batches_per_epoch,
        "eval_seconds": eval_seconds,
        "eval_seconds_all": eval_all,
        "eval_batch_size": args.eval_batch_size,
        "n_test_users": len(test_data._dataset),
        "eval_metrics_untrained": eval_result,
        "hidden": args.hidden,
        "layers": args.layers,
        "heads": args.heads,
        "max_len": args.max_len,
        "dropout": args.dropout,
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
    }


def answer(record: dict[str, Any]) -> None:
    """One JSON line on the real stdout (``run`` sends everything else to stderr)."""
    sys.__stdout__.write(json.dumps(record) + "\n")
    sys.__stdout__.flush()


def serve_evaluations(trainer: Any, test_data: Any) -> None:
    """Time one ``Trainer.evaluate`` over the test users per ``eval`` line on stdin, until ``quit``/EOF.

    The requesting process waits for the answer, so the two sides never run at the same time.
    """
    answer({"ready": True})
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "eval":
            answer({"error": f"unknown command {command!r}: send 'eval' or 'quit'"})
            continue
        start = time.perf_counter()
        trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        answer({"eval_seconds": time.perf_counter() - start})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    made_temp = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="thinkrec-peer-recbole-")) if made_temp else args.work_dir
    work_dir = work_dir.resolve()
    check_work_dir(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    try:
        # Anything RecBole (or a library under it) prints goes to stderr: stdout is for the JSON line only.
        with contextlib.redirect_stdout(sys.stderr):
            record = run(args, work_dir)
    finally:
        os.chdir(cwd)
        if made_temp:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
