"""The converter's native memory: glibc's allocator, told to keep less.

A conversion allocates on several threads (decoding, LAME encoders, gRPC), and glibc
gives each thread an arena of its own and keeps what is freed in it for later. Two
arenas are enough for the work here, and the memory freed by a job is handed back to
the kernel when it ends, so a long job does not leave the process bigger for the next.
Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def limit_arenas(count: int = ARENAS) -> None:
    """Call at start, before threads allocate."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, count)


def release_free_memory() -> None:
    """Return the freed parts of the heap to the kernel (malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
