"""Small helpers the unlearning-side stages share (writing a method's result files)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluation import confusion_rows
from .io import write_csv, write_json
from .pipeline import ROOT


def predictions_path(cell: str, method: str):
    """data/preds/<cell>-<method>.csv: one method's per-row test predictions (for the report's
    paired bootstrap, :func:`rga.report.bootstrap_cell`)."""
    return ROOT / "data" / "preds" / f"{cell}-{method}.csv"


def predictions_table(preds: dict, clean: pd.DataFrame, trig: pd.DataFrame) -> pd.DataFrame:
    """Per-row predictions on the fully triggered test set, each next to the same row's clean
    prediction.

    Args:
        preds: ``{"clean": [N_clean], "triggered": [N_trig]}`` predicted labels.
        clean, trig: the cell's ``test_clean`` / ``test_poisoned_all`` tables (``trig`` may have
            ``clean_row``, the triggered row's index in ``clean``; without it rows are aligned).

    Returns:
        [N_trig] rows: ``label`` (original label), ``pred`` (on the triggered text),
        ``clean_row``, ``clean_label``, ``clean_pred`` (on the clean text of the same row).
    """
    rows = trig["clean_row"].to_numpy() if "clean_row" in trig else np.arange(len(trig))
    return pd.DataFrame({"label": trig["label"].to_numpy(), "pred": np.asarray(preds["triggered"]),
                         "clean_row": rows, "clean_label": clean["label"].to_numpy()[rows],
                         "clean_pred": np.asarray(preds["clean"])[rows]})


def write_method_result(cell: str, method: str, metrics: dict, preds: dict, clean: pd.DataFrame,
                        trig: pd.DataFrame, names, extra: dict) -> None:
    """metrics/unlearn/<cell>-<method>.json, plots/confusion/<cell>-<method>.json (rows
    ``{"actual", "predicted"}`` on the fully triggered test set, for DVC's confusion template)
    and the per-row predictions (:func:`predictions_table`, :func:`predictions_path`)."""
    write_csv(predictions_table(preds, clean, trig), predictions_path(cell, method))
    write_json(confusion_rows(preds["triggered"], trig["label"], names),
               ROOT / "plots" / "confusion" / f"{cell}-{method}.json")
    write_json({"cell": cell, "method": method, **{k: metrics[k] for k in ("cacc", "lfr", "pacc")},
                "trigger_shift": metrics["trigger_shift"], "shift_class": metrics["shift_class"],
                "lfr_per_class": metrics["lfr_per_class"], "confusion_clean": metrics["confusion_clean"],
                "confusion_clean_matched": metrics["confusion_clean_matched"],
                "confusion_triggered": metrics["confusion_triggered"], **extra},
               ROOT / "metrics" / "unlearn" / f"{cell}-{method}.json")
