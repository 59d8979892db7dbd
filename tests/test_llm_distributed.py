"""Data-parallel R²ec training (``torchrun`` / ``accelerate launch``): two CPU processes (gloo) must make the
same update as one process on the whole batch, gather every evaluation sample, and write one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import write_tiny_llm_setup

pytest.importorskip("transformers", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")
pytest.importorskip("peft", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")
pytest.importorskip("accelerate", reason="the llm extra is not installed: pip install 'thinkrec[llm]'")

from safetensors.torch import load_file

from thinkrec.llm.distributed import Replicas


def test_shard_and_unshard_are_inverse() -> None:
    items = list(range(11))
    parts = [Replicas(rank=r, world=3).shard(items) for r in range(3)]
    assert parts[1] == [1, 4, 7, 10] and sorted(x for part in parts for x in part) == items
    assert Replicas(world=3).unshard(parts) == items
    single = Replicas()
    assert single.shard(items) == items and single.gather("x") == ["x"] and not single.distributed


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm-ddp")
    return write_tiny_llm_setup(
        root,
        n_users=8,
        train_users=6,
        eval_users=5,
        users_per_step=4,
        extra_model="threads = 1",
        extra_recpo="lr = 0.01",
    )


def run_cli(toy: Path, run: Path, processes: int, *overrides: str) -> dict[str, object]:
    env = {**os.environ, "THINKREC_CACHE_DIR": str(toy / "cache"), "OMP_NUM_THREADS": "1"}
    cli = ["-m", "thinkrec.cli.main", "llm", "train", str(toy / "llm.toml"), *overrides]
    cli += ["--run-dir", str(run), "--no-progress"]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        cmd = [sys.executable, *launcher, *cli]
    else:
        cmd = [sys.executable, *cli]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, object] = json.loads((run / "results.json").read_text())
    return results


def trainable(run: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run / "checkpoints" / "last.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("trainable.")}


def test_two_processes_train_one_model_on_the_whole_batch(toy: Path) -> None:
    """Sharded users, summed gradients, gathered evaluation: the first step's loss (same weights) equals the
    single process's loss on the whole batch, the replicas end identical (checked by the run itself), the
    adapters moved, and every evaluation sample is scored exactly once.

    (The updated weights are not compared with the single process's: at this toy scale the similarity
    gradients are ~1e-4 and dominated by float32 round-off of the forward, so two equivalent summation
    orders differ in their sign-like first Adam step. For the same reason the NDCG part of the reward, a
    rank among near-equal scores, may differ by a swap of neighbours: seen with transformers 5.24.)"""
    one = run_cli(toy, toy / "one", 1, "recpo.variant=no_reasoning")
    two = run_cli(toy, toy / "two", 2, "recpo.variant=no_reasoning")
    assert two["processes"] == 2 and one["processes"] == 1
    log_one = [json.loads(x) for x in (toy / "one" / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (toy / "two" / "log.jsonl").read_text().splitlines()]
    assert len(log_two) == 2
    assert log_two[0]["loss"] == pytest.approx(log_one[0]["loss"], rel=1e-5)
    # the gathered reward's continuous part matches; its NDCG part ranks a random model's near-equal scores,
    # where float32 round-off (2 prompts padded per process vs 4 in one) can swap two neighbours: for one of
    # the 4 users that moves the mean NDCG by at most (1 - 1/log2(3)) / 4 = 0.09
    assert log_two[0]["softmax"] == pytest.approx(log_one[0]["softmax"], rel=1e-5)
    assert log_two[0]["ndcg"] == pytest.approx(log_one[0]["ndcg"], abs=0.1)
    # recpo.micro_users chunks each process's share; the step is still the whole batch's
    run_cli(toy, toy / "two-micro", 2, "recpo.variant=no_reasoning", "recpo.micro_users=1")
    log_micro = [json.loads(x) for x in (toy / "two-micro" / "log.jsonl").read_text().splitlines()]
    assert log_micro[0]["loss"] == pytest.approx(log_one[0]["loss"], rel=1e-5)
    assert log_micro[0]["softmax"] == pytest.approx(log_one[0]["softmax"], rel=1e-5)
    weights = trainable(toy / "two")
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in weights.items()), "adapters did not train"
    test_two = two["test"]
    assert isinstance(test_two, dict)
    assert test_two["n_samples"] == 5 and len(test_two["ranks"]) == 5


def test_recpo_runs_data_parallel(toy: Path) -> None:
    results = run_cli(toy, toy / "recpo", 2)
    log = [json.loads(x) for x in (toy / "recpo" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and results["processes"] == 2
    assert all(0.0 <= row["marker_rate"] <= 1.0 for row in log)
    assert (toy / "recpo" / "reward.png").exists()


def test_every_process_resumes_its_own_state(toy: Path) -> None:
    """A 2-process run of 2 steps, trained again with 3 steps, continues on both processes (each from its own
    rollout sampler) and ends where 3 steps in one go end; one process cannot resume it."""
    from thinkrec.errors import ThinkrecError
    from thinkrec.llm.config import load_llm_config
    from thinkrec.llm.resume import resume_point

    run_cli(toy, toy / "whole", 2, "recpo.steps=3")
    run_cli(toy, toy / "resumed", 2, "recpo.steps=2")
    results = run_cli(toy, toy / "resumed", 2, "recpo.steps=3")
    assert results["resumed_after_step"] == 2 and results["processes"] == 2

    def rows(run: Path) -> list[dict[str, object]]:
        return [
            {k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (run / "log.jsonl").read_text().splitlines()
        ]

    assert rows(toy / "resumed") == rows(toy / "whole") and len(rows(toy / "whole")) == 3
    a, b = trainable(toy / "resumed"), trainable(toy / "whole")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ThinkrecError, match="trained by 2 process"):
        resume_point(load_llm_config(str(toy / "llm.toml"), ["recpo.steps=3"]), toy / "resumed", world=1)
