"""Pipeline wiring shared by the thin ``stages/*.py`` entry points: cell names and paths.

Data between stages is files named by the cell, ``<model>-<dataset>-<attack>-<seed>[-<method>]``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .io import cell_name, load_params

ROOT = Path(os.environ.get("RGA_ROOT", "."))


def raw_dir(dataset: str) -> Path:
    return ROOT / "data" / "raw" / dataset


def attack_dir(dataset: str, attack: str, seed: int) -> Path:
    return ROOT / "data" / "attacks" / cell_name(dataset, attack, seed)


def poisoned_model_dir(cell: str) -> Path:
    return ROOT / "models" / "poisoned" / cell


def retrain_model_dir(model: str, dataset: str, seed: int) -> Path:
    return ROOT / "models" / "retrain" / cell_name(model, dataset, seed)


def detect_dir(cell: str) -> Path:
    return ROOT / "data" / "detect" / cell


def parse_cell(description: str, *fields: str) -> argparse.Namespace:
    """Parse ``--model/--dataset/--attack/--seed/--method`` (the requested ``fields``)."""
    p = argparse.ArgumentParser(description=description)
    for f in fields:
        p.add_argument(f"--{f}", required=True, type=int if f == "seed" else str)
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args.params_dict = load_params(args.params)
    return args


# glibc's mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
MMAP_THRESHOLD = 1 << 30  # bytes: blocks below this come from the heap and are reused after free
TRIM_THRESHOLD = 2 ** 31 - 1  # bytes: free memory at the heap's top kept before trimming (the int maximum)
TOP_PAD = 256 << 20  # bytes: extra heap grown (and kept) at each heap extension


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep and reuse freed memory instead of returning it to the kernel.

    With glibc's defaults a block above the mmap threshold (dynamic, at most 32 MiB) is mapped
    fresh on every allocation and unmapped on free, and every 4 KiB page of it then faults on
    first touch. MiniLM's word-embedding tensors are 30,522 × 384 float32 (47 MB): every
    training step allocates several of them (the dense embedding gradient of each forward pass,
    RGA's θ − θ_base difference and its gradient), and in the profiler zero-filling them took 5%
    of an unlearning epoch (README "Performance"). This call raises the mmap threshold to
    ``MMAP_THRESHOLD`` (1 GiB), keeps up to ``TRIM_THRESHOLD`` (2 GiB) of free memory at the
    heap's top instead of trimming it, and pads heap growth by ``TOP_PAD``: freed blocks stay in
    the process and the next tensor of that size reuses them. This holds for the main thread's
    heap (torch's CPU tensors are allocated there); other threads' arenas keep glibc's limits.
    A glibc older than about 2.35 refuses thresholds above 32 MiB: mmap is then switched off
    instead (``M_MMAP_MAX`` = 0), to the same effect. Arithmetic is unchanged (the same kernels
    on the same values), so metrics are byte-identical; the cost is that the process keeps its
    peak heap until it exits (a stage is one process).

    Call it once, early, in a process that will run torch on the CPU (:func:`stage_runtime`
    does). Does nothing where the C library is not glibc, or when the environment sets
    ``RGA_MALLOC_TUNING=0``.

    Returns:
        True when the settings took effect, False when skipped or refused (a refused setting is
        logged as a warning, by name).

    Raises:
        ValueError: ``RGA_MALLOC_TUNING`` is set to something other than ``0`` or ``1``.
    """
    import ctypes
    import platform

    flag = os.environ.get("RGA_MALLOC_TUNING", "1")
    if flag not in ("0", "1"):
        raise ValueError(f"RGA_MALLOC_TUNING={flag!r}: valid values are '1' (tune glibc's allocator, the default) "
                         "and '0' (leave glibc's defaults)")
    if flag == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    log = logging.getLogger("rga")
    refused = [name for name, key, value in (("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                             ("M_TOP_PAD", M_TOP_PAD, TOP_PAD))
               if libc.mallopt(ctypes.c_int(key), ctypes.c_int(value)) != 1]
    if libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD)) != 1 and \
            libc.mallopt(ctypes.c_int(M_MMAP_MAX), ctypes.c_int(0)) != 1:
        refused.append("M_MMAP_THRESHOLD (and the fallback M_MMAP_MAX = 0)")
    if refused:
        log.warning("glibc refused mallopt %s: CPU training keeps glibc's default allocator behaviour there "
                    "(slower, same results)", ", ".join(refused))
    return not refused


def stage_runtime() -> None:
    """Set up a stage process that runs torch: torch's threads (every core unless
    ``RGA_THREADS`` says otherwise) and, when the process has no accelerator (so its tensors
    live on the CPU), the CPU allocator (:func:`tune_cpu_allocator`). With a GPU the tuning is
    left out: a large model loaded on the host first would otherwise keep that host memory
    for the whole stage."""
    import torch

    from .models import pick_device

    if pick_device().type == "cpu":
        tune_cpu_allocator()
    n = os.environ.get("RGA_THREADS")
    if n:
        torch.set_num_threads(int(n))
