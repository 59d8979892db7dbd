"""Row blocking for ``[rows, n_items]`` score matrices, so each block stays in a core's L2 cache.

Writing a full ``rows x n_items`` matrix and reading it back costs more than the matrix product on a CPU;
processing ~1.5 MB blocks (32 rows for a 12k-item catalogue) keeps the product, softmax or comparison
that follows it in cache.
"""

from __future__ import annotations

L2_BUDGET_BYTES = 3 * 2**19


def rows_per_block(n_cols: int, budget_bytes: int = L2_BUDGET_BYTES, minimum: int = 8) -> int:
    """Rows of fp32 values of width ``n_cols`` that fit in ``budget_bytes``."""
    return max(minimum, budget_bytes // (4 * max(1, n_cols)))
