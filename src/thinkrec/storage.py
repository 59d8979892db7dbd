"""Files a run writes, written safely: atomic replacement of whole files and the run directory's lock.

Every writer goes through a temporary file in the target's folder (``.NAME.XXXXXXXX.tmp``) and
``os.replace``, so a reader (or a killed writer) never sees half a file. Temporary files are created with
mode ``0o666`` less the umask, as ``open`` would create the target, so outputs get the usual permissions. A
killed writer can leave its temporary file behind; :func:`remove_temporaries` deletes them when a run
starts again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from thinkrec.errors import ThinkrecError

LOCK_NAME = ".lock"

# ``.NAME.<8 hex>.tmp`` is what :func:`atomic_path` creates; ``.NAME.tmp`` and ``.NAME.<8 chars>`` of a run
# output NAME are the temporaries of earlier thinkrec versions (``tempfile.mkstemp``), which a killed run may
# have left too. Nothing else matches, so a user's own dot-files in a run directory stay.
_TEMPORARY = re.compile(
    r"^\.(?:[^.][^/]*\.[0-9a-f]{8}\.tmp|[^.][^/]*\.(?:json|jsonl|png|npz|parquet|safetensors)\.(?:tmp|[a-z0-9_]{8}))$"
)


@contextmanager
def exclusive_run_dir(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock for the block: a second process training into the same run directory
    (e.g. the same command started twice) fails at once with a clear message instead of both writing its
    checkpoints and log. The lock is the operating system's (``flock``): a killed run leaves no stale lock,
    so resuming never needs a clean-up. Where ``flock`` does not exist (Windows) no lock is taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        opened = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise ThinkrecError(f"{directory}: cannot use it as a run directory ({exc.strerror or exc})") from None
    with opened as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ThinkrecError(
                f"{directory} is in use: another thinkrec process (pid {holder}) is training there; wait for it"
                " to finish, stop it (a stopped run resumes from its last epoch), or choose another run directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_temporaries(directory: Path) -> list[str]:
    """Delete the temporary files that killed writers left in ``directory`` (not in its sub-folders);
    returns their names. Call it only while holding the directory's lock, so no live writer loses its file."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for entry in sorted(directory.iterdir()):
        if _TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (it exists, empty; writers may replace it);
    when the block ends without an error it gets the mode a new file gets under the umask, is synced to disk
    and renamed onto ``path``, otherwise it is deleted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # O_EXCL: never another writer's file; 0o666: the kernel applies the umask (mkstemp would give 0o600)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 1 in 4 billion
            continue
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors' save_file) recreate the file as 0o600
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (and string ``metadata`` in the header) as one safetensors file, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
