"""The benchmark harness stamps every record with its provenance; the suite's layout keeps its bounds."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import harness

REPO = Path(__file__).resolve().parents[1]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_records_carry_machine_versions_commit_command_and_time(tmp_path: Path) -> None:
    path = tmp_path / "out" / "speed" / "x.jsonl"
    echo = io.StringIO()
    records = harness.Records("speed", "x", path, echo=echo)
    records.write({"kind": "round", "seconds": 0.5})
    records.write({"kind": "summary", "ratio": 0.2})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [json.loads(line) for line in echo.getvalue().splitlines()] == lines
    assert [line["kind"] for line in lines] == ["round", "summary"]
    for line in lines:
        run = line["provenance"]
        assert set(run) >= {"machine", "torch", "python", "thinkrec", "command", "started"}
        assert run["torch"] == __import__("torch").__version__
        assert run["machine"]["cores"] >= 1 and run["machine"]["cpu"]
        assert set(run["machine"]["isa"]) <= set(harness.ISA_FLAGS)
        assert line["time"] >= run["started"]


def test_default_record_file_is_new_and_under_the_out_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(harness, "OUT", tmp_path / "out")
    records = harness.Records("quality", "cold", echo=io.StringIO())
    assert records.path is not None and records.path.parent == tmp_path / "out" / "quality"
    assert re.fullmatch(r"cold-\d{8}T\d{6}Z\.jsonl", records.path.name)
    assert harness.Records("quality", "cold", to_file=False, echo=io.StringIO()).path is None


def test_machine_lists_the_instruction_sets_from_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "_cpuinfo", lambda: ("Some CPU", {"fpu", "avx2", "fma", "avx512f", "amx_bf16"}))
    found = harness.machine()
    assert found["cpu"] == "Some CPU"
    assert found["isa"] == ["avx2", "fma", "avx512f", "amx_bf16"]  # in ISA_FLAGS order, others left out


@needs_git
def test_commit_and_dirty_flag(tmp_path: Path) -> None:
    assert harness.git_commit(tmp_path) == {"commit": None, "dirty": None}  # not a repository
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sha = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("not counted")
    assert harness.git_commit(tmp_path) == {"commit": sha, "dirty": False}
    (tmp_path / "a.txt").write_text("two")
    assert harness.git_commit(tmp_path) == {"commit": sha, "dirty": True}


@needs_git
def test_out_folder_is_ignored_and_committed_benchmarks_stay_small() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    probe = harness.out_dir("speed", "probe.jsonl")
    assert subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(probe)], check=False).returncode == 0
    tracked = git(REPO, "ls-files", "-z", "benchmarks").split("\0")
    sizes = {name: (REPO / name).stat().st_size for name in tracked if name and (REPO / name).is_file()}
    assert sum(sizes.values()) <= 1_000_000, sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    assert not [name for name in sizes if name.endswith(".npz")]  # per-sample ranks are regenerated, not committed


def test_scripts_import_each_other_as_modules() -> None:
    """No benchmark puts folders on sys.path or loads a sibling by file path."""
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "benchmarks").rglob("*.py")
        if re.search(r"sys\.path|spec_from_file_location", path.read_text())
    ]
    assert offenders == []


DOCS = [REPO / "README.md", REPO / "docs" / "benchmarks.md", *sorted((REPO / "docs" / "benchmarks").glob("*.md"))]


def test_docs_front_page_is_short_and_links_existing_pages() -> None:
    front = (REPO / "docs" / "benchmarks.md").read_text()
    assert len(front.splitlines()) <= 400
    for link in re.findall(r"\]\((benchmarks/[\w.-]+\.md)\)", front):
        assert (REPO / "docs" / link).is_file(), link


def test_commands_in_docs_name_existing_benchmarks() -> None:
    """Every ``python -m benchmarks.…`` module and ``benchmarks/…`` path the docs mention exists."""
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for module in re.findall(r"python -m (benchmarks(?:\.\w+)+)", text):
            if not (REPO / (module.replace(".", "/") + ".py")).is_file():
                missing.append(f"{doc.name}: {module}")
        for path in re.findall(r"(?<![\w/.-])(benchmarks/[\w./-]*\w)", text):
            if path.startswith("benchmarks/out"):
                continue  # raw outputs: made by running the benchmarks
            # from the repository root or, for links between pages, from the page's folder; a name cut at a
            # brace expansion (``name.{md,json}``) counts when files start with it
            if not any((base / path).exists() or any(base.glob(path + "*")) for base in (REPO, doc.parent)):
                missing.append(f"{doc.name}: {path}")
    assert missing == []
