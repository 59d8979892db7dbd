import numpy as np
import pytest

from thinkrec.data.batches import IGNORE, TrainSampler, gather_histories
from thinkrec.data.split import leave_one_out

from helpers import random_dataset


@pytest.mark.parametrize(("max_len", "stride"), [(5, 5), (5, 2), (8, 1), (50, 50)])
def test_all_mode_trains_every_target_exactly_once_with_its_true_history(max_len: int, stride: int) -> None:
    ds = random_dataset(n_users=50, max_len=30, seed=5)
    split = leave_one_out(ds)
    sampler = TrainSampler(split, max_len=max_len, mode="all", stride=stride)
    counts: dict[tuple[int, int], int] = {}
    for index in np.array_split(np.arange(sampler.n_samples), 7):
        batch = sampler.batch(index)
        inputs, targets = batch.inputs.numpy(), batch.targets.numpy()
        width = inputs.shape[1]
        assert batch.positions.tolist() == list(range(max_len - width, max_len))
        for row, i in enumerate(index):
            u, end = sampler.users[i], sampler.ends[i]
            seq = ds.sequence(u)
            for col in np.flatnonzero(targets[row] != IGNORE):
                j = end - width + col  # sequence index of this target
                assert targets[row, col] == seq[j]
                real = inputs[row, : col + 1]
                real = real[real > 0]
                assert real.tolist() == seq[max(0, j - max_len) : j].tolist()[-len(real) :]
                assert len(real) == min(j, max_len, col + 1)
                counts[(u, j)] = counts.get((u, j), 0) + 1
    expected = {(u, j) for u in range(ds.n_users) for j in range(1, split.train_lengths[u])}
    assert set(counts) == expected and set(counts.values()) == {1}
    assert sampler.n_targets == len(expected)


def test_last_mode_has_one_sample_per_prefix() -> None:
    ds = random_dataset(seed=2)
    split = leave_one_out(ds)
    sampler = TrainSampler(split, max_len=6, mode="last")
    assert sampler.n_samples == int(np.maximum(split.train_lengths - 1, 0).sum())
    batch = sampler.batch(np.arange(sampler.n_samples))
    for row, (u, end) in enumerate(zip(sampler.users, sampler.ends, strict=True)):
        seq = ds.sequence(u)
        assert batch.targets[row] == seq[end]
        hist = batch.inputs[row].numpy()
        assert hist[hist > 0].tolist() == seq[max(0, end - 6) : end].tolist()


def test_batches_cover_an_epoch_in_a_seeded_order() -> None:
    ds = random_dataset(seed=4)
    sampler = TrainSampler(leave_one_out(ds), max_len=10)
    a = [b.inputs.sum().item() for b in sampler.batches(8, np.random.default_rng(1))]
    b = [b.inputs.sum().item() for b in sampler.batches(8, np.random.default_rng(1))]
    c = [b.inputs.sum().item() for b in sampler.batches(8, np.random.default_rng(2))]
    assert a == b and a != c and len(a) == sampler.n_batches(8)


def test_gather_histories_left_pads() -> None:
    ds = random_dataset(seed=6)
    out = gather_histories(ds, np.array([0, 0]), np.array([0, 2]), 4)
    assert out[0].tolist() == [0, 0, 0, 0]
    assert out[1].tolist() == [0, 0, *ds.sequence(0)[:2].tolist()]
