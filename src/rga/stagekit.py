"""Small helpers the unlearning-side stages share (writing a method's result files)."""

from __future__ import annotations

import pandas as pd

from .evaluation import confusion_rows
from .io import write_json
from .pipeline import ROOT


def write_method_result(cell: str, method: str, metrics: dict, preds: dict, trig: pd.DataFrame,
                        names, extra: dict) -> None:
    """metrics/unlearn/<cell>-<method>.json and plots/confusion/<cell>-<method>.json (rows
    ``{"actual", "predicted"}`` on the fully triggered test set, for DVC's confusion template)."""
    write_json(confusion_rows(preds["triggered"], trig["label"], names),
               ROOT / "plots" / "confusion" / f"{cell}-{method}.json")
    write_json({"cell": cell, "method": method, **{k: metrics[k] for k in ("cacc", "lfr", "pacc")},
                "trigger_shift": metrics["trigger_shift"], "shift_class": metrics["shift_class"],
                "lfr_per_class": metrics["lfr_per_class"], "confusion_clean": metrics["confusion_clean"],
                "confusion_clean_matched": metrics["confusion_clean_matched"],
                "confusion_triggered": metrics["confusion_triggered"], **extra},
               ROOT / "metrics" / "unlearn" / f"{cell}-{method}.json")
