"""Bad input to ``recommend``, ``evaluate`` and ``serve`` is one clear message and exit code 2, never a
traceback; an output never replaces its input; the HTTP API refuses non-JSON bodies and foreign hosts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_serve_common import external_ids, make_run
from thinkrec.cli.main import main
from thinkrec.serve.recommender import MAX_K

EXT = external_ids()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


def fails_with(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert err.count("\n") <= 2, err  # one message


def test_batch_output_that_is_its_input_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "in.csv"
    users.write_text(f"user,items\nu1,{EXT[0]} {EXT[1]}\n")
    before = users.read_bytes()
    argv = ["recommend", str(run_dir), "--batch", str(users), "--output", str(users)]
    fails_with(argv, "is the input file", capsys)
    assert users.read_bytes() == before
    # the same file by another name
    alias = tmp_path / "sub" / ".." / "in.csv"
    fails_with([*argv[:-1], str(alias)], "is the input file", capsys)
    assert users.read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["-k", "-5"], f"-k must be a whole number in 1..{MAX_K}, got -5"),
        (["-k", "0"], f"-k must be a whole number in 1..{MAX_K}, got 0"),
        (["-k", "100000"], f"-k must be a whole number in 1..{MAX_K}, got 100000"),
    ],
)
def test_recommend_k_outside_the_shared_cap_is_refused(
    run_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    fails_with(["recommend", str(run_dir), "--history", f"{EXT[0]},{EXT[1]}", *extra], says, capsys)


def test_recommend_k_at_the_cap_is_the_whole_small_catalogue(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", str(run_dir), "--history", str(EXT[0]), "-k", str(MAX_K)]) == 0
    assert f"top-{MAX_K}:" in capsys.readouterr().out


def test_batch_k_outside_the_cap_is_refused(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "in.csv"
    users.write_text(f"user,items\nu1,{EXT[0]}\n")
    argv = ["recommend", str(run_dir), "--batch", str(users), "--output", str(tmp_path / "o.csv"), "-k", "0"]
    fails_with(argv, "-k must be a whole number", capsys)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--ks", "abc"], "--ks: 'abc' is not a whole number"),
        (["--ks", "5,0"], "--ks: cut-offs must be 1 or more, got 0"),
        (["--steps", "-1"], "--steps must be 0 or more"),
    ],
)
def test_evaluate_bad_options_are_messages(
    run_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    fails_with(["evaluate", str(run_dir), *extra], says, capsys)


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_serve_port_out_of_range_is_a_message(run_dir: Path, capsys: pytest.CaptureFixture[str], port: str) -> None:
    fails_with(["serve", str(run_dir), "--port", port], "--port must be in 1..65535", capsys)


def test_outputs_that_cannot_be_created_are_messages(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    fails_with(["evaluate", str(run_dir), "--output", str(a_file / "report.json")], "cannot create the folder", capsys)
    users = tmp_path / "in.parquet"
    pq.write_table(pa.table({"user": ["u1"], "items": [[EXT[0]]]}), users)
    argv = ["recommend", str(run_dir), "--batch", str(users), "--output", str(a_file / "out" / "top.csv")]
    fails_with(argv, "cannot create the folder", capsys)
    fails_with(["evaluate", str(run_dir), "--output", str(tmp_path)], "is a folder", capsys)
    fails_with(["train", "ml100k-sasrec", "--run-dir", str(a_file / "run")], "cannot create the folder", capsys)
    fails_with(["demo", "--run-dir", str(a_file / "run")], "cannot create the folder", capsys)


# --- the HTTP API ----------------------------------------------------------------------------------------------

fastapi = pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from thinkrec.serve.app import allowed_hosts, create_app  # noqa: E402


@pytest.fixture(scope="module")
def app(run_dir: Path) -> fastapi.FastAPI:
    return create_app(run_dir)


def test_a_body_that_is_not_json_gets_415(app: fastapi.FastAPI) -> None:
    client = TestClient(app, base_url="http://localhost")
    body = f'{{"history": [{EXT[0]}]}}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": kind} if kind else {}
        response = client.post("/recommend", content=body, headers=headers)
        assert response.status_code == 415, (kind, response.text)
        assert "application/json" in response.json()["error"]
    ok = client.post("/recommend", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"])
def test_loopback_hosts_are_served(app: fastapi.FastAPI, host: str) -> None:
    response = TestClient(app).get("/health", headers={"host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "", "127.0.0.2"])
def test_other_hosts_are_refused(app: fastapi.FastAPI, host: str) -> None:
    client = TestClient(app)
    for response in (client.get("/health", headers={"host": host}), client.get("/", headers={"host": host})):
        assert response.status_code == 400, response.text
        assert "--allowed-host" in response.json()["error"]


def test_allowed_hosts_add_the_bound_host_and_the_extra_names(run_dir: Path) -> None:
    assert allowed_hosts("0.0.0.0") == sorted(["localhost", "127.0.0.1", "::1"])
    hosts = allowed_hosts("10.1.2.3", ["recs.example.org", "[fd00::1]"])
    assert {"10.1.2.3", "recs.example.org", "fd00::1", "localhost"} <= set(hosts)
    client = TestClient(create_app(run_dir, hosts=hosts))
    assert client.get("/health", headers={"host": "recs.example.org"}).status_code == 200
    assert client.get("/health", headers={"host": "[fd00::1]:80"}).status_code == 200
    assert client.get("/health", headers={"host": "other.example.org"}).status_code == 400
