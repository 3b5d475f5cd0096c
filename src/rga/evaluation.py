"""Backdoor metrics (paper §6.1), pure functions on predictions, in percent (0-100).

- CACC: accuracy on the clean test set.
- LFR: share of non-target triggered test rows predicted as the target label.
- lfr_any: LFR (any wrong label): share of non-target triggered test rows predicted as any
  wrong label (what the paper's Table 2 reports for AG-News, inferred; equal to LFR on binary data).
- PACC: accuracy on the fully triggered test set (trigger in every class, original labels).
- delta_pacc: |PACC_ReTrain - PACC_method| (for the same cell and seed).
- trigger_shift: see :func:`trigger_shift` (beyond the paper).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).ravel()


def _pair(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _arr(preds), _arr(labels)
    if len(p) != len(y):
        raise ValueError(f"preds has {len(p)} rows but labels has {len(y)}")
    return p, y


def accuracy(preds, labels) -> float:
    """Percent of ``preds == labels``; both [N] ints. Raises ValueError on empty or mismatched input."""
    p, y = _pair(preds, labels)
    if len(p) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(100.0 * np.mean(p == y))


def cacc(preds_clean, labels_clean) -> float:
    """CACC (%): accuracy on ``test_clean``."""
    return accuracy(preds_clean, labels_clean)


def pacc(preds_triggered, labels_triggered) -> float:
    """PACC (%): accuracy on ``test_poisoned_all`` (every row triggered, original labels)."""
    return accuracy(preds_triggered, labels_triggered)


def lfr(preds_triggered, labels_triggered, target_label: int) -> float:
    """LFR (%): among triggered rows whose original label is not the target, the share
    predicted as ``target_label`` (rows of the target class are ignored).

    Raises:
        ValueError: no non-target rows.
    """
    p, y = _pair(preds_triggered, labels_triggered)
    keep = y != target_label
    if not keep.any():
        raise ValueError("LFR needs at least one non-target row")
    return float(100.0 * np.mean(p[keep] == target_label))


def lfr_any(conf_triggered, target_label: int) -> float:
    """LFR counting every wrong prediction (%): among triggered rows whose original label is not
    the target, the share predicted as any label other than their own.

    The paper's text (§6.1) defines LFR as "misclassified as the target class" (:func:`lfr`).
    The AG-News rows of its Table 2 are consistent with this definition rather than that one
    (inferred from the numbers: BERT's ReTrain LFR there, 10.93 and 11.55, is about 100 − its
    PACC, 89.63 and 89.3, i.e. the clean model's whole error rate, not the share of it that
    lands on the target class). On binary data the two are equal.

    Args:
        conf_triggered: [C, C] confusion counts on the fully triggered test set (row = true
            label, column = predicted), e.g. ``confusion_triggered`` of :func:`backdoor_metrics`.
        target_label: the attack's target label.

    Raises:
        ValueError: not a square matrix, ``target_label`` out of range, or no non-target rows.
    """
    m = np.asarray(conf_triggered, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"conf_triggered must be a square [C, C] matrix, got shape {m.shape}")
    if not 0 <= target_label < m.shape[0]:
        raise ValueError(f"target_label {target_label} out of range; valid: 0..{m.shape[0] - 1}")
    keep = np.arange(m.shape[0]) != target_label
    total = m[keep].sum()
    if total == 0:
        raise ValueError("LFR needs at least one non-target row")
    return float(100.0 * (total - np.trace(m[np.ix_(keep, keep)])) / total)


def lfr_per_class(preds_triggered, labels_triggered, target_label: int, num_labels: int) -> dict:
    """LFR (%) per original source class ``{str(c): lfr}`` for every non-target class with rows."""
    p, y = _pair(preds_triggered, labels_triggered)
    out = {}
    for c in range(num_labels):
        m = y == c
        if c != target_label and m.any():
            out[str(c)] = float(100.0 * np.mean(p[m] == target_label))
    return out


def confusion(preds, labels, num_labels: int) -> np.ndarray:
    """Confusion counts [num_labels, num_labels]: row = true label, column = predicted.

    Raises:
        ValueError: mismatched lengths, or a label/prediction outside ``0 .. num_labels-1``.
    """
    p, y = _pair(preds, labels)
    for name, v in (("label", y), ("prediction", p)):
        bad = v[(v < 0) | (v >= num_labels)]
        if len(bad):
            raise ValueError(f"{name} {int(bad[0])} out of range; valid: 0..{num_labels - 1}")
    m = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(m, (y, p), 1)
    return m


def delta_pacc(pacc_retrain: float, pacc_method: float) -> float:
    """ΔPACC = |PACC_ReTrain − PACC_method| (percentage points, paper §6.1)."""
    return float(abs(pacc_retrain - pacc_method))


def trigger_shift(conf_clean, conf_triggered, target_label: int) -> dict:
    """Trigger shift: the new backdoor a method creates on the *target* class (percent points).

    For each class c ≠ target: rate(target-class rows predicted c | triggered) −
    rate(target-class rows predicted c | clean). The trigger shift is the largest of these
    (the class that gains the most), so for binary data it is simply the extra rate at which
    triggered target-class rows flip to the other class. 0 for a model the trigger does not
    move; large after GA's trigger shifting (paper §4.2, Definition 1).

    Args:
        conf_clean, conf_triggered: [C, C] confusion counts (row true, column predicted) on
            the clean and the fully triggered test sets.
        target_label: the attack's target label.

    Returns:
        ``{"trigger_shift": float, "shift_class": int}``.

    Raises:
        ValueError: shapes differ, or the target class has no rows in either set.
    """
    cc, ct = np.asarray(conf_clean, float), np.asarray(conf_triggered, float)
    if cc.shape != ct.shape or cc.ndim != 2 or cc.shape[0] != cc.shape[1]:
        raise ValueError(f"confusion matrices must be equal square shapes, got {cc.shape} and {ct.shape}")
    nc, nt = cc[target_label].sum(), ct[target_label].sum()
    if nc == 0 or nt == 0:
        raise ValueError(f"target class {target_label} has no rows (clean {nc:.0f}, triggered {nt:.0f})")
    gain = 100.0 * (ct[target_label] / nt - cc[target_label] / nc)
    gain[target_label] = -np.inf
    c = int(np.argmax(gain))
    return {"trigger_shift": float(gain[c]), "shift_class": c}


def backdoor_metrics(preds_clean, labels_clean, preds_triggered, labels_triggered,
                     target_label: int, num_labels: int, clean_rows=None) -> dict:
    """All metrics of one model on one cell's test sets.

    Args:
        preds_clean, labels_clean: [N_clean] predictions/labels on ``test_clean``.
        preds_triggered, labels_triggered: [N_trig] on ``test_poisoned_all``; LFR is computed on
            its non-target rows, which are exactly ``test_poisoned_part``.
        clean_rows: optional [N_trig] row indices of the triggered rows in the clean set; the
            trigger shift then compares the same rows (``confusion_clean_matched``), which matters
            when some rows could not be triggered (HiddenKiller rows without a paraphrase).

    Returns:
        dict with ``cacc``, ``lfr``, ``lfr_any``, ``pacc`` (percent), ``lfr_per_class``,
        ``confusion_clean``, ``confusion_triggered`` (lists), ``trigger_shift``, ``shift_class``.
    """
    cm_c = confusion(preds_clean, labels_clean, num_labels)
    cm_t = confusion(preds_triggered, labels_triggered, num_labels)
    if clean_rows is not None:
        rows = _arr(clean_rows)
        cm_m = confusion(_arr(preds_clean)[rows], _arr(labels_clean)[rows], num_labels)
    else:
        cm_m = cm_c
    out = {
        "cacc": cacc(preds_clean, labels_clean),
        "lfr": lfr(preds_triggered, labels_triggered, target_label),
        "lfr_any": lfr_any(cm_t, target_label),
        "pacc": pacc(preds_triggered, labels_triggered),
        "lfr_per_class": lfr_per_class(preds_triggered, labels_triggered, target_label, num_labels),
        "confusion_clean": cm_c.tolist(),
        "confusion_triggered": cm_t.tolist(),
        "confusion_clean_matched": cm_m.tolist(),
    }
    out.update(trigger_shift(cm_m, cm_t, target_label))
    return out


def evaluate_model(model, tokenizer, test_clean, test_poisoned_all, target_label: int,
                   num_labels: int, batch_size: int = 128, max_length: int = 128) -> tuple[dict, dict]:
    """Predict both test sets (length-sorted batches, inference mode) and compute the metrics.

    Returns:
        ``(metrics, predictions)`` with predictions ``{"clean": [N], "triggered": [M]}`` arrays.
    """
    from .training import predict_logits

    pc = predict_logits(model, tokenizer, test_clean["text"].tolist(), batch_size, max_length).argmax(1)
    pt = predict_logits(model, tokenizer, test_poisoned_all["text"].tolist(), batch_size, max_length).argmax(1)
    rows = test_poisoned_all["clean_row"].to_numpy() if "clean_row" in test_poisoned_all else None
    m = backdoor_metrics(pc, test_clean["label"].to_numpy(), pt, test_poisoned_all["label"].to_numpy(),
                         target_label, num_labels, clean_rows=rows)
    return m, {"clean": pc, "triggered": pt}


def evaluate_triggered(model, tokenizer, test_poisoned_all, target_label: int, batch_size: int = 128,
                       max_length: int = 128) -> dict:
    """PACC and LFR (percent) of ``model`` on the fully triggered test set alone.

    For the unlearning curves between record epochs: only PACC is plotted there, so the clean
    test set is not re-scored (about half the evaluation cost). Returns ``{"pacc", "lfr"}``.
    """
    from .training import predict_logits

    pt = predict_logits(model, tokenizer, test_poisoned_all["text"].tolist(), batch_size, max_length).argmax(1)
    y = test_poisoned_all["label"].to_numpy()
    return {"pacc": pacc(pt, y), "lfr": lfr(pt, y, target_label)}


def confusion_rows(preds: Sequence[int], labels: Sequence[int], names: Sequence[str] | None = None) -> list[dict]:
    """Rows ``{"actual": ..., "predicted": ...}`` for DVC's ``confusion`` plot template."""
    name = (lambda i: names[i]) if names else str
    return [{"actual": name(int(y)), "predicted": name(int(p))} for p, y in zip(preds, labels)]
