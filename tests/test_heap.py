"""The stages' allocator tuning: a freed large block is reused without page faults.

Each check runs in a fresh interpreter: the tuning is process-wide and must not leak
into the test process (or depend on what it allocated before).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Mallocs and touches a 64 MiB block twice (freed in between) and reports the minor page
# faults of the second touch: what a stage's next row pays for a buffer the last row freed.
# Plain malloc and memset, as torch's CPU allocator does it (numpy asks for huge pages,
# which hides the faults this is about).
SECOND_TOUCH_FAULTS = """
import ctypes, json, resource, sys
from pipeline.heap import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size)
ctypes.memset(block, 1, size)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(block)
print(json.dumps({"tuned": tuned, "faults": faults}))
"""

PAGES_IN_BLOCK = (64 << 20) // 4096
TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def second_touch(mode: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", SECOND_TOUCH_FAULTS, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return dict(json.loads(result.stdout))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is what gets tuned")
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again() -> None:
    untuned = second_touch("default")
    tuned = second_touch("tuned")
    assert tuned["tuned"] is True
    # Untuned, glibc unmaps the freed block and the new one faults in every page again
    # (in 2 MiB pages where the kernel gives huge pages to every mapping: fewer faults).
    huge_pages_always = TRANSPARENT_HUGE_PAGES.exists() and "[always]" in TRANSPARENT_HUGE_PAGES.read_text()
    assert untuned["faults"] >= (PAGES_IN_BLOCK // 1024 if huge_pages_always else PAGES_IN_BLOCK // 2)
    # Tuned, the block comes back from the heap with its pages still mapped.
    assert tuned["faults"] < PAGES_IN_BLOCK // 20


def test_it_says_so_where_it_cannot_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import heap

    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.keep_freed_memory() is False
