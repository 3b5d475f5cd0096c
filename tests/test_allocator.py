"""rga.pipeline.tune_cpu_allocator: freed tensors' memory is reused instead of mapped and faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# In a fresh process: after the tuning (or not), how many bytes glibc holds in mmapped blocks
# while one more word-embedding-sized tensor is alive (mallinfo2's hblkhd, before and during),
# and how many page faults ten more such tensors cost once the heap has grown.
PROBE = r"""
import ctypes, resource, torch
from rga.pipeline import tune_cpu_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = tune_cpu_allocator()
mapped = lambda: libc.mallinfo2().hblkhd
before = mapped()
x = torch.zeros(30522, 384)  # MiniLM's word-embedding size, 47 MB
during = mapped()
del x
for _ in range(3):  # the first ones grow the heap in any case
    x = torch.zeros(30522, 384); del x
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f0 = faults()
for _ in range(10):
    x = torch.zeros(30522, 384); del x
print(applied, during - before, faults() - f0)
"""

TENSOR = 30522 * 384 * 4  # bytes
PAGES = TENSOR // 4096  # 4 KiB pages in one such tensor


def probe(tuning: str) -> tuple[str, int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True,
                         env={**env, "RGA_MALLOC_TUNING": tuning}).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt; elsewhere the call is a no-op")
def test_tuned_allocator_keeps_big_tensors_on_the_heap_and_reuses_their_pages():
    applied, tuned_mapped, tuned_faults = probe("1")
    skipped, default_mapped, default_faults = probe("0")
    assert (applied, skipped) == ("True", "False")
    assert default_mapped >= TENSOR  # glibc's defaults: the tensor is a fresh mapping
    assert tuned_mapped == 0  # tuned: it comes from the heap
    # ten more 47 MB tensors: with glibc's defaults every page of each faults in again (about
    # 10 x PAGES); tuned, they reuse pages the process already has. A VM's memory reclaim
    # (DAMON here) sometimes takes back one freed tensor's pages between iterations, so the
    # bound allows two tensors' worth, still a fifth of the default run's faults at most.
    assert default_faults > 8 * PAGES
    assert tuned_faults < 2 * PAGES < default_faults // 4


def test_tuning_is_a_no_op_when_opted_out_and_refuses_other_values(monkeypatch):
    from rga.pipeline import tune_cpu_allocator

    monkeypatch.setenv("RGA_MALLOC_TUNING", "0")
    assert tune_cpu_allocator() is False
    monkeypatch.setenv("RGA_MALLOC_TUNING", "off")
    with pytest.raises(ValueError, match=r"RGA_MALLOC_TUNING='off'.*'1'.*'0'"):
        tune_cpu_allocator()
