"""thinkrec: sequential recommendation whose models think before they recommend.

The Python API (external ids in, tables out)::

    import thinkrec

    run = thinkrec.load("runs/ml100k-sasrec-s2020")               # a run of thinkrec train / llm train
    run.recommend(["196", "186"], k=10)                           # known users: after their whole history
    run.recommend(histories={"me": [50, 172, 133]}, k=10)         # any history of external item ids
    run.item_embeddings()                                         # item, title, embedding
    run.evaluate(test, history)                                   # NDCG/HR/MRR on your own split
    run = thinkrec.fit("ml100k-sasrec", interactions=df)          # train on your (user, item, time[, text]) table

Tables come back as pandas DataFrames when pandas is installed, else as pyarrow Tables; inputs may be
either (or a dict of columns). Importing :mod:`thinkrec` loads nothing heavy: torch and the model code are
imported on first use of :func:`load` or :func:`fit` (``fit``, not ``train``: :mod:`thinkrec.train` is the
trainer's package).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Run", "ThinkrecError", "__version__", "fit", "load"]

if TYPE_CHECKING:
    from thinkrec.errors import ThinkrecError
    from thinkrec.serve.api import Run, fit, load

_LAZY = {
    "Run": "thinkrec.serve.api",
    "load": "thinkrec.serve.api",
    "fit": "thinkrec.serve.api",
    "ThinkrecError": "thinkrec.errors",
}


def __getattr__(name: str) -> Any:
    """Import the API on first use, so ``import thinkrec`` (and ``thinkrec --help``) stays fast."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'thinkrec' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
