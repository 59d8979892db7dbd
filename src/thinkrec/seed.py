"""One root seed; every random component gets its own generator derived from it.

``Seeds(root).numpy("data-order")`` and ``Seeds(root).torch_seed("init")`` give streams that depend only on
the root seed and the component name, so a run is reproducible and two runs differ only where asked.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


class Seeds:
    def __init__(self, root: int) -> None:
        self.root = int(root)

    def _entropy(self, name: str) -> int:
        digest = hashlib.sha256(f"{self.root}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "little")

    def numpy(self, name: str) -> np.random.Generator:
        return np.random.default_rng(self._entropy(name))

    def torch_seed(self, name: str) -> int:
        return self._entropy(name) % (2**63 - 1)

    def torch_generator(self, name: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.torch_seed(name))
