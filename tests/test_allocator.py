"""rga.pipeline.tune_cpu_allocator: freed tensors' memory is reused instead of faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, torch
from rga.pipeline import tune_cpu_allocator
applied = tune_cpu_allocator()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # MiniLM's word-embedding size, 47 MB: the first ones grow the heap in any case
    x = torch.zeros(30522, 384); del x
f0 = faults()
for _ in range(10):
    x = torch.zeros(30522, 384); del x
print(applied, faults() - f0)
"""

PAGES = 30522 * 384 * 4 // 4096  # 4 KiB pages in one such tensor


def probe(tuning: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True,
                         env={**os.environ, "RGA_MALLOC_TUNING": tuning}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt; elsewhere the call is a no-op")
def test_tuned_allocator_reuses_freed_tensors_and_the_opt_out_restores_glibc_defaults():
    applied, tuned_faults = probe("1")
    skipped, default_faults = probe("0")
    assert (applied, skipped) == ("True", "False")
    assert tuned_faults < PAGES // 4  # ten more 47 MB tensors in pages the process already has
    assert default_faults > 5 * PAGES  # glibc's defaults map fresh pages for each of them


def test_tuning_is_a_no_op_when_opted_out(monkeypatch):
    from rga.pipeline import tune_cpu_allocator

    monkeypatch.setenv("RGA_MALLOC_TUNING", "0")
    assert tune_cpu_allocator() is False
