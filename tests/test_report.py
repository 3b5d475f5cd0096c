"""Report: summary rows (ΔPACC, trigger shift), the Table 2 renderer, summary JSON, figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rga.io import save_figure
from rga.report import (
    MissingCellError,
    matrix_cells,
    plot_confusions,
    plot_curve,
    shift_table,
    summary_json,
    summary_rows,
    table,
)

TARGETS = {"sst2": 1, "ag": 0}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(cacc, lfr, pacc, clean, triggered):
    return {"cacc": cacc, "lfr": lfr, "pacc": pacc, "confusion_clean": clean, "confusion_triggered": triggered,
            "lfr_per_class": {}}


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


BIN_CLEAN = [[45, 5], [5, 45]]  # target 1: 10% of its clean rows predicted 0


def write_binary_cell(root: Path, seed: int, values: dict, f1: float | None = 0.9) -> str:
    """Cell minilm-sst2-badnets-<seed>; ``values``: method -> (cacc, lfr, pacc, triggered row of class 1)."""
    cell = f"minilm-sst2-badnets-{seed}"
    for m, (c, l, p, row1) in values.items():
        trig = [[40, 10], row1]
        m_path = root / "poisoned" / f"{cell}.json" if m == "poisoned" else root / "unlearn" / f"{cell}-{m}.json"
        write(m_path, metrics(c, l, p, BIN_CLEAN, trig))
    if f1 is not None:
        write(root / "detect" / f"{cell}.json", {"f1": f1, "precision": 1.0, "recall": 0.8})
    return cell


SEED0 = {"poisoned": (91.0, 100.0, 50.0, [0, 50]),
         "retrain": (90.0, 10.0, 88.0, [6, 44]),    # shift 12 - 10 = 2
         "ga": (80.0, 5.0, 60.0, [30, 20]),         # shift 60 - 10 = 50
         "rga": (89.0, 12.0, 85.0, [5, 45])}        # shift 0
SEED1 = {"poisoned": (93.0, 98.0, 52.0, [0, 50]),
         "retrain": (92.0, 14.0, 86.0, [5, 45]),
         "ga": (70.0, 3.0, 50.0, [35, 15]),         # shift 70 - 10 = 60
         "rga": (91.0, 10.0, 86.0, [9, 41])}        # shift 18 - 10 = 8


@pytest.fixture
def two_seeds(tmp_path):
    root = tmp_path / "metrics"
    write_binary_cell(root, 0, SEED0, f1=0.9)
    write_binary_cell(root, 1, SEED1, f1=0.8)
    cells = [("minilm", "sst2", "badnets", 0), ("minilm", "sst2", "badnets", 1)]
    return root, cells


def by_method(rows, seed=None):
    return {r["method"]: r for r in rows if seed is None or r["seed"] == seed}


def test_summary_rows_binary_delta_pacc_and_trigger_shift(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells[:1], ["ga", "rga"], TARGETS)
    assert [r["method"] for r in rows] == ["poisoned", "retrain", "ga", "rga"]
    r = by_method(rows)
    assert r["retrain"]["delta_pacc"] == 0.0
    assert r["ga"]["delta_pacc"] == 28.0          # |88 - 60|
    assert r["rga"]["delta_pacc"] == 3.0          # |88 - 85|
    assert r["poisoned"]["delta_pacc"] == 38.0    # |88 - 50|
    assert r["ga"]["trigger_shift"] == pytest.approx(50.0)
    assert r["retrain"]["trigger_shift"] == pytest.approx(2.0)
    assert r["rga"]["trigger_shift"] == pytest.approx(0.0)
    assert r["poisoned"]["trigger_shift"] == pytest.approx(-10.0)
    for row in rows:
        assert row["detect_f1"] == 0.9
        assert (row["model"], row["dataset"], row["attack"], row["seed"]) == ("minilm", "sst2", "badnets", 0)
        assert (row["poisoned_cacc"], row["poisoned_lfr"], row["poisoned_pacc"]) == (91.0, 100.0, 50.0)
    assert (r["ga"]["cacc"], r["ga"]["lfr"], r["ga"]["pacc"]) == (80.0, 5.0, 60.0)


def test_summary_rows_retrain_in_methods_is_not_duplicated(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells[:1], ["retrain", "ga"], TARGETS)
    assert [r["method"] for r in rows] == ["poisoned", "retrain", "ga"]


def test_summary_rows_four_class(tmp_path):
    root = tmp_path / "metrics"
    cell = "minilm-ag-addsent-3"
    clean = [[20, 0, 0, 0], [1, 18, 1, 0], [0, 0, 20, 0], [0, 2, 0, 18]]

    def trig(row0):
        return [row0, [20, 0, 0, 0], [20, 0, 0, 0], [19, 0, 0, 1]]

    write(root / "poisoned" / f"{cell}.json", metrics(88.0, 97.0, 26.0, clean, trig([20, 0, 0, 0])))
    write(root / "unlearn" / f"{cell}-retrain.json", metrics(87.5, 3.0, 70.5, clean, trig([19, 1, 0, 0])))
    write(root / "unlearn" / f"{cell}-ga.json", metrics(80.0, 1.0, 40.25, clean, trig([10, 2, 8, 0])))
    write(root / "unlearn" / f"{cell}-npo.json", metrics(85.0, 2.0, 75.0, clean, trig([14, 1, 1, 4])))
    rows = summary_rows(root, [("minilm", "ag", "addsent", 3)], ["ga", "npo"], TARGETS)
    r = by_method(rows)
    assert r["ga"]["delta_pacc"] == pytest.approx(30.25)     # |70.5 - 40.25|
    assert r["npo"]["delta_pacc"] == pytest.approx(4.5)      # |70.5 - 75|
    assert r["poisoned"]["delta_pacc"] == pytest.approx(44.5)
    # target class 0 (20 rows): the class gaining the most among 1..3
    assert r["ga"]["trigger_shift"] == pytest.approx(40.0)   # class 2: 8/20
    assert r["npo"]["trigger_shift"] == pytest.approx(20.0)  # class 3: 4/20
    assert r["retrain"]["trigger_shift"] == pytest.approx(5.0)
    assert r["poisoned"]["trigger_shift"] == pytest.approx(0.0)
    # no detect file: detection F1 is None
    assert all(row["detect_f1"] is None for row in rows)
    assert all(row["seed"] == 3 for row in rows)


def test_missing_retrain_raises_naming_the_cell(two_seeds):
    root, cells = two_seeds
    (root / "unlearn" / "minilm-sst2-badnets-1-retrain.json").unlink()
    with pytest.raises(MissingCellError) as e:
        summary_rows(root, cells, ["ga", "rga"], TARGETS)
    assert "minilm-sst2-badnets-1" in str(e.value)
    assert "ReTrain" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_missing_method_raises_naming_the_cell(two_seeds):
    root, cells = two_seeds
    with pytest.raises(MissingCellError, match=r"npo metrics of cell minilm-sst2-badnets-0"):
        summary_rows(root, cells, ["ga", "npo"], TARGETS)


def test_summary_json_structure(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells, ["ga", "rga"], TARGETS)
    out = summary_json(rows)
    assert set(out) == {"minilm-sst2-badnets-0", "minilm-sst2-badnets-1"}
    for cell in out:
        assert set(out[cell]) == {"poisoned", "retrain", "ga", "rga"}
        for m, vals in out[cell].items():
            keys = {"cacc", "lfr", "pacc", "delta_pacc", "trigger_shift"}
            assert set(vals) == (keys | {"detect_f1"} if m == "poisoned" else keys)
    assert out["minilm-sst2-badnets-0"]["ga"] == {"cacc": 80.0, "lfr": 5.0, "pacc": 60.0, "delta_pacc": 28.0,
                                                   "trigger_shift": 50.0}
    assert out["minilm-sst2-badnets-1"]["rga"]["trigger_shift"] == 8.0
    assert out["minilm-sst2-badnets-0"]["poisoned"]["detect_f1"] == 0.9
    assert out["minilm-sst2-badnets-1"]["poisoned"]["detect_f1"] == 0.8
    json.dumps(out)  # serialisable


def test_summary_json_rounds_to_two_decimals():
    row = {"model": "m", "dataset": "d", "attack": "a", "seed": 0, "method": "ga", "cacc": 1.23456,
           "lfr": 2.0, "pacc": 3.005001, "delta_pacc": 0.126, "trigger_shift": -4.444, "detect_f1": None}
    assert summary_json([row]) == {"m-d-a-0": {"ga": {"cacc": 1.23, "lfr": 2.0, "pacc": 3.01, "delta_pacc": 0.13,
                                                     "trigger_shift": -4.44}}}


HEADER = ("| Model | Dataset | Attack | ReTrain CACC | ReTrain LFR | ReTrain PACC | GA CACC | GA LFR | GA PACC | "
          "GA ΔPACC | RGA CACC | RGA LFR | RGA PACC | RGA ΔPACC |")


def test_table_markdown_two_seeds(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells, ["ga", "rga"], TARGETS)
    swapped, _ = table(rows, ["rga", "ga"])  # columns follow the matrix order, ReTrain first
    assert swapped.splitlines()[0].index("RGA CACC") < swapped.splitlines()[0].index("GA CACC")
    md, df = table(rows, ["ga", "rga"])
    lines = md.splitlines()
    assert md.endswith("\n")
    assert len(lines) == 3
    assert lines[0] == HEADER
    assert lines[1] == "|---|---|---|" + "---:|" * 11
    # sample std (ddof=1) of two seeds: std(a, b) = |a - b| / sqrt(2)
    assert lines[2] == ("| minilm | sst2 | badnets | 91.00 ± 1.41 | 12.00 ± 2.83 | 87.00 ± 1.41 | "
                        "75.00 ± 7.07 | 4.00 ± 1.41 | 55.00 ± 7.07 | 32.00 ± 5.66 | "
                        "90.00 ± 1.41 | 11.00 ± 1.41 | 85.50 ± 0.71 | **1.50 ± 2.12** |")
    assert len(df) == 1
    rec = df.iloc[0]
    assert rec["seeds"] == 2
    assert rec["rga_delta_pacc_mean"] == pytest.approx(1.5)
    assert rec["rga_delta_pacc_std"] == pytest.approx(np.sqrt(4.5))
    assert rec["ga_delta_pacc_mean"] == pytest.approx(32.0)
    assert rec["retrain_pacc_mean"] == pytest.approx(87.0)
    assert rec["retrain_cacc_std"] == pytest.approx(np.sqrt(2.0))
    assert "retrain_delta_pacc_mean" not in df.columns
    assert "poisoned_cacc_mean" not in df.columns


def test_table_single_seed_has_no_std_and_bolds_best(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells[1:], ["ga", "rga"], TARGETS)
    md, _ = table(rows, ["ga", "rga"])
    assert md.splitlines()[2] == ("| minilm | sst2 | badnets | 92.00 | 14.00 | 86.00 | 70.00 | 3.00 | 50.00 | "
                                  "36.00 | 91.00 | 10.00 | 86.00 | **0.00** |")


def test_shift_table(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells, ["ga", "rga"], TARGETS)
    lines = shift_table(rows).splitlines()
    assert lines[0] == "| Model | Dataset | Attack | CUBE F1 | Poisoned shift | ReTrain shift | GA shift | RGA shift |"
    # F1 mean of 0.9 and 0.8; ReTrain shifts 2 and 0; GA 50 and 60; RGA 0 and 8
    assert lines[2] == ("| minilm | sst2 | badnets | 0.850 | -10.00 ± 0.00 | 1.00 ± 1.41 | 55.00 ± 7.07 | "
                        "4.00 ± 5.66 |")


def test_matrix_cells():
    params = {"matrix": {"models": ["minilm"], "datasets": ["sst2", "ag"], "attacks": ["badnets"], "seeds": [0, 1]}}
    assert matrix_cells(params) == [("minilm", "sst2", "badnets", 0), ("minilm", "sst2", "badnets", 1),
                                    ("minilm", "ag", "badnets", 0), ("minilm", "ag", "badnets", 1)]


# ----------------------------------------------------------------------------- figures


def test_plot_curve_labels_lines_and_png(tmp_path):
    import matplotlib.pyplot as plt

    curves = {
        "ga": pd.DataFrame({"epoch": [0, 1, 2, 3], "pacc": [50.0, 60.0, np.nan, 20.0]}),
        "rga": pd.DataFrame({"epoch": [0, 1, 2, 3], "pacc": [50.0, 70.0, 80.0, 85.0]}),
        "dga": pd.DataFrame({"epoch": [0, 1], "poison_loss": [0.1, 0.2]}),  # no pacc column: no line
    }
    fig = plot_curve(curves, "pacc", "minilm-sst2-badnets-0", "PACC (%)", "PACC during unlearning", ref=87.0)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "unlearning epoch"
    assert ax.get_ylabel() == "PACC (%)"
    assert ax.get_title() == "PACC during unlearning\nminilm-sst2-badnets-0"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["GA", "RGA", "ReTrain"]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["GA"].get_xdata()) == [0, 1, 3]  # the NaN epoch is dropped
    assert list(lines["RGA"].get_ydata()) == [50.0, 70.0, 80.0, 85.0]
    assert list(lines["ReTrain"].get_ydata()) == [87.0, 87.0]
    assert ax.get_yscale() == "linear"
    out = save_figure(fig, tmp_path / "plots" / "curve.png")
    assert out == tmp_path / "plots" / "curve.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in out.parent.iterdir()] == ["curve.png"]  # no temporary file left


def test_plot_curve_logy():
    import matplotlib.pyplot as plt

    fig = plot_curve({"npo": pd.DataFrame({"epoch": [0, 1], "poison_loss": [0.5, 9.0]})}, "poison_loss", "c",
                     "poison loss", "Poison loss", logy=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["NPO"]
    plt.close(fig)


def test_plot_confusions_titles_labels_and_png(tmp_path):
    mats = {"poisoned": np.array([[0, 50], [0, 50]]), "ga": np.array([[45, 5], [30, 20]]),
            "rga": [[44, 6], [5, 45]]}
    fig = plot_confusions(mats, ["negative", "positive"], "minilm-sst2-badnets-0")
    axes = fig.axes[:3]
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in axes] == ["Poisoned", "GA", "RGA"]
    assert all(ax.get_xlabel() == "predicted label" for ax in axes)
    assert axes[0].get_ylabel() == "true label"
    assert axes[1].get_ylabel() == ""
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["negative", "positive"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["negative", "positive"]
    assert "minilm-sst2-badnets-0" in fig._suptitle.get_text()
    texts = [t.get_text() for t in axes[1].texts]
    assert texts == ["45\n90%", "5\n10%", "30\n60%", "20\n40%"]
    out = save_figure(fig, tmp_path / "conf.png", dpi=50)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_table_flags_rows_with_a_detection_warning_and_does_not_bold_them():
    from rga.report import table

    base = {"model": "m", "dataset": "d", "attack": "hiddenkiller", "seed": 0, "cacc": 80.0, "lfr": 10.0,
            "detect_f1": 0.0, "detect_warning": "only 1 of 2000 rows flagged"}
    rows = [dict(base, method="retrain", pacc=80.0, delta_pacc=0.0),
            dict(base, method="ga", pacc=60.0, delta_pacc=20.0),
            dict(base, method="rga", pacc=70.0, delta_pacc=10.0)]
    md, _ = table(rows, ["ga", "rga"])
    assert "| m | d | hiddenkiller † |" in md
    assert "**" not in md
    assert md.rstrip().endswith("† m / d / hiddenkiller: detection warning: only 1 of 2000 rows flagged")
    clean = [dict(r, detect_warning=None) for r in rows]
    md2, _ = table(clean, ["ga", "rga"])
    assert "**10.00**" in md2 and "†" not in md2


def test_detection_warning_for_an_almost_empty_forget_set():
    from rga.report import detection_warning

    det = {"flagged": 1, "cluster_sizes": {"0": 1148, "1": 852}, "warning": None}
    assert detection_warning(det).startswith("only 1 of 2000 training rows flagged")
    assert detection_warning({"flagged": 10, "cluster_sizes": {"0": 1000, "1": 1000}, "warning": None}) is None
    assert detection_warning({"flagged": 0, "warning": "no row flagged"}) == "no row flagged"


def test_display_names_come_from_the_registry():
    from rga.report import display

    assert [display(m) for m in ("poisoned", "retrain", "ga", "simnpo", "ft")] == \
        ["Poisoned", "ReTrain", "GA", "SimNPO", "FT"]
    assert display("not_registered") == "NOT_REGISTERED"
