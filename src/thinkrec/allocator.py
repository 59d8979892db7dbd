"""Keep freed tensor memory in the process instead of handing it back to the OS after every operation.

A SASRec-sized step allocates and frees many tensors of a few megabytes. With glibc's defaults each of them
may be a fresh ``mmap`` that is unmapped again when freed, so the next tensor pays a page fault for every
4 KiB page it touches (``python -m benchmarks.speed.speed_engine --allocator default`` against ``tuned``
measures what it saves; docs/benchmarks/speed.md).
:func:`tune_allocator` raises glibc's mmap threshold to its maximum (32 MiB) and lets up to 1 GiB of freed
memory stay with the process, the same settings as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_TOP_PAD_`` in the environment. The cost: the process keeps up to that much freed memory mapped.

The CLI calls it at start-up; library users may call it themselves. ``THINKREC_ALLOCATOR=default`` turns it
off. It does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**30
TOP_PAD = 64 * 2**20

_tuned = False


def tune_allocator() -> bool:
    """Apply the settings once per process; returns whether they are in effect."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("THINKREC_ALLOCATOR", "tuned") == "default" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = all(
        mallopt(option, value) == 1
        for option, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    return _tuned
