"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thinkrec.eval.metrics import metric_names


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in text_rows]
    return "\n".join([line, sep, *body])


def metrics_table(metrics: dict[str, float], ks: Sequence[int], popular: dict[str, float] | None = None) -> str:
    """One row per metric, one column per K; with ``popular`` (the most-popular list's metrics on the same
    samples) its values in columns beside the model's."""
    present = {key.split("@")[0] for key in metrics}
    names = [name for name in metric_names() if name in present]
    rows = [[name, *(metrics.get(f"{name}@{k}", float("nan")) for k in ks)] for name in names]
    headers = ["metric", *(f"@{k}" for k in ks)]
    if popular is not None:
        headers += [f"popular @{k}" for k in ks]
        rows = [[*row, *(popular.get(f"{row[0]}@{k}", float("nan")) for k in ks)] for row in rows]
    return table(headers, rows)


def models_table(reports: dict[str, dict[str, float]], columns: Sequence[str]) -> str:
    """One row per model (``reports``: its name -> metrics), one column per metric key (``NDCG@10``)."""
    rows = [[name, *(metrics.get(key, float("nan")) for key in columns)] for name, metrics in reports.items()]
    return table(["model", *columns], rows)


def protocol_lines(protocol: dict[str, Any]) -> str:
    keep = (
        "split",
        "candidates",
        "history_masking",
        "encoder_precision",
        "ks",
        "seed",
        "n_valid",
        "n_test",
        "valid_cut",
        "test_cut",
        "cut_unit",
        "reasoning",
        "depth",
    )
    return "\n".join(f"  {k}: {protocol[k]}" for k in keep if k in protocol)
