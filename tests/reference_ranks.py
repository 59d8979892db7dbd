"""The fingerprint of the machine that made ``tests/data/reference_ranks`` (kept beside them).

Float results depend on the CPU's vector instructions and on torch's version: ranks are compared exactly
only on a machine with the same fingerprint.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "fma")


def fingerprint() -> dict[str, object]:
    flags: set[str] = set()
    vendor = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
            elif key.strip() == "vendor_id":
                vendor = value.strip()
            if flags and vendor:
                break
    return {"vendor": vendor, "isa": sorted(f for f in ISA_FLAGS if f in flags), "torch": torch.__version__}
