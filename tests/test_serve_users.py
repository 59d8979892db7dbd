"""``/recommend`` and the command line for a known user of the run's dataset: the real history, the
held-out test item marked."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_own_data import write_shop
from thinkrec.cli.main import main

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient

from thinkrec.serve.app import create_app


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("users")
    mp = pytest.MonkeyPatch()
    mp.setenv("THINKREC_CACHE_DIR", str(root / "cache"))
    try:
        config = write_shop(root / "shop", '["name"]', None)
        assert main(["train", str(config), "--run-dir", str(root / "run")]) == 0
    finally:
        mp.undo()
    return root / "run"


def sequence(user: int) -> list[str]:
    """User ``u<user>``'s items in the shop log (see :func:`test_own_data.write_shop`)."""
    return [str((user + i) % 12 + 1) for i in range(8)]


def test_recommend_for_a_known_user_marks_the_held_out_item(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(run.parent / "cache"))
    client = TestClient(create_app(run), base_url="http://localhost")
    body = client.post("/recommend", json={"user": "u3", "k": 12}).json()
    items = sequence(3)
    assert [str(it["item"]) for it in body["history"]] == items[:-1]  # leave-one-out: the last item is held out
    assert str(body["held_out"]["item"]) == items[-1] and body["held_out"]["title"] == f"Gadget number {items[-1]}"
    assert body["history_used"] == 7
    marked = [it for it in body["items"] if it["held_out"]]
    assert [str(it["item"]) for it in marked] == [items[-1]]  # k = the catalogue: it is in the list, marked
    assert all(not it["held_out"] for it in body["items"] if str(it["item"]) != items[-1])
    # the same ranking as the history given by hand
    by_hand = client.post("/recommend", json={"history": items[:-1], "k": 12}).json()
    assert [it["item"] for it in by_hand["items"]] == [it["item"] for it in body["items"]]
    assert by_hand["history"] is None and by_hand["held_out"] is None

    unknown = client.post("/recommend", json={"user": "nobody"})
    assert unknown.status_code == 422 and "unknown user" in unknown.json()["error"]
    both = client.post("/recommend", json={"user": "u3", "history": items[:2]})
    assert both.status_code == 422 and "exactly one of history" in both.json()["error"]
    neither = client.post("/recommend", json={"k": 3})
    assert neither.status_code == 422 and "exactly one of history" in neither.json()["error"]


def test_command_line_user_recommends_after_the_whole_sequence(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THINKREC_CACHE_DIR", str(run.parent / "cache"))
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "u3", "-k", "3"]) == 0
    history = capsys.readouterr().out.split("top-3:")[0]
    assert f"Gadget number {sequence(3)[-1]}" in history
    assert main(["recommend", str(run), "--user", "nobody"]) == 2
    assert "'nobody' is not a user of dataset shop" in capsys.readouterr().err
