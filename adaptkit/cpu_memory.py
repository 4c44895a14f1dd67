"""Keep freed memory in the process instead of handing it back to the OS at every step.

A training step allocates and frees the same large tensors again and again: the
vocabulary logits of the scored positions alone are 150 x 49152 floats (30 MB) for
SmolLM2. glibc's malloc returns such blocks to the OS when they are freed (its trim
and mmap thresholds), so the next step page-faults the whole block in again: 7,500
faults, ~40 ms per 30 MB to zero it. Raising both thresholds keeps the heap warm
(the arena's training time with and without it: benchmarks/results/README.md).
Memory is reused, not leaked: the peak stays what the largest step needs.

``keep_freed_memory()`` is what the ``adaptkit`` command does at start; an app
backend may call it too. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX).
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 2**31 - 1  # trim the heap only when 2 GiB sit free at its top (int max)


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds; True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a value glibc refuses.
    trimmed = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    mapped = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    return trimmed and mapped


__all__ = ["keep_freed_memory"]
