"""The one recommendation path: every way of asking a trained run for top-K items goes through here.

``thinkrec recommend`` (a history, a user, or ``--batch``), ``thinkrec llm recommend``, the HTTP API and the
Python API (:mod:`thinkrec`) all load a run with :func:`load_recommender` (a sequence-model run or an R²ec
run, behind the :class:`~thinkrec.serve.recommender.Recommends` interface), turn external ids into
internal ones with :func:`internal_ids`, ask ``recommend`` for the top-K, and turn the answer back into rows
of external ids and titles with :func:`top_rows`. The limits a caller may ask for (``k`` up to
:data:`~thinkrec.serve.recommender.MAX_K`, reasoning steps, depth selector names, ports) and the checks on
output paths live here too, so the command line, the server and the library refuse the same things with the
same words. A depth selector (``--depth``, ``eval.depth``, a request's ``depth``) changes only which reasoning
step's user vector ranks; the top-K is still the recommender's one ``recommend``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from thinkrec.errors import ThinkrecError
from thinkrec.eval.depth import parse_selector
from thinkrec.serve.recommender import MAX_K, ExternalId, Recommender, Recommends, TopK, UserHistory, Vocabulary

ROW_COLUMNS = ("user", "rank", "item", "title", "score")


def check_k(k: int, what: str = "-k") -> int:
    """``k`` if it is in ``1..MAX_K`` (the cap of the HTTP API too), else a :class:`ThinkrecError`."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ThinkrecError(f"{what} must be a whole number in 1..{MAX_K}, got {k!r}")
    return k


def check_steps(steps: int | None, what: str = "--steps") -> int | None:
    """Reasoning steps: ``None`` (the model's own) or a number >= 0 (the model checks its own maximum)."""
    if steps is not None and steps < 0:
        raise ThinkrecError(f"{what} must be 0 or more (0 = the backbone without reasoning), got {steps}")
    return steps


def check_depth(name: str | None, what: str = "--depth") -> str | None:
    """A depth selector name as given (``none``: no selector), or a :class:`ThinkrecError` naming the valid
    ones."""
    if name is None or name.strip() == "none":
        return name
    try:
        parse_selector(name)
    except ValueError as exc:
        raise ThinkrecError(f"{what}: {exc}") from None
    return name.strip()


def parse_ks(text: str, what: str = "--ks") -> list[int]:
    """Comma-separated metric cut-offs such as ``5,10,20``, each 1 or more."""
    ks: list[int] = []
    for token in text.split(","):
        try:
            k = int(token.strip())
        except ValueError:
            message = f"{what}: {token.strip()!r} is not a whole number; give cut-offs like 5,10,20"
            raise ThinkrecError(message) from None
        if k < 1:
            raise ThinkrecError(f"{what}: cut-offs must be 1 or more, got {k}")
        ks.append(k)
    return ks


def check_port(port: int, what: str = "--port") -> int:
    if not 1 <= port <= 65535:
        raise ThinkrecError(f"{what} must be in 1..65535, got {port}")
    return port


def check_output(
    path: str | Path, what: str = "--output", inputs: Iterable[str | Path] = (), create: bool = True
) -> Path:
    """An output file path that can be written: not one of ``inputs`` (a run must never overwrite what it
    reads), not a folder, in a folder that exists or can be made and that is writable. Makes the folder,
    unless ``create`` is off (a run directory is made only once its data are known to be good): then the
    nearest existing folder above it must be a writable folder."""
    out = Path(path).expanduser()
    for source in inputs:
        src = Path(source).expanduser()
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src)):
            raise ThinkrecError(f"{what} {out} is the input file {source}; write the output to another file")
    if out.is_dir():
        raise ThinkrecError(f"{what} {out} is a folder; give a file name")
    folder = out.parent
    if not create:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ThinkrecError(
                f"{what} {out}: cannot create the folder {folder} ({existing} is not a writable folder)"
            )
        return out
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ThinkrecError(
            f"{what} {out}: cannot create the folder {folder} ({exc.strerror or exc}); choose a writable location"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ThinkrecError(f"{what} {out}: the folder {folder} is not writable; choose a writable location")
    return out


def load_recommender(
    run_dir: str | Path, checkpoint: str = "best", ann: bool = False, depth: str | None = None
) -> Recommends:
    """The run in ``run_dir``: an R²ec run (``thinkrec llm train``) or a sequence-model run (``thinkrec
    train``); ``ann`` builds an approximate top-K index (sequence models only). ``depth``: the default depth
    selector (default the run's ``eval.depth``; ``"none"``: none), made ready now: loaded from the run
    directory, or fit on the run's validation samples and saved there."""
    from thinkrec.serve.llm import LLMRecommender, is_llm_run

    check_depth(depth)
    if not Path(run_dir).is_dir():
        raise ThinkrecError(f"{run_dir}: no such run directory; train one with thinkrec train")
    if is_llm_run(run_dir):
        if ann:
            raise ThinkrecError(f"{run_dir}: --ann is for sequence-model runs; an R²ec run always scores exactly")
        if checkpoint != "best":
            raise ThinkrecError(f"{run_dir}: an R²ec run has one saved model; leave --checkpoint at best")
        if depth is not None and depth.strip() != "none":
            raise ThinkrecError(f"{run_dir}: --depth chooses among latent reasoning steps; an R²ec run reasons in text")
        return LLMRecommender.from_run(run_dir)
    rec = Recommender.from_run(run_dir, checkpoint, ann=ann)
    rec.set_depth(rec.config.eval.depth if depth is None else depth)
    return rec


def internal_ids(vocabulary: Vocabulary, ids: Iterable[ExternalId], what: str = "history") -> list[int]:
    """Internal ids of external item ids; a :class:`ThinkrecError` lists the unknown ones."""
    ids = list(ids)
    found = [vocabulary.internal(i) for i in ids]
    unknown = [i for i, v in zip(ids, found, strict=True) if v is None]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ThinkrecError(f"{what}: item ids {shown} are not in this model's catalogue")
    if not ids:
        raise ThinkrecError(f"{what} is empty; give at least one item id")
    return [v for v in found if v is not None]


def parse_history(text: str, vocabulary: Vocabulary, what: str = "--history") -> list[int]:
    """``50,172,133`` (or space-separated) external ids, oldest first, as internal ids."""
    tokens = text.replace(",", " ").split()
    if not tokens:
        raise ThinkrecError(f"{what} is empty; give item ids separated by commas, e.g. {what} 50,172,133")
    return internal_ids(vocabulary, tokens, what)


def user_history(rec: Recommends, user: ExternalId, hold_out: bool = False, what: str = "--user") -> UserHistory:
    """A known user's :class:`~thinkrec.serve.recommender.UserHistory` (a :class:`ThinkrecError` if the run's
    dataset has no such user)."""
    try:
        return rec.user_history(user, hold_out)
    except KeyError as exc:
        raise ThinkrecError(f"{what}: {exc.args[0]}") from None


def recommend(
    rec: Recommends,
    histories: Sequence[Sequence[int]],
    k: int = 10,
    *,
    steps: int | None = None,
    exclude_seen: bool = False,
    per_step: bool = False,
    times: Sequence[Sequence[int]] | None = None,
    depth: str | None = None,
) -> TopK:
    """``rec.recommend`` with the caller-facing checks: ``k`` in ``1..MAX_K``, steps >= 0, a known depth
    selector (default: the recommender's), and the model's own refusals (empty history, too many steps, a
    selector not fit) as :class:`ThinkrecError`."""
    check_k(k)
    check_steps(steps)
    check_depth(depth, "depth")
    options: dict[str, Any] = {} if depth is None else {"depth": depth}
    try:
        return rec.recommend(histories, k, steps, exclude_seen, per_step, times=times, **options)
    except ValueError as exc:
        raise ThinkrecError(str(exc)) from None


def top_rows(rec: Recommends, top: TopK, users: Sequence[Any]) -> dict[str, list[Any]]:
    """Columns ``user, rank, item, title, score`` (external item ids, ranks from 1, best first) of a
    :class:`TopK` whose row ``b`` belongs to ``users[b]``; items removed by ``exclude_seen`` are left out."""
    vocab = rec.vocabulary
    columns: dict[str, list[Any]] = {name: [] for name in ROW_COLUMNS}
    for row, user in enumerate(users):
        for rank, (item, score) in enumerate(top.row(row), start=1):
            columns["user"].append(user)
            columns["rank"].append(rank)
            columns["item"].append(vocab.external_id(item))
            columns["title"].append(vocab.title(item))
            columns["score"].append(score)
    return columns
