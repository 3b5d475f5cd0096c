"""Small helpers the unlearning-side stages share (writing a method's result files)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluation import confusion_rows
from .io import write_csv, write_json
from .pipeline import ROOT


def predictions_path(cell: str, method: str):
    """data/preds/<cell>-<method>.csv: one method's per-row test predictions (for the report's
    paired bootstrap, :func:`rga.report.bootstrap_intervals`)."""
    return ROOT / "data" / "preds" / f"{cell}-{method}.csv"


UNMATCHED = -1  # clean_row / clean_label / clean_pred of a triggered row with no known clean counterpart


def predictions_table(preds: dict, clean: pd.DataFrame, trig: pd.DataFrame) -> pd.DataFrame:
    """Per-row predictions on the fully triggered test set, each next to the same row's clean
    prediction where that row is known.

    Args:
        preds: ``{"clean": [N_clean], "triggered": [N_trig]}`` predicted labels.
        clean, trig: the cell's ``test_clean`` / ``test_poisoned_all`` tables. ``trig`` may have
            ``clean_row`` (the triggered row's index in ``clean``); without it the rows are taken
            as aligned only when both sets have the same length and labels, as
            :func:`rga.evaluation.backdoor_metrics` then compares them too.

    Returns:
        [N_trig] rows: ``label`` (original label), ``pred`` (on the triggered text),
        ``clean_row``, ``clean_label``, ``clean_pred`` (on the clean text of the same row), the
        last three :data:`UNMATCHED` (-1) when the triggered rows cannot be matched to clean rows
        (a user's or the authors' triggered set without ``clean_row``); the report then gives
        no trigger-shift interval for the cell.
    """
    labels = trig["label"].to_numpy()
    if "clean_row" in trig:
        rows = trig["clean_row"].to_numpy()
    elif len(trig) == len(clean) and (clean["label"].to_numpy() == labels).all():
        rows = np.arange(len(trig))
    else:
        rows = None
    matched = rows is not None
    unmatched = np.full(len(trig), UNMATCHED)
    return pd.DataFrame({"label": labels, "pred": np.asarray(preds["triggered"]),
                         "clean_row": rows if matched else unmatched,
                         "clean_label": clean["label"].to_numpy()[rows] if matched else unmatched,
                         "clean_pred": np.asarray(preds["clean"])[rows] if matched else unmatched})


def write_method_result(cell: str, method: str, metrics: dict, preds: dict, clean: pd.DataFrame,
                        trig: pd.DataFrame, names, extra: dict) -> None:
    """metrics/unlearn/<cell>-<method>.json, plots/confusion/<cell>-<method>.json (rows
    ``{"actual", "predicted"}`` on the fully triggered test set, for DVC's confusion template)
    and the per-row predictions (:func:`predictions_table`, :func:`predictions_path`)."""
    write_csv(predictions_table(preds, clean, trig), predictions_path(cell, method))
    write_json(confusion_rows(preds["triggered"], trig["label"], names),
               ROOT / "plots" / "confusion" / f"{cell}-{method}.json")
    write_json({"cell": cell, "method": method, "status": "ran", **{k: metrics[k] for k in ("cacc", "lfr", "pacc")},
                "trigger_shift": metrics["trigger_shift"], "shift_class": metrics["shift_class"],
                "lfr_per_class": metrics["lfr_per_class"], "confusion_clean": metrics["confusion_clean"],
                "confusion_clean_matched": metrics["confusion_clean_matched"],
                "confusion_triggered": metrics["confusion_triggered"], **extra},
               ROOT / "metrics" / "unlearn" / f"{cell}-{method}.json")


METRIC_FIELDS = ("cacc", "lfr", "pacc", "trigger_shift", "shift_class", "lfr_per_class", "confusion_clean",
                 "confusion_clean_matched", "confusion_triggered")
PREDICTION_COLUMNS = ("label", "pred", "clean_row", "clean_label", "clean_pred")


def write_skipped_result(cell: str, method: str, reason: str, forget_rows: int, retain_rows: int,
                         extra: dict) -> None:
    """The result files of a method that did not run on a degenerate cell
    (:func:`rga.detection.degenerate_reason`): the same three files as
    :func:`write_method_result`, so the DAG goes on, with nothing that could pass for a result.

    metrics/unlearn/<cell>-<method>.json holds ``status: "skipped"``, ``reason``,
    ``forget_rows``, ``retain_rows`` and every metric field of a normal run (:data:`METRIC_FIELDS`)
    as null; the predictions CSV has its header and no row; the confusion rows are empty. The
    report leaves such a method out of every mean, interval and verdict (never the poisoned
    model's numbers in its place: the poisoned model's trigger shift is negative, so it would look
    best)."""
    write_csv(pd.DataFrame(columns=list(PREDICTION_COLUMNS)), predictions_path(cell, method))
    write_json([], ROOT / "plots" / "confusion" / f"{cell}-{method}.json")
    write_json({"cell": cell, "method": method, "status": "skipped", "reason": reason, "forget_rows": int(forget_rows),
                "retain_rows": int(retain_rows), **{k: None for k in METRIC_FIELDS}, **extra},
               ROOT / "metrics" / "unlearn" / f"{cell}-{method}.json")
