"""Whether bfloat16 autocast pays off on this CPU.

bf16 autocast (``train.autocast`` / ``eval.autocast = "bf16"``) is faster only where the CPU computes bf16
products natively (AVX512-BF16 or AMX, which oneDNN reports). Elsewhere every bf16 product is emulated and
several times slower than float32 (measurements: docs/benchmarks/speed.md). Training and evaluation
warn once per process when asked for bf16 on such a CPU; they do not switch it off, since the numbers of a
bf16 run differ slightly from float32 ones and a config should mean the same thing on every machine.
"""

from __future__ import annotations

import functools
import warnings

import torch

_warned: set[str] = set()


@functools.cache
def native_bf16() -> bool:
    """True when oneDNN computes bf16 matrix products natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def warn_slow_bf16(setting: str) -> None:
    """Warn (once per ``setting`` and process) that ``setting = "bf16"`` is slow on a CPU without native bf16."""
    if setting in _warned or native_bf16():
        return
    _warned.add(setting)
    warnings.warn(
        f'{setting} = "bf16", but this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 '
        "(AVX512-BF16 or AMX): bf16 products are emulated and run several times slower than float32 "
        f'(about 10x for SASRec on an AVX2 CPU). Set {setting} = "none" on this machine.',
        RuntimeWarning,
        stacklevel=3,
    )
