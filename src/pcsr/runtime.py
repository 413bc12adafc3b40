"""Process settings that make CPU inference fast. Applied by the `pcsr` command, never on import.

glibc hands every large allocation (above 32 MB at most) straight back to the kernel when it is
freed, so each full-image tensor of the next operation is fresh memory that the kernel must fault
in and zero, page by page. Keeping freed memory in the heap instead spares those faults on every
operation after the first.

Even so, the first image of a process still faults its whole working set in, one 4 KB page at a
time, and page faults are slow on virtual machines. `prefault_heap` grows the heap by the expected
working set in one call per chunk (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+), far cheaper than
faulting page by page. Figures: BENCHMARKS.md.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MADV_POPULATE_WRITE = 23
_PAGE = 4096
_CHUNK = 256 << 20  # below the mmap threshold that keep_freed_memory sets, so it comes from the heap


def _libc():
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    libc.madvise.restype, libc.madvise.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Serve allocations up to `limit` bytes from the heap and keep freed memory there (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = _libc()
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * limit))
    except (OSError, AttributeError):
        return False


def prefault_heap(nbytes: int) -> bool:
    """Make the next `nbytes` of heap allocations land on memory that is already mapped.

    Linux with glibc only. It applies `keep_freed_memory()` first (without it glibc would hand
    the memory straight back); nbytes should stay below the trim threshold that sets (2 GB), or
    the freed top of the heap goes back to the kernel. Returns whether the memory was populated."""
    if nbytes <= 0 or not keep_freed_memory():  # which also says that glibc is there
        return False
    libc = _libc()
    blocks, ok = [], True
    try:
        while ok and nbytes > 0:
            size = min(nbytes, _CHUNK)
            ptr = libc.malloc(size)
            if not ptr:
                break
            blocks.append(ptr)
            start = (ptr + _PAGE - 1) // _PAGE * _PAGE
            length = (ptr + size - start) // _PAGE * _PAGE
            ok = length <= 0 or libc.madvise(start, length, _MADV_POPULATE_WRITE) == 0  # EINVAL before 5.14
            nbytes -= size
    finally:
        for ptr in reversed(blocks):  # freed from the top down, they merge back into the heap's top
            libc.free(ptr)
    return ok and bool(blocks)
