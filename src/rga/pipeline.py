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
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 1 << 30  # bytes: blocks below this come from the heap and are reused after free
TOP_PAD = 256 << 20  # bytes: extra heap grown (and kept) at each heap extension


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep and reuse freed memory instead of returning it to the kernel.

    With glibc's defaults a block above the mmap threshold (dynamic, at most 32 MiB) is mapped
    fresh on every allocation and unmapped on free, and every 4 KiB page of it then faults on
    first touch. MiniLM's word-embedding tensors are 30,522 × 384 float32 (47 MB): every
    training step allocates several of them (the dense embedding gradient of each forward pass,
    RGA's θ − θ_base difference and its gradient), so a step spent a tenth of its time in page
    faults (README "Performance"). This call raises the mmap threshold to ``MMAP_THRESHOLD``
    (1 GiB), turns heap trimming off and pads heap growth by ``TOP_PAD``: freed blocks stay in
    the process and the next tensor of that size reuses them. Arithmetic is unchanged (the same
    kernels on the same values), so metrics are byte-identical; the cost is that the process
    keeps its peak heap until it exits (a stage is one process).

    Call it once, early, in a process that will run torch on the CPU. Does nothing (returns
    False) where the C library is not glibc, or when the environment sets
    ``RGA_MALLOC_TUNING=0``.

    Returns:
        True when all three settings were accepted.
    """
    import ctypes
    import platform

    if os.environ.get("RGA_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, TOP_PAD))
    return all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in settings)


def stage_runtime() -> None:
    """Set up a stage process that runs torch: the CPU allocator (:func:`tune_cpu_allocator`)
    and torch's threads (every core unless ``RGA_THREADS`` says otherwise)."""
    import torch

    tune_cpu_allocator()
    n = os.environ.get("RGA_THREADS")
    if n:
        torch.set_num_threads(int(n))
