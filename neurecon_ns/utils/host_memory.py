"""Keeping freed host memory for reuse: what makes CPU training steps fast with glibc's malloc.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on
`free`. A training step on a CPU allocates and frees dozens of such tensors (one 65,536 x 256 float
activation of the paper-size NeuS step is 64 MiB), so every one of them is paid again in page faults, 16,384
of them for 4-KiB pages, each followed by the kernel zeroing the page (what that costs a step:
docs/speed.md). Turning off mmap for large blocks and the trimming of the heap's top keeps freed pages in the
process for the next step, as jemalloc or tcmalloc would (PyTorch's CPU tuning guide suggests preloading them).
The price is that the process's resident memory stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import sys

# from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_host_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (for the rest of the process); False where the C library
    is not glibc (macOS, Windows, musl), which is left as it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # a threshold of -1 is read as the largest size_t: the top of the heap is never given back
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
