"""Row blocking for ``[rows, n_items]`` score matrices, so each block stays in a core's L2 cache.

Writing a full ``rows x n_items`` matrix and reading it back costs more than the matrix product on a CPU;
processing ~1.5 MB blocks (32 rows for a 12k-item catalogue) keeps the product, softmax or comparison
that follows it in cache.
"""

from __future__ import annotations

import torch

L2_BUDGET_BYTES = 3 * 2**19


def rows_per_block(n_cols: int, budget_bytes: int = L2_BUDGET_BYTES, minimum: int = 8) -> int:
    """Rows of fp32 values of width ``n_cols`` that fit in ``budget_bytes``."""
    return max(minimum, budget_bytes // (4 * max(1, n_cols)))


GEMM_ROWS = 4  # below this many rows the BLAS takes a matrix-vector path with another summation order


def block_scores(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``users @ items.T`` of one block of rows, with every row's scores the same numbers whichever rows share
    its block: the BLAS sums a product of fewer than :data:`GEMM_ROWS` rows in another order (float32: the
    last bits differ), so a smaller block is padded with zero rows. Halting evaluation scores other sets of
    rows than the per-step evaluation; with this they rank from identical scores."""
    n = users.shape[0]
    if 0 < n < GEMM_ROWS:
        padded = torch.cat([users, users.new_zeros(GEMM_ROWS - n, users.shape[1])])
        return (padded @ items.T)[:n]
    return users @ items.T
