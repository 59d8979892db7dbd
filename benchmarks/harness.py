"""What every benchmark shares: where raw outputs go, and the provenance stamped on every record.

A record is one JSON object per line. :class:`Records` writes each to stdout and appends it to a file under
``benchmarks/out/`` (git-ignored), adding ``"provenance"``: the machine (CPU model, the instruction-set
extensions that decide torch's kernels, cores), the torch and Python versions, the thinkrec commit with a
dirty flag, the command line and the time. Summary files written by the scripts carry the same block.
Timings from two records are comparable only when their machines match.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"

# /proc/cpuinfo flags that change which kernels torch and oneDNN pick (vector width, native bf16, AMX)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags from ``/proc/cpuinfo`` (empty where the file does not exist)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
        if model and flags:
            break
    return model, flags


def machine() -> dict[str, Any]:
    """The machine a timing was taken on."""
    model, flags = _cpuinfo()
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        capability = None
    affinity: int | None
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return {
        "cpu": model,
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "torch_cpu_capability": capability,
        "cores": affinity,
        "cpu_count": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
    }


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout the benchmark runs from.

    Dirty means tracked files differ from the commit (untracked files do not count).
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


@functools.cache
def provenance() -> dict[str, Any]:
    """Machine, versions, commit, command line and start time of this process (computed once)."""
    return {
        "machine": machine(),
        "torch": torch_version(),
        "python": platform.python_version(),
        "thinkrec": git_commit(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started": now(),
    }


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def stamp(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with this process's provenance and the current time added."""
    run = provenance()  # first, so that a record's time is never before its process's start
    return {**record, "time": now(), "provenance": run}


def out_dir(area: str, *parts: str) -> Path:
    """``benchmarks/out/<area>/<parts...>``: the git-ignored folder for one benchmark's raw outputs."""
    return OUT.joinpath(area, *parts)


class Records:
    """JSONL records of one benchmark run: each goes to stdout and to ``path``, stamped with provenance.

    ``path`` defaults to ``benchmarks/out/<area>/<name>-<UTC time>.jsonl``; ``path=None`` with
    ``to_file=False`` writes to stdout only.
    """

    def __init__(
        self, area: str, name: str, path: Path | None = None, *, to_file: bool = True, echo: IO[str] | None = None
    ):
        if path is None and to_file:
            when = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            path = out_dir(area, f"{name}-{when}.jsonl")
        self.path = path
        self.echo = sys.stdout if echo is None else echo
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            print(f"{name}: records -> {self.path}", file=sys.stderr)

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        line = stamp(record)
        text = json.dumps(line, default=str)
        print(text, file=self.echo, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(text + "\n")
        return line


def add_records_argument(parser: Any) -> None:
    """``--records PATH``: where the JSONL records go (default: a new file under ``benchmarks/out/``)."""
    parser.add_argument(
        "--records", type=Path, default=None, help="JSONL file for the records (default: a new one in benchmarks/out/)"
    )


def run_labels(runs: list[Path]) -> list[str]:
    """A name per run for its output files and table: the folder's name, with as many parent folders
    (joined by ``-``) as it takes to tell the runs apart (``erl/.../s1`` and ``prl/.../s1`` are not both ``s1``)."""
    parts = [r.parts[1:] if r.anchor else r.parts for r in runs]  # never the root ("/") in a file name
    for depth_ in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["-".join(p[-depth_:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}-{r.name}" for i, r in enumerate(runs)]  # the same folder given twice
