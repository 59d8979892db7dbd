"""The HTTP API: good requests, every kind of bad request (4xx with a JSON error), and a schema fuzz test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'thinkrec[serve]')")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_serve_common import external_ids, make_run, reasoning_recommender
from thinkrec.serve.app import MAX_BODY_BYTES, create_app
from thinkrec.serve.recommender import Recommender

EXT = external_ids()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def client(run_dir: Path) -> TestClient:
    return TestClient(create_app(run_dir), raise_server_exceptions=False, base_url="http://localhost")


def test_health_and_openapi(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"]["n_items"] == len(EXT)
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/items/search", "/health"} <= set(schema["paths"])


def test_recommend_matches_the_recommender(client: TestClient, run_dir: Path) -> None:
    rec = Recommender.from_run(run_dir)
    response = client.post("/recommend", json={"history": [EXT[0], str(EXT[5]), EXT[9]], "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    top = rec.recommend([[1, 6, 10]], k=5)
    assert [it["item"] for it in body["items"]] == [rec.vocabulary.external_id(i) for i, _ in top.row(0)]
    assert [it["title"] for it in body["items"]] == [rec.vocabulary.title(i) for i, _ in top.row(0)]
    assert body["items"][0]["score"] == pytest.approx(top.row(0)[0][1], rel=1e-5)
    assert body["steps"] is None and body["reasoning_steps"] == 0 and body["history_used"] == 3
    assert body["model"]["kind"] == "sasrec"


def test_exclude_seen(client: TestClient) -> None:
    first = client.post("/recommend", json={"history": [EXT[0]], "k": 3}).json()["items"]
    history = [it["item"] for it in first]
    again = client.post("/recommend", json={"history": history, "k": 10, "exclude_seen": True}).json()["items"]
    assert not {it["item"] for it in again} & set(history)


def test_search(client: TestClient) -> None:
    body = client.get("/items/search", params={"q": "star", "limit": 3}).json()
    assert len(body["items"]) == 3
    assert all("star" in it["title"].lower() for it in body["items"])
    assert client.get("/items/search", params={"q": "no such title"}).json() == {"items": []}


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    for name in ("../app.py", "..%2Fapp.py", "index.html", "%2e%2e/%2e%2e/etc/passwd"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 404, name
        assert "error" in response.json()


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("unknown id", {"history": [EXT[0], 5], "k": 5}, 422, "unknown item ids"),
    ("empty history", {"history": [], "k": 5}, 422, "history"),
    ("no history", {"k": 5}, 422, "history"),
    ("k zero", {"history": [EXT[0]], "k": 0}, 422, "k"),
    ("k negative", {"history": [EXT[0]], "k": -3}, 422, "k"),
    ("k huge", {"history": [EXT[0]], "k": 10**12}, 422, "k"),
    ("k string", {"history": [EXT[0]], "k": "5"}, 422, "k"),
    ("k float", {"history": [EXT[0]], "k": 5.5}, 422, "k"),
    ("history not a list", {"history": EXT[0], "k": 5}, 422, "history"),
    ("history of floats", {"history": [1.5], "k": 5}, 422, "history"),
    ("history of bools", {"history": [True], "k": 5}, 422, "history"),
    ("history of objects", {"history": [{"a": 1}], "k": 5}, 422, "history"),
    ("nulls", {"history": [None], "k": 5}, 422, "history"),
    ("unknown field", {"history": [EXT[0]], "k": 5, "user": 3}, 422, "user"),
    ("steps on a plain model", {"history": [EXT[0]], "reasoning_steps": 2}, 422, "reasoning_steps"),
    ("negative steps", {"history": [EXT[0]], "reasoning_steps": -1}, 422, "reasoning_steps"),
    ("exclude_seen string", {"history": [EXT[0]], "exclude_seen": "yes"}, 422, "exclude_seen"),
    ("a list body", [1, 2], 422, "invalid request"),
    ("long id", {"history": ["x" * 1000]}, 422, "history"),
    ("too many ids", {"history": [EXT[0]] * 5000}, 422, "history"),
]


@pytest.mark.parametrize(("name", "body", "status", "says"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_4xx_with_a_json_error(
    client: TestClient, name: str, body: Any, status: int, says: str
) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error, error


def test_malformed_json_and_wrong_content(client: TestClient) -> None:
    for content in (b"{", b"not json", b"\xff\xfe", b"", b'{"history": [NaN], "k": Infinity}', b'{"k": -Infinity}'):
        response = client.post("/recommend", content=content, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500 and "error" in response.json()
    assert client.get("/recommend").status_code == 405
    assert client.get("/nowhere").status_code == 404


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    big = b'{"history": [' + b"1," * MAX_BODY_BYTES + b"1]}"
    response = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]

    def chunks() -> Any:  # no content-length: the streaming limit applies
        for _ in range(100):
            yield b" " * 1024

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]


def test_search_bad_requests(client: TestClient) -> None:
    for params in (
        {},
        {"q": ""},
        {"q": "x" * 500},
        {"q": "a", "limit": 0},
        {"q": "a", "limit": 10**6},
        {"q": "a", "limit": "many"},
    ):
        response = client.get("/items/search", params=params)
        assert response.status_code == 422 and "error" in response.json(), params


def test_reasoning_model_returns_per_step_lists() -> None:
    rec = reasoning_recommender()
    client = TestClient(create_app(recommender=rec), raise_server_exceptions=False, base_url="http://localhost")
    ext = rec.vocabulary.external
    body = client.post("/recommend", json={"history": [ext[0], ext[1]], "k": 4}).json()
    assert body["reasoning_steps"] == 2 and len(body["steps"]) == 3
    assert [it["item"] for it in body["steps"][-1]] == [it["item"] for it in body["items"]]
    body = client.post("/recommend", json={"history": [ext[0]], "k": 4, "reasoning_steps": 3}).json()
    assert len(body["steps"]) == 4
    response = client.post("/recommend", json={"history": [ext[0]], "reasoning_steps": 4})
    assert response.status_code == 422 and "reasoning_steps" in response.json()["error"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
ITEM = st.sampled_from(EXT) | st.sampled_from([str(e) for e in EXT]) | st.integers() | st.text(max_size=30) | JSON
REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "history": st.lists(ITEM, max_size=60) | JSON,
        "k": st.integers(min_value=-5, max_value=2000) | JSON,
        "reasoning_steps": st.integers(min_value=-3, max_value=100) | JSON,
        "exclude_seen": st.booleans() | JSON,
        "extra": JSON,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=REQUEST | JSON)
def test_fuzzed_requests_never_give_5xx(client: TestClient, body: Any) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code < 500, response.text
    payload = response.json()
    if response.status_code == 200:
        assert 1 <= len(payload["items"]) <= 1000
    else:
        assert 400 <= response.status_code < 500 and isinstance(payload["error"], str)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.text(max_size=300), limit=st.integers(min_value=-10, max_value=500) | st.text(max_size=5))
def test_fuzzed_search_never_gives_5xx(client: TestClient, q: str, limit: int | str) -> None:
    response = client.get("/items/search", params={"q": q, "limit": limit})
    assert response.status_code < 500, response.text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzzed_raw_bodies_never_give_5xx(client: TestClient, content: bytes) -> None:
    response = client.post("/recommend", content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
