"""The C allocator told to keep freed memory for reuse.

Each denoiser call allocates and frees tensors of a few megabytes. glibc hands out blocks above M_MMAP_THRESHOLD
(128 KiB, rising to at most 32 MiB as it sees them freed) as fresh pages from the kernel and gives them back when
they are freed, so every call pays for zero-filling them again, page by page. Raising the threshold and the trim
threshold makes freed blocks stay in the heap and be reused: the same computations, bit for bit, with less time in
the kernel (a step of the local denoiser: BENCHMARKS.md). Elsewhere than glibc, nothing changes.
"""

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Once per process: glibc keeps freed blocks of up to 1 GiB and does not trim the heap below 2 GiB. True where
    glibc took the settings."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # no glibc (macOS, Windows, musl without mallopt)
        return False
