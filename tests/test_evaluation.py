"""Backdoor metrics (rga.evaluation) on hand-made predictions, and evaluate_model on a tiny BERT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rga.evaluation import (accuracy, backdoor_metrics, cacc, confusion, confusion_rows, delta_pacc, lfr_any,
                            evaluate_model, lfr, lfr_per_class, pacc, trigger_shift)
from rga.training import predict_logits


# --------------------------------------------------------------------------- accuracy-type metrics

def test_cacc_pacc_binary_exact():
    # 4 rows, rows 0, 1, 3 correct -> 3 of 4 -> 75.0
    assert cacc([1, 0, 0, 1], [1, 0, 1, 1]) == 75.0
    # 5 rows, only row 2 correct -> 1 of 5 -> 20.0
    assert pacc([0, 0, 1, 1, 1], [1, 1, 1, 0, 0]) == 20.0
    # all right / all wrong
    assert cacc([0, 1], [0, 1]) == 100.0
    assert pacc([1, 0], [0, 1]) == 0.0


def test_cacc_pacc_four_class_exact():
    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    preds = [0, 1, 2, 0, 0, 0, 3, 3]
    # correct at positions 0, 1, 2, 4, 7 -> 5 of 8 -> 62.5
    assert cacc(preds, labels) == 62.5
    assert pacc(preds, labels) == 62.5
    # accepts numpy arrays and 2-D column vectors (raveled)
    assert accuracy(np.array(preds)[:, None], np.array(labels)) == 62.5


def test_lfr_binary_ignores_target_rows():
    target = 1
    labels = [0, 0, 0, 0, 1, 1, 1]
    preds = [1, 1, 1, 0, 0, 0, 0]
    # non-target rows (label 0): preds 1,1,1,0 -> 3 of 4 flipped to the target -> 75.0;
    # the three target rows (all predicted 0) must not count at all.
    assert lfr(preds, labels, target) == 75.0
    # changing only the predictions of target-class rows leaves LFR unchanged
    assert lfr([1, 1, 1, 0, 1, 1, 1], labels, target) == 75.0


def test_lfr_four_class_exact():
    target = 0
    labels = [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
    preds = [3, 2, 0, 1, 0, 0, 2, 0, 3, 1]
    # non-target rows: indices 2..9 (8 rows); predicted 0 at 2, 4, 5, 7 -> 4 of 8 -> 50.0
    assert lfr(preds, labels, target) == 50.0
    # per source class: class 1 -> 1 of 2 = 50.0; class 2 -> 2 of 3 = 66.666..; class 3 -> 1 of 3 = 33.333..
    per = lfr_per_class(preds, labels, target, 4)
    assert set(per) == {"1", "2", "3"}
    assert per["1"] == 50.0
    assert per["2"] == pytest.approx(200.0 / 3)
    assert per["3"] == pytest.approx(100.0 / 3)


def test_lfr_any_counts_every_wrong_label_while_lfr_counts_the_target():
    # 4 classes, target 0; the trigger moves rows of classes 1-3 mostly to class 2 (not the target)
    target = 0
    labels = [0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    preds = [0, 2, 2, 2, 0, 1, 2, 2, 2, 2, 3, 0]
    conf = confusion(preds, labels, 4)
    # non-target rows: 10; predicted as the target 0: two (a class-1 and a class-3 row) -> 20.0
    assert lfr(preds, labels, target) == 20.0
    # wrong at all: class 1 -> 3 of 4, class 2 -> 0 of 2, class 3 -> 3 of 4 -> 6 of 10 -> 60.0
    assert lfr_any(conf, target) == 60.0
    # the target rows never count: change them freely
    assert lfr_any(confusion([3, 3] + preds[2:], labels, 4), target) == 60.0
    # binary data: the two definitions agree
    yb, pb = [0, 0, 0, 1, 1], [1, 0, 1, 0, 1]
    assert lfr_any(confusion(pb, yb, 2), 1) == pytest.approx(lfr(pb, yb, 1)) == pytest.approx(200 / 3)
    m = backdoor_metrics(labels, labels, preds, labels, target, 4)
    assert m["lfr_any"] == 60.0 and m["lfr"] == 20.0


def test_lfr_any_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"square \[C, C\] matrix, got shape \(2, 3\)"):
        lfr_any([[1, 2, 3], [4, 5, 6]], 0)
    with pytest.raises(ValueError, match="target_label 4 out of range; valid: 0..3"):
        lfr_any(np.zeros((4, 4)), 4)
    with pytest.raises(ValueError, match="at least one non-target row"):
        lfr_any([[3, 0], [0, 0]], 0)


def test_lfr_per_class_skips_classes_without_rows():
    # 4 classes, target 1, class 2 absent: only "0" and "3" reported
    per = lfr_per_class([1, 0, 1, 1], [0, 0, 3, 1], target_label=1, num_labels=4)
    # class 0: preds 1,0 -> 1 of 2 = 50.0; class 3: pred 1 -> 1 of 1 = 100.0
    assert per == {"0": 50.0, "3": 100.0}


def test_confusion_counts():
    labels = [0, 0, 1, 1, 1, 2]
    preds = [0, 1, 1, 1, 2, 0]
    m = confusion(preds, labels, 3)
    # row = true label, column = predicted
    expected = np.array([[1, 1, 0],
                         [0, 2, 1],
                         [1, 0, 0]])
    np.testing.assert_array_equal(m, expected)
    assert m.dtype == np.int64
    assert m.sum() == 6


def test_delta_pacc():
    assert delta_pacc(90.0, 85.5) == 4.5
    assert delta_pacc(85.5, 90.0) == 4.5
    assert delta_pacc(70.0, 70.0) == 0.0


def test_confusion_rows_names():
    rows = confusion_rows([1, 0], [0, 0], names=["neg", "pos"])
    assert rows == [{"actual": "neg", "predicted": "pos"}, {"actual": "neg", "predicted": "neg"}]
    assert confusion_rows([2], [3]) == [{"actual": "3", "predicted": "2"}]


# --------------------------------------------------------------------------- trigger shift

def test_trigger_shift_binary():
    # target 1; clean target row [5, 95] -> 5 % predicted 0; triggered [60, 40] -> 60 %
    # shift = 60 - 5 = 55.0 towards class 0
    clean = [[80, 20], [5, 95]]
    trig = [[70, 30], [60, 40]]
    out = trigger_shift(clean, trig, target_label=1)
    assert out == {"trigger_shift": pytest.approx(55.0), "shift_class": 0}


def test_trigger_shift_four_class_reports_largest_gain():
    target = 0
    clean = np.zeros((4, 4), int)
    trig = np.zeros((4, 4), int)
    clean[0] = [90, 4, 3, 3]    # 100 rows -> rates 90, 4, 3, 3 %
    trig[0] = [20, 5, 22, 3]    # 50 rows  -> rates 40, 10, 44, 6 %
    # gains (percent points) for c != 0: c1 10-4 = 6, c2 44-3 = 41, c3 6-3 = 3 -> class 2, 41.0
    # (other rows are irrelevant; fill them to make sure they are ignored)
    clean[1:] = 7
    trig[1:] = [[0, 0, 0, 50], [50, 0, 0, 0], [0, 50, 0, 0]]
    out = trigger_shift(clean, trig, target)
    assert out["shift_class"] == 2
    assert out["trigger_shift"] == pytest.approx(41.0)


def test_trigger_shift_zero_when_unchanged():
    conf = [[40, 10, 0], [3, 45, 2], [1, 1, 48]]
    for target in range(3):
        out = trigger_shift(conf, conf, target)
        assert out["trigger_shift"] == 0.0
        assert out["shift_class"] != target


def test_trigger_shift_never_reports_target_class():
    # triggered target rows move *towards* the target (every other class loses):
    # gains c0 = 0-10 = -10, c2 = 0-10 = -10 -> the reported class is a non-target one, shift -10
    clean = [[10, 0, 0], [10, 80, 10], [0, 0, 10]]
    trig = [[10, 0, 0], [0, 100, 0], [0, 0, 10]]
    out = trigger_shift(clean, trig, target_label=1)
    assert out["shift_class"] in (0, 2)
    assert out["trigger_shift"] == pytest.approx(-10.0)


def test_trigger_shift_errors():
    with pytest.raises(ValueError, match="no rows"):
        trigger_shift([[5, 5], [0, 0]], [[5, 5], [3, 3]], target_label=1)
    with pytest.raises(ValueError, match="no rows"):
        trigger_shift([[5, 5], [3, 3]], [[5, 5], [0, 0]], target_label=1)
    with pytest.raises(ValueError, match="shape"):
        trigger_shift(np.ones((2, 2)), np.ones((3, 3)), target_label=0)
    with pytest.raises(ValueError, match="shape"):
        trigger_shift(np.ones((2, 3)), np.ones((2, 3)), target_label=0)


# --------------------------------------------------------------------------- input errors

def test_empty_input_raises():
    with pytest.raises(ValueError, match="empty"):
        cacc([], [])
    with pytest.raises(ValueError, match="empty"):
        pacc([], [])
    with pytest.raises(ValueError, match="non-target"):
        lfr([], [], 1)


def test_mismatched_lengths_raise_for_accuracy():
    with pytest.raises(ValueError, match="3 rows.*4"):
        cacc([0, 1, 1], [0, 1, 1, 0])
    with pytest.raises(ValueError, match="rows"):
        pacc([0, 1, 1, 0, 1], [0, 1, 1, 0])


@pytest.mark.parametrize("preds,labels", [([1, 0, 1], [0, 0, 1, 1]), ([1, 0, 1, 1, 0], [0, 0, 1, 1])])
def test_mismatched_lengths_raise_valueerror_for_lfr(preds, labels):
    # Same contract as accuracy(): mismatched preds/labels are a ValueError naming the sizes.
    with pytest.raises(ValueError):
        lfr(preds, labels, 1)


def test_mismatched_lengths_raise_valueerror_for_backdoor_metrics():
    # triggered preds have 3 rows, labels 4: must be rejected with the documented ValueError
    with pytest.raises(ValueError):
        backdoor_metrics([0, 1], [0, 1], [1, 1, 1], [0, 0, 1, 1], target_label=1, num_labels=2)


def test_lfr_all_rows_target_raises():
    with pytest.raises(ValueError, match="non-target"):
        lfr([1, 0, 1], [1, 1, 1], target_label=1)


# --------------------------------------------------------------------------- backdoor_metrics

def test_backdoor_metrics_binary():
    target = 1
    labels_clean = [0, 0, 0, 0, 1, 1, 1, 1]
    preds_clean = [0, 0, 0, 1, 1, 1, 1, 0]
    labels_trig = [0, 0, 0, 0, 1, 1, 1, 1]
    preds_trig = [1, 1, 1, 0, 1, 0, 0, 1]
    m = backdoor_metrics(preds_clean, labels_clean, preds_trig, labels_trig, target, 2)
    assert set(m) == {"cacc", "lfr", "lfr_any", "pacc", "lfr_per_class", "confusion_clean", "confusion_triggered",
                      "trigger_shift", "shift_class", "confusion_clean_matched"}
    # clean: correct at 0,1,2,4,5,6 -> 6 of 8 -> 75.0
    assert m["cacc"] == 75.0
    # triggered non-target rows 0..3 predicted 1,1,1,0 -> 3 of 4 -> 75.0 (binary: any wrong label = the target)
    assert m["lfr"] == m["lfr_any"] == 75.0
    assert m["lfr_per_class"] == {"0": 75.0}
    # triggered: correct at 3 (0), 4 (1), 7 (1) -> 3 of 8 -> 37.5
    assert m["pacc"] == 37.5
    assert m["confusion_clean"] == [[3, 1], [1, 3]]
    assert m["confusion_triggered"] == [[1, 3], [2, 2]]
    # target row: clean [1, 3] -> 25 % to class 0; triggered [2, 2] -> 50 % -> shift 25.0 to class 0
    assert m["trigger_shift"] == pytest.approx(25.0)
    assert m["shift_class"] == 0
    # plain JSON-friendly types
    assert isinstance(m["confusion_clean"], list) and isinstance(m["confusion_clean"][0][0], int)
    assert isinstance(m["cacc"], float) and isinstance(m["shift_class"], int)


def test_backdoor_metrics_four_class():
    target = 0
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    preds_clean = [0, 0, 1, 1, 2, 2, 3, 0]     # 7 of 8 correct -> 87.5
    preds_trig = [3, 0, 0, 0, 0, 2, 3, 3]      # correct at 1, 5, 6, 7 -> 4 of 8 -> 50.0
    m = backdoor_metrics(preds_clean, labels, preds_trig, labels, target, 4)
    assert m["cacc"] == 87.5
    assert m["pacc"] == 50.0
    # non-target rows 2..7 predicted 0 at 2, 3, 4 -> 3 of 6 -> 50.0
    assert m["lfr"] == 50.0
    assert m["lfr_per_class"] == {"1": 100.0, "2": 50.0, "3": 0.0}
    # target row clean [2,0,0,0], triggered [1,0,0,1] -> class 3 gains 50 points
    assert m["shift_class"] == 3
    assert m["trigger_shift"] == pytest.approx(50.0)
    assert np.array(m["confusion_triggered"]).sum() == 8


# --------------------------------------------------------------------------- evaluate_model

def test_evaluate_model_matches_manual_computation(tiny_bert_factory, tokenizer, sst2_sample):
    target, num_labels = 1, 2
    model = tiny_bert_factory(num_labels=num_labels, seed=3)
    clean = sst2_sample.iloc[:24].reset_index(drop=True)
    trig = sst2_sample.iloc[24:48].reset_index(drop=True).copy()
    trig["text"] = "mn " + trig["text"]

    metrics, preds = evaluate_model(model, tokenizer, clean, trig, target, num_labels, batch_size=8,
                                    max_length=64)

    pc = predict_logits(model, tokenizer, clean["text"].tolist(), 8, 64).argmax(1)
    pt = predict_logits(model, tokenizer, trig["text"].tolist(), 8, 64).argmax(1)
    np.testing.assert_array_equal(preds["clean"], pc)
    np.testing.assert_array_equal(preds["triggered"], pt)

    yc, yt = clean["label"].to_numpy(), trig["label"].to_numpy()
    assert metrics["cacc"] == pytest.approx(100.0 * np.sum(pc == yc) / len(yc))
    assert metrics["pacc"] == pytest.approx(100.0 * np.sum(pt == yt) / len(yt))
    non_target = yt != target
    assert metrics["lfr"] == pytest.approx(100.0 * np.sum(pt[non_target] == target) / non_target.sum())
    cm_c = [[int(np.sum((yc == i) & (pc == j))) for j in range(2)] for i in range(2)]
    cm_t = [[int(np.sum((yt == i) & (pt == j))) for j in range(2)] for i in range(2)]
    assert metrics["confusion_clean"] == cm_c
    assert metrics["confusion_triggered"] == cm_t
    shift = 100.0 * (cm_t[target][0] / sum(cm_t[target]) - cm_c[target][0] / sum(cm_c[target]))
    assert metrics["trigger_shift"] == pytest.approx(shift)
    assert metrics["shift_class"] == 0


def test_evaluate_model_accepts_dataframes_with_index_gaps(tiny_bert_factory, tokenizer):
    # non-contiguous pandas index must not matter (texts/labels taken positionally)
    model = tiny_bert_factory(num_labels=2, seed=0)
    df = pd.DataFrame({"text": ["good film", "bad film", "an utterly dull and tedious film"],
                       "label": [1, 0, 0]}, index=[10, 3, 7])
    metrics, preds = evaluate_model(model, tokenizer, df, df, 1, 2, batch_size=2, max_length=32)
    pc = predict_logits(model, tokenizer, df["text"].tolist(), 2, 32).argmax(1)
    np.testing.assert_array_equal(preds["clean"], pc)
    assert metrics["cacc"] == pytest.approx(100.0 * np.mean(pc == np.array([1, 0, 0])))


def test_trigger_shift_compares_the_same_rows_when_some_rows_cannot_be_triggered():
    """Only clean rows 0-3 could be triggered; clean rows 4-5 (target class, mispredicted) must
    not enter the clean rate that the trigger shift subtracts."""
    from rga.evaluation import backdoor_metrics

    preds_clean = [1, 1, 0, 0, 0, 0]
    labels_clean = [1, 1, 0, 0, 1, 1]
    preds_trig = [0, 1, 0, 0]  # triggered versions of clean rows 0..3
    labels_trig = [1, 1, 0, 0]
    m = backdoor_metrics(preds_clean, labels_clean, preds_trig, labels_trig, 1, 2, clean_rows=[0, 1, 2, 3])
    # matched clean rate of target rows predicted 0: 0/2; triggered: 1/2 -> +50 pp
    assert m["trigger_shift"] == 50.0 and m["shift_class"] == 0
    unmatched = backdoor_metrics(preds_clean, labels_clean, preds_trig, labels_trig, 1, 2)
    # against all 4 clean target rows (2 of them predicted 0): 50 - 50 = 0
    assert unmatched["trigger_shift"] == 0.0
    assert m["confusion_clean_matched"] == [[2, 0], [0, 2]]
