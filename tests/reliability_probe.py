"""Reliability probe: every finding about run files, end to end through the CLI (``thinkrec.cli.main``).

Each check runs the real commands on a tiny made-up log in a temporary folder (kills are simulated by
raising ``KeyboardInterrupt`` at the chosen moment) and prints one line: the finding, what was done, the
exit code and the message or behaviour seen, and ``ok`` or ``FAIL``. Exits 1 if any check fails.

    python tests/reliability_probe.py          # about half a minute on one core
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from thinkrec.cli.main import main

CONFIG = """
[data]
name = "shop"
[data.source]
format = "table"
path = "{events}"
user_col = "customer"
item_col = "sku"
time_col = "ts"
[model]
hidden = 8
layers = 1
heads = 1
max_len = 6
[train]
epochs = 1
batch_size = 64
progress = false
"""

ROWS: list[tuple[str, str, str, str, bool]] = []


def cli(*argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``thinkrec ARGV``; an exception escaping ``main`` counts as a traceback."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except Exception as exc:  # the point: a traceback is a finding
            return -1, f"Traceback: {type(exc).__name__}: {exc}"
    return code, err.getvalue().strip()


def record(finding: str, check: str, code: int | str, detail: str, ok: bool) -> None:
    detail = " ".join(detail.replace("thinkrec: error: ", "").split())
    ROWS.append((finding, check, str(code), detail[:150] + ("..." if len(detail) > 150 else ""), ok))


def expect_error(finding: str, check: str, argv: list[str], *needles: str) -> None:
    code, err = cli(*argv)
    record(finding, check, code, err, code == 2 and "Traceback" not in err and all(n in err for n in needles))


def train(run: str, *extra: str) -> tuple[int, str]:
    return cli("train", "shop.toml", "--run-dir", run, *extra)


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def killed_after(target: str, count: int) -> Callable[[Any, Any], None]:
    """``os.replace`` that interrupts the process right after the ``count``-th replacement of ``target``."""
    real, seen = os.replace, [0]

    def replace(src: Any, dst: Any) -> None:
        real(src, dst)
        if Path(dst).name == target:
            seen[0] += 1
            if seen[0] == count:
                raise KeyboardInterrupt

    return replace


def epochs_logged(run: str) -> list[int]:
    return [json.loads(line)["epoch"] for line in Path(run, "log.jsonl").read_text().splitlines()]


def probe_checkpoint() -> None:
    finding = "2 checkpoint"
    train("straight", "train.epochs=3")
    with patched(os, "replace", killed_after("last.safetensors", 2)):
        code, _ = train("killed", "train.epochs=3")
    code2, _ = train("killed", "train.epochs=3")
    same = (
        json.loads(Path("killed/results.json").read_text())["test"]["metrics"]
        == (json.loads(Path("straight/results.json").read_text())["test"]["metrics"])
    )
    logged = epochs_logged("killed")
    record(
        finding,
        "kill after epoch 2's weights are replaced, rerun",
        f"{code},{code2}",
        f"log epochs {logged}; test metrics equal an uninterrupted run: {same}",
        code == 130 and code2 == 0 and same and logged == [0, 1, 2],
    )
    files = sorted(p.name for p in Path("killed/checkpoints").iterdir())
    record(finding, "checkpoint files", "-", ", ".join(files), files == ["best.safetensors", "last.safetensors"])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[str, Callable[[Path], Any], str]] = {
    "truncated best": ("checkpoints/best.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100]), "damaged"),
    "empty best": ("checkpoints/best.safetensors", lambda p: p.write_bytes(b""), "damaged"),
    "flipped byte in best's weights": ("checkpoints/best.safetensors", flip, "checksum"),
    "bad JSON config.json": ("config.json", lambda p: p.write_text("{"), "not a readable thinkrec config"),
    "invalid config.json": ("config.json", lambda p: p.write_text('{"model": {"hidden": "x"}}'), "hidden"),
    "missing items.parquet": ("items.parquet", lambda p: p.unlink(), "missing"),
    "corrupt items.parquet": ("items.parquet", lambda p: p.write_bytes(b"PAR1 junk"), "damaged"),
}


def probe_damage() -> None:
    import uvicorn

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the damaged run was served")

    commands = {"evaluate": ["evaluate"], "recommend": ["recommend", "--history", "3,4"], "serve": ["serve"]}
    for damage, (name, spoil, needle) in DAMAGE.items():
        for command, argv in commands.items():
            run = f"damaged-{len(ROWS)}"
            train(run)
            spoil(Path(run, name))
            with patched(uvicorn, "run", refuse):
                expect_error("3 damaged files", f"{damage} -> {command}", [argv[0], run, *argv[1:]], name, needle)
    for what, spoil in (("truncated", DAMAGE["truncated best"][1]), ("flipped byte in", flip)):
        train("resume")
        spoil(Path("resume/checkpoints/last.safetensors"))
        expect_error(
            "3 damaged files",
            f"{what} last -> train (resume)",
            ["train", "shop.toml", "--run-dir", "resume"],
            "last.safetensors",
            "train.resume=false",
        )
        code, err = train("resume", "train.resume=false")
        record("3 damaged files", "... then train.resume=false as it says", code, err or "trained", code == 0)


def probe_failed_run() -> None:
    from thinkrec.train.trainer import Trainer

    def interrupted(self: Any, epoch: int) -> dict[str, float]:
        raise KeyboardInterrupt

    with patched(Trainer, "train_epoch", interrupted):
        code, _ = train("failed", "model.hidden=4", "model.heads=1")
    left = sorted(p.name for p in Path("failed").iterdir())
    code2, err = train("failed")
    record(
        "4 failed run",
        "interrupted in epoch 0, then the corrected config",
        f"{code},{code2}",
        f"{err or 'trained'} (the failed run had left {', '.join(left)})",
        code == 130 and code2 == 0,
    )


def probe_names_and_data() -> None:
    before = set(Path("..").iterdir())
    code, err = cli("train", "shop.toml", "data.name=../../escaped")
    created = sorted(str(p) for p in set(Path("..").iterdir()) - before)
    record(
        "5 data.name", "data.name=../../escaped", code, f"{err}; created outside: {created}", code == 2 and not created
    )
    code, err = train("baddata", "data.source.user_col=client")
    exists = Path("baddata").exists()
    record(
        "5 data first", "bad column, new run dir", code, f"{err}; run dir created: {exists}", code == 2 and not exists
    )


def probe_log_and_temporaries() -> None:
    train("log", "train.epochs=2")
    log = Path("log/log.jsonl")
    rows = log.read_text().splitlines()
    log.write_text(rows[0] + "\n" + rows[1][:10])
    code, _ = train("log", "train.epochs=2")
    same = log.read_text().splitlines() == rows
    record("8 log", "log row cut in half by a kill, rerun", code, f"log restored: {same}", code == 0 and same)
    stale = [Path("log/checkpoints/.last.safetensors.k3j_a8x2"), Path("log/.results.json.0a1b2c3d.tmp")]
    for path in stale:
        path.write_text("x")
    code, _ = train("log", "train.epochs=2")
    left = [p.name for p in stale if p.exists()]
    record("8 temporaries", "stale temporaries, rerun", code, f"left: {left}", code == 0 and not left)


def probe_modes_and_epochs() -> None:
    old = os.umask(0o022)
    try:
        train("modes")
    finally:
        os.umask(old)
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in Path("modes").rglob("*") if p.is_file() and p.name != ".lock"}
    record("modes", "umask 022: modes of every output", "-", ", ".join(sorted(modes)), modes == {"0o644"})
    code, _ = train("modes", "train.epochs=3")
    logged = epochs_logged("modes")
    record(
        "epochs",
        "finished 1-epoch run, train.epochs=3",
        code,
        f"log epochs {logged}",
        code == 0 and logged == [0, 1, 2],
    )
    expect_error("epochs", "then train.epochs=2", ["train", "shop.toml", "--run-dir", "modes", "train.epochs=2"], "3")
    expect_error(
        "4 other changes",
        "then train.epochs=3 model.hidden=4",
        ["train", "shop.toml", "--run-dir", "modes", "train.epochs=3", "model.hidden=4"],
        "different config (model.hidden)",
    )


def make_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["customer,sku,ts"]
    for user in range(60):
        start = rng.integers(0, 20)
        rows += [f"u{user},{(start + i) % 20 + 1},{1000 + 10 * i}" for i in range(10)]
    (root / "events.csv").write_text("\n".join(rows) + "\n")
    (root / "shop.toml").write_text(CONFIG.format(events=root / "events.csv"))


def probe() -> list[tuple[str, str, str, str, bool]]:
    """Run every check in a temporary folder; returns the rows."""
    ROWS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "work"
        root.mkdir()
        old_cwd, old_cache = Path.cwd(), os.environ.get("THINKREC_CACHE_DIR")
        os.environ["THINKREC_CACHE_DIR"] = str(root / "cache")
        os.chdir(root)
        try:
            make_data(root)
            for step in (probe_checkpoint, probe_damage, probe_failed_run, probe_names_and_data):
                step()
            probe_log_and_temporaries()
            probe_modes_and_epochs()
        finally:
            os.chdir(old_cwd)
            if old_cache is None:
                os.environ.pop("THINKREC_CACHE_DIR", None)
            else:
                os.environ["THINKREC_CACHE_DIR"] = old_cache
    return list(ROWS)


def main_probe() -> int:
    rows = probe()
    for finding, check, code, detail, ok in rows:
        print(f"{'ok  ' if ok else 'FAIL'} | {finding:<16} | {check:<52} | exit {code:<6} | {detail}")
    failed = sum(not row[4] for row in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} checks ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main_probe())
