import numpy as np
import pytest

from thinkrec.data.batches import TrainSampler, eval_histories
from thinkrec.data.split import SplitConfig, global_time, leave_one_out
from thinkrec.errors import ConfigError

from helpers import random_dataset


def test_leave_one_out_targets_and_histories() -> None:
    ds = random_dataset(min_len=1)
    split = leave_one_out(ds)
    lengths = ds.lengths
    assert np.array_equal(split.test.users, np.flatnonzero(lengths >= 3))
    for u, pos, target in zip(split.test.users, split.test.positions, split.test.targets, strict=True):
        seq = ds.sequence(u)
        assert pos == len(seq) - 1 and target == seq[-1]
        assert split.train_lengths[u] == len(seq) - 2
    short = lengths < 3
    assert np.array_equal(split.train_lengths[short], lengths[short])
    # the validation item is part of the test history, the test item is not
    hist = eval_histories(split, split.test, 100)
    for row, u in zip(hist, split.test.users, strict=True):
        seq = ds.sequence(u)
        assert row[row > 0].tolist() == seq[:-1].tolist()


@pytest.mark.parametrize("mode", ["all", "last"])
def test_no_evaluation_target_is_visible_in_training(mode: str) -> None:
    ds = random_dataset(n_users=60, max_len=40)
    split = leave_one_out(ds)
    sampler = TrainSampler(split, max_len=8, mode=mode, stride=3)  # type: ignore[arg-type]
    seen_end = np.zeros(ds.n_users, dtype=np.int64)  # largest sequence index used as input or target
    for batch in sampler.batches(16, np.random.default_rng(0)):
        del batch
    ends = sampler.ends
    np.maximum.at(seen_end, sampler.users, ends - (1 if mode == "all" else 0))
    # "all": targets reach index end-1; "last": the target is index end. Both stay in the training prefix.
    assert np.all(seen_end <= np.maximum(split.train_lengths - 1, 0))


def test_global_time_split_windows_and_drops() -> None:
    ds = random_dataset(n_users=80, n_items=400, max_len=30, seed=3)  # a catalogue large enough for drops
    cfg = SplitConfig(kind="time", valid_cut=0.6, test_cut=0.8)
    split = global_time(ds, cfg)
    t_valid, t_test = split.protocol["t_valid"], split.protocol["t_test"]
    train_items: set[int] = set()
    for u in range(ds.n_users):
        seq, times = ds.sequence(u), ds.timestamps[ds.offsets[u] : ds.offsets[u + 1]]
        n_train = split.train_lengths[u]
        assert np.all(times[:n_train] < t_valid) and np.all(times[n_train:] >= t_valid)
        train_items.update(seq[:n_train].tolist())
    for which, lo, hi in (("valid", t_valid, t_test), ("test", t_test, 10**12)):
        samples = split.samples(which)  # type: ignore[arg-type]
        times = ds.timestamps[ds.offsets[samples.users] + samples.positions]
        assert np.all((times >= lo) & (times < hi))
        assert set(samples.targets.tolist()) <= train_items  # unseen targets dropped
        assert np.all(samples.positions >= 1)
        counts = split.protocol["samples"][which]
        assert counts["kept"] == len(samples)
        assert counts["in_window"] == counts["kept"] + counts["dropped_unseen_target"] + counts["dropped_no_history"]
        # the dropped unseen targets with a history are kept apart, for cold-start analyses
        unseen = split.unseen_targets[which]
        times = ds.timestamps[ds.offsets[unseen.users] + unseen.positions]
        assert np.all((times >= lo) & (times < hi)) and np.all(unseen.positions >= 1)
        assert not set(unseen.targets.tolist()) & train_items
        assert 0 < len(unseen) <= counts["dropped_unseen_target"]
        window = (ds.timestamps >= lo) & (ds.timestamps < hi)
        first = ds.offsets[ds.user_index] == np.arange(ds.n_interactions)  # an interaction with no history
        assert len(unseen) == int((window & ~np.isin(ds.items, list(train_items)) & ~first).sum())
    # histories drop items unseen in training and keep chronological order
    hist = eval_histories(split, split.test, 200)
    for row, u, pos in zip(hist, split.test.users, split.test.positions, strict=True):
        expected = [i for i in ds.sequence(u)[:pos] if i in train_items]
        assert row[row > 0].tolist() == expected


def test_time_split_that_leaves_no_test_samples_is_a_clear_error() -> None:
    ds = random_dataset()
    with pytest.raises(ConfigError, match="no test samples"):
        global_time(ds, SplitConfig(kind="time", valid_cut=0.5, test_cut=1e9, cut_unit="timestamp"))
