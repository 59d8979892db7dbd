"""The Recommender gives exactly what calling the model directly gives, batched or not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_serve_common import MAX_LEN, N_ITEMS, make_run, reasoning_recommender
from thinkrec.data.batches import position_ids
from thinkrec.serve.recommender import MAX_K, Recommender

HISTORIES = [[3, 7, 9], [1], [5, 5, 6, 2, 8, 11, 40, 41, 42, 43, 44, 45], [60, 59]]


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return Recommender.from_run(make_run(tmp_path_factory.mktemp("run")))


def direct(rec: Recommender, history: list[int], steps: int | None = None) -> torch.Tensor:
    """Logits of one history, computed the way ``thinkrec recommend --history`` does."""
    window = history[-MAX_LEN:]
    with torch.no_grad():
        states = rec.model.encode(torch.tensor([window]), position_ids(len(window), MAX_LEN), steps)
        return rec.model.score(rec.model.user_vector(states, "last"))[0]


def test_loads_vocabulary_and_model(rec: Recommender) -> None:
    assert rec.n_items == N_ITEMS
    assert rec.vocabulary.internal(1007) == 1
    assert rec.vocabulary.title(1).startswith("Toy")
    assert rec.reasoning_steps == 0
    assert rec.describe()["kind"] == "sasrec"


def test_batched_top_k_equals_the_model_called_one_history_at_a_time(rec: Recommender) -> None:
    top = rec.recommend(HISTORIES, k=5)
    assert top.ids.shape == (len(HISTORIES), 5)
    for row, history in enumerate(HISTORIES):
        logits = direct(rec, history)
        expected = torch.topk(logits, 5)
        assert top.ids[row].tolist() == (expected.indices + 1).tolist()
        torch.testing.assert_close(top.scores[row], expected.values, rtol=1e-5, atol=1e-5)


def test_long_histories_are_cut_to_max_len(rec: Recommender) -> None:
    long = list(range(1, 30))
    a = rec.recommend([long], k=10)
    b = rec.recommend([long[-MAX_LEN:]], k=10)
    assert a.ids.tolist() == b.ids.tolist()


def test_exclude_seen_never_returns_history_items(rec: Recommender) -> None:
    history = [int(i) for i in rec.recommend([[3, 7, 9]], k=20).ids[0][:10]]
    top = rec.recommend([history], k=N_ITEMS, exclude_seen=True)
    returned = [i for i, _ in top.row(0)]
    assert not set(returned) & set(history)
    assert len(returned) == N_ITEMS - len(set(history))


def test_memory_budget_splits_passes_without_changing_results(rec: Recommender) -> None:
    small = Recommender(rec.model, rec.vocabulary, rec.config, memory_budget_mb=0)
    assert small._rows_per_pass() == 1
    assert small.recommend(HISTORIES, k=7).ids.tolist() == rec.recommend(HISTORIES, k=7).ids.tolist()


def test_bad_calls_raise_value_error(rec: Recommender) -> None:
    with pytest.raises(ValueError, match="empty"):
        rec.recommend([[1], []], k=5)
    with pytest.raises(ValueError, match="outside"):
        rec.recommend([[0]], k=5)
    with pytest.raises(ValueError, match="outside"):
        rec.recommend([[N_ITEMS + 1]], k=5)
    with pytest.raises(ValueError, match="k must"):
        rec.recommend([[1]], k=0)
    with pytest.raises(ValueError, match="k must"):
        rec.recommend([[1]], k=MAX_K + 1)
    with pytest.raises(ValueError, match="reasoning steps"):
        rec.recommend([[1]], k=5, steps=2)


def test_k_larger_than_catalogue_returns_the_whole_catalogue(rec: Recommender) -> None:
    assert rec.recommend([[1]], k=MAX_K).ids.shape == (1, N_ITEMS)


@pytest.mark.parametrize("kind", ["prl", "erl"])
def test_reasoning_model_gives_per_step_top_k_of_each_state(kind: str) -> None:
    rec = reasoning_recommender(kind)
    assert rec.reasoning_steps == 2 and rec.max_reasoning_steps == 3
    assert rec.inference == (("mean", None) if kind == "erl" else ("last", None))
    for steps in (None, 0, 1, 3):
        top = rec.recommend(HISTORIES, k=6, steps=steps)
        k_used = 2 if steps is None else steps
        assert top.step_ids is not None and top.step_scores is not None
        assert top.step_ids.shape == (len(HISTORIES), k_used + 1, 6)
        for row, history in enumerate(HISTORIES):
            window = history[-MAX_LEN:]
            with torch.no_grad():
                states = rec.model.encode(torch.tensor([window]), position_ids(len(window), MAX_LEN), k_used)
            assert states.shape[1] == k_used + 1
            for s in range(k_used + 1):
                expected = torch.topk(rec.model.score(states[:, s])[0], 6)
                assert top.step_ids[row, s].tolist() == (expected.indices + 1).tolist()
                torch.testing.assert_close(top.step_scores[row, s], expected.values, rtol=1e-5, atol=1e-5)
            # the final list uses the run's inference mode: PRL the last state, ERL the mean of the states
            final = torch.topk(rec.model.score(rec.model.user_vector(states, *rec.inference))[0], 6)
            assert top.ids[row].tolist() == (final.indices + 1).tolist()
        assert len(top.step_rows(0)) == k_used + 1
    with pytest.raises(ValueError, match="reasoning steps"):
        rec.recommend([[1]], k=5, steps=4)
    plain = rec.recommend(HISTORIES, k=6, per_step=False)
    assert plain.step_ids is None and plain.ids.tolist() == rec.recommend(HISTORIES, k=6).ids.tolist()


def test_reasoning_run_directory_loads_its_reasoner(tmp_path: Path) -> None:
    rec = Recommender.from_run(make_run(tmp_path, reasoning="erl"))
    assert rec.model.reasoner is not None and rec.reasoning_steps == 2 and rec.max_reasoning_steps == 3
    assert rec.describe()["inference"] == "mean"
    reference = reasoning_recommender("erl")
    assert rec.recommend(HISTORIES, k=5).ids.tolist() == reference.recommend(HISTORIES, k=5).ids.tolist()


def test_not_a_run_directory_is_a_clear_error(tmp_path: Path) -> None:
    from thinkrec.errors import ThinkrecError

    with pytest.raises(ThinkrecError, match="not a thinkrec run directory"):
        Recommender.from_run(tmp_path)
