"""Loss kernels: pure functions of tensors, shared by every training objective (bottom layer).

``softmax`` holds the chunked full-catalogue cross-entropy; ``rearec`` the terms of ReaRec's objectives
(per-step cross-entropy, pairwise KL, InfoNCE, progressive temperatures).
"""

from thinkrec.losses.rearec import info_nce, pairwise_kl, per_step_cross_entropy, progressive_temperatures
from thinkrec.losses.softmax import softmax_cross_entropy, wants_gradient

__all__ = [
    "info_nce",
    "pairwise_kl",
    "per_step_cross_entropy",
    "progressive_temperatures",
    "softmax_cross_entropy",
    "wants_gradient",
]
