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


def stage_threads() -> None:
    """Use every core for torch on CPU unless RGA_THREADS says otherwise."""
    import torch

    n = os.environ.get("RGA_THREADS")
    if n:
        torch.set_num_threads(int(n))
