"""Keep a busy stage's freed memory in its heap instead of returning it to the kernel.

Every row a stage handles allocates the same large buffers again: decoded images and
tiles in the CPU stage, pixel values and activations of several MB each in a replica.
By default glibc serves blocks that large with a fresh `mmap` and unmaps them when freed
(its threshold for that moves up with use, but not past 32 MiB), and gives the top of its
heap back to the kernel once enough of it is free; either way the next row's buffers
arrive as new pages that the kernel must fault in and zero one 4 KiB page at a time
(thousands of faults a row, measured in BENCHMARKS.md). Raising glibc's mmap and trim
thresholds makes those blocks come from the heap and keeps the heap's freed pages, so the
pages freed by the last row are reused as they are. The cost is that a stage's process
keeps its high-water mark of memory for its life - which a long-lived actor that handles
rows of the same sizes again and again reaches in its first windows anyway.

Only glibc's allocator is tuned (torch's CPU tensors, numpy arrays and Pillow's images
come from it; Arrow's buffers use Arrow's own pool). Elsewhere this does nothing.

One limit, measured and left: Ray runs an actor's calls on a thread of its own, not the
process's main thread, and glibc serves such a thread from a secondary arena, whose heaps
are at most 64 MiB; a block larger than that is still mapped afresh and unmapped when
freed, whatever the thresholds: a replica's activations for a batch of many tiles can be
that large (page faults sampled in a replica fall in torch's kernels writing them). One arena
for the whole process (`MALLOC_ARENA_MAX=1` in its environment) keeps them too: a replica's
page faults in 25 s of steady state stayed near 10,000 (10,000 to 360,000 without), and
the pipeline was no faster (BENCHMARKS.md, "Checked, no gain: one malloc arena").
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks below this come from the heap and freed heap memory below it is kept.
KEEP_BYTES = 1 << 30


def keep_freed_memory(keep_bytes: int = KEEP_BYTES) -> bool:
    """Tune this process's glibc allocator to reuse freed blocks up to `keep_bytes`.

    Returns whether it took effect: False off Linux, on a C library without `mallopt`
    (musl), or where glibc refuses the values.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Setting either one also stops glibc from moving the mmap threshold by itself.
    return bool(mallopt(M_TRIM_THRESHOLD, keep_bytes)) and bool(mallopt(M_MMAP_THRESHOLD, keep_bytes))
