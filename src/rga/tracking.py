"""Per-epoch logging through DVCLive, plus a CSV of the same records for the report."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .io import write_csv


class EmptyRepositoryError(RuntimeError):
    """The stage runs in a git repository without a commit, where DVCLive cannot log."""


class EpochLogger:
    """Logs numeric fields of epoch records with DVCLive (one step per epoch) and keeps a
    CSV (``history.csv`` in the same folder) rewritten atomically after every epoch, so the
    curves logged so far stay on disk if a later epoch fails.

    Args:
        folder: DVCLive directory (``plots/...``), declared as a DVC plot output.
        fields: record keys to log as DVCLive metrics (others only go to the CSV).

    Raises:
        EmptyRepositoryError: the repository has no commit yet (DVCLive fails there with a raw
            ``SCMError: Empty git repo``); the message says to commit first.
    """

    def __init__(self, folder: str | Path, fields: tuple[str, ...]):
        from dvclive import Live

        self.folder = Path(folder)
        self.fields = fields
        self.rows: list[dict] = []
        try:
            self.live = Live(dir=str(self.folder), save_dvc_exp=False, dvcyaml=None, report=None, resume=False)
        except Exception as err:  # scmrepo's SCMError; DVCLive asks git for HEAD even with experiments off
            if "Empty git repo" in str(err):
                raise EmptyRepositoryError(
                    f"cannot log to {self.folder}: this git repository has no commit yet (DVCLive needs one). "
                    "Commit the pipeline first: git add -A && git commit -m 'pipeline', then run dvc repro again"
                ) from None
            raise

    def log(self, step: int, record: dict) -> None:
        self.live.step = step
        for k in self.fields:
            v = record.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.live.log_metric(k, float(v), plot=True)
        self.rows.append({"epoch": step, **{k: v for k, v in record.items() if not isinstance(v, (dict, list))}})
        write_csv(pd.DataFrame(self.rows), self.folder / "history.csv")

    def close(self) -> None:
        self.live.end()
