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
    lfr_table,
    matrix_cells,
    overlay_tables,
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
    # LFR any wrong label: of the 60 non-target triggered rows only one (class 3 -> 3) is right
    assert all(row["lfr_any"] == pytest.approx(59 / 60 * 100) and row["num_labels"] == 4 for row in rows)
    # no detect file: detection F1 is None
    assert all(row["detect_f1"] is None for row in rows)
    assert all(row["seed"] == 3 for row in rows)
    md = lfr_table(rows)
    assert md.splitlines()[0] == ("| Model | Dataset | Attack | Poisoned LFR / LFR any | ReTrain LFR / LFR any | "
                                  "GA LFR / LFR any | NPO LFR / LFR any |")
    assert md.splitlines()[2] == "| minilm | ag | addsent | 97.00 / 98.33 | 3.00 / 98.33 | 1.00 / 98.33 | 2.00 / 98.33 |"
    assert lfr_table([dict(row, num_labels=2) for row in rows]) == ""  # binary data: no table


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


def test_summary_json_holds_only_headline_means(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells, ["ga", "rga"], TARGETS)
    intervals = {"minilm-sst2-badnets": {"ga": {"delta_pacc": (20.004, 40.0)}, "rga": {"delta_pacc": (0.0, 4.5)}}}
    out = summary_json(rows, intervals)
    # one entry per model x dataset x attack (seeds pooled), no per-seed or per-stage detail
    assert out == {"minilm-sst2-badnets": {
        "detect_f1": 0.85,  # ReTrain (the reference) and the poisoned model are in summary_rows.csv
        "ga": {"delta_pacc": 32.0, "pacc": 55.0, "cacc": 75.0, "seeds_run": 2, "seeds": 2, "delta_pacc_lo": 20.0,
               "delta_pacc_hi": 40.0},
        "rga": {"delta_pacc": 1.5, "pacc": 85.5, "cacc": 90.0, "seeds_run": 2, "seeds": 2, "delta_pacc_lo": 0.0,
                "delta_pacc_hi": 4.5}}}
    no_ci = summary_json(rows)  # the same keys without intervals: the bounds are null
    assert no_ci["minilm-sst2-badnets"]["ga"]["delta_pacc_lo"] is None
    assert set(no_ci["minilm-sst2-badnets"]["ga"]) == set(out["minilm-sst2-badnets"]["ga"])
    json.dumps(out)  # serialisable


def test_summary_rows_delta_trigger_shift_is_relative_to_retrain(two_seeds):
    root, cells = two_seeds
    r = by_method(summary_rows(root, cells[:1], ["ga", "rga"], TARGETS))
    assert r["ga"]["delta_trigger_shift"] == pytest.approx(50.0 - 2.0)
    assert r["rga"]["delta_trigger_shift"] == pytest.approx(0.0 - 2.0)
    assert r["retrain"]["delta_trigger_shift"] == 0.0


HEADER = ("| Model | Dataset | Attack | Seeds run | ReTrain CACC | ReTrain LFR | ReTrain PACC | GA CACC | GA LFR | GA PACC | "
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
    assert lines[1] == "|---|---|---|" + "---:|" * 12
    # sample std (ddof=1) of two seeds: std(a, b) = |a - b| / sqrt(2)
    assert lines[2] == ("| minilm | sst2 | badnets | 2 of 2 | 91.00 ± 1.41 | 12.00 ± 2.83 | 87.00 ± 1.41 | "
                        "75.00 ± 7.07 | 4.00 ± 1.41 | 55.00 ± 7.07 | 32.00 ± 5.66 | "
                        "90.00 ± 1.41 | 11.00 ± 1.41 | 85.50 ± 0.71 | 1.50 ± 2.12 |")  # no intervals: no bold
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


def test_table_single_seed_has_no_std_and_bolds_only_separated_intervals(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells[1:], ["ga", "rga"], TARGETS)
    plain = ("| minilm | sst2 | badnets | 1 of 1 | 92.00 | 14.00 | 86.00 | 70.00 | 3.00 | 50.00 | "
             "36.00{ga} | 91.00 | 10.00 | 86.00 | {rga} |")
    md, _ = table(rows, ["ga", "rga"])
    assert md.splitlines()[2] == plain.format(ga="", rga="0.00")
    separated = {"minilm-sst2-badnets": {"ga": {"delta_pacc": (30.0, 42.0)}, "rga": {"delta_pacc": (0.0, 3.5)}}}
    md, df = table(rows, ["ga", "rga"], separated)
    assert md.splitlines()[2] == plain.format(ga=" [30.0, 42.0]", rga="**0.00 [0.0, 3.5]**")
    assert (df.iloc[0]["rga_delta_pacc_lo"], df.iloc[0]["rga_delta_pacc_hi"]) == (0.0, 3.5)
    overlapping = {"minilm-sst2-badnets": {"ga": {"delta_pacc": (3.0, 42.0)}, "rga": {"delta_pacc": (0.0, 3.5)}}}
    md, _ = table(rows, ["ga", "rga"], overlapping)
    assert md.splitlines()[2] == plain.format(ga=" [3.0, 42.0]", rga="0.00 [0.0, 3.5]")


def test_table_renders_mean_and_std_of_three_seeds(tmp_path):
    root = tmp_path / "metrics"
    seeds = {0: 80.0, 1: 82.0, 2: 90.0}  # GA PACC per seed; ReTrain 88 -> ΔPACC 8, 6, 2
    for seed, ga_pacc in seeds.items():
        write_binary_cell(root, seed, {**{m: SEED0[m] for m in ("poisoned", "retrain")},
                                       "ga": (80.0, 5.0, ga_pacc, [30, 20])})
    rows = summary_rows(root, [("minilm", "sst2", "badnets", s) for s in seeds], ["ga"], TARGETS)
    md, df = table(rows, ["ga"])
    # GA PACC mean 84, sample std sqrt(((−4)² + (−2)² + 6²)/2) = sqrt(28); ΔPACC 8, 6, 2: mean 5.33, std 3.06
    assert md.splitlines()[2] == ("| minilm | sst2 | badnets | 3 of 3 | 90.00 ± 0.00 | 10.00 ± 0.00 | 88.00 ± 0.00 | "
                                  f"80.00 ± 0.00 | 5.00 ± 0.00 | 84.00 ± {np.sqrt(28):.2f} | 5.33 ± 3.06 |")
    assert df.iloc[0]["seeds"] == 3


def test_shift_table(two_seeds):
    root, cells = two_seeds
    rows = summary_rows(root, cells, ["ga", "rga"], TARGETS)
    lines = shift_table(rows).splitlines()
    assert lines[0] == "| Model | Dataset | Attack | CUBE F1 | Poisoned shift | ReTrain shift | GA shift | RGA shift |"
    # F1 mean of 0.9 and 0.8; ReTrain shifts 2 and 0; GA 50 and 60 (Δ 48, 60); RGA 0 and 8 (Δ −2, 8)
    assert lines[2] == ("| minilm | sst2 | badnets | 0.850 | -10.00 ± 0.00 | 1.00 ± 1.41 | 55.00 ± 7.07 (Δ 54.00) | "
                        "4.00 ± 5.66 (Δ 3.00) |")
    ci = {"minilm-sst2-badnets": {"ga": {"delta_trigger_shift": (40.0, 66.04), "trigger_shift": (41.0, 67.0)},
                                  "rga": {}}}
    assert "55.00 ± 7.07 [41.0, 67.0] (Δ 54.00 [40.0, 66.0])" in shift_table(rows, ci)


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


def test_overlay_tables_one_long_table_per_metric_with_retrain_flat():
    curves = {
        "c1": {"ga": pd.DataFrame({"epoch": [0, 1, 2], "pacc": [50.0, np.nan, 20.0], "cacc": [86.0, np.nan, 80.0],
                                   "lambda": [np.nan] * 3}),
               "rga": pd.DataFrame({"epoch": [0, 1, 2], "pacc": [50.0, 70.0, 85.0], "cacc": [86.0, np.nan, 84.0],
                                    "lambda": [1.0, 0.5, 0.01]})},
        "c2": {"npo": pd.DataFrame({"epoch": [0, 1], "pacc": [40.0, 45.0]})},
    }
    retrain = {"c1": {"pacc": 83.0, "cacc": 85.5, "lfr": 10.0}, "c2": {"pacc": 70.0, "cacc": 80.0}}
    out = overlay_tables(curves, retrain, ("pacc", "cacc", "lambda", "poison_loss"))
    pacc = out["pacc"]
    assert list(pacc.columns) == ["cell", "method", "epoch", "pacc"]
    assert pacc.values.tolist() == [
        ["c1", "retrain", 0, 83.0], ["c1", "retrain", 1, 83.0], ["c1", "retrain", 2, 83.0],
        ["c1", "ga", 0, 50.0], ["c1", "ga", 2, 20.0],  # the epoch without a PACC is left out
        ["c1", "rga", 0, 50.0], ["c1", "rga", 1, 70.0], ["c1", "rga", 2, 85.0],
        ["c2", "retrain", 0, 70.0], ["c2", "retrain", 1, 70.0],
        ["c2", "npo", 0, 40.0], ["c2", "npo", 1, 45.0]]
    assert out["cacc"][out["cacc"]["method"] == "rga"]["epoch"].tolist() == [0, 2]
    assert out["lambda"].values.tolist() == [["c1", "rga", 0, 1.0], ["c1", "rga", 1, 0.5], ["c1", "rga", 2, 0.01]]
    assert out["poison_loss"].empty and list(out["poison_loss"].columns) == ["cell", "method", "epoch", "poison_loss"]


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
    separated = {"m-d-hiddenkiller": {"ga": {"delta_pacc": (15.0, 25.0)}, "rga": {"delta_pacc": (6.0, 14.0)}}}
    md, _ = table(rows, ["ga", "rga"], separated)
    assert "| m | d | hiddenkiller † |" in md
    assert "**" not in md
    assert md.rstrip().endswith("† m / d / hiddenkiller: detection warning: only 1 of 2000 rows flagged")
    clean = [dict(r, detect_warning=None) for r in rows]
    md2, _ = table(clean, ["ga", "rga"], separated)
    assert "**10.00 [6.0, 14.0]**" in md2 and "†" not in md2


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


def test_detection_warning_for_a_low_f1():
    from rga.report import detection_warning

    det = {"flagged": 150, "cluster_sizes": {"0": 1148, "1": 852}, "warning": None, "f1": 0.4, "precision": 0.3,
           "recall": 0.6}
    assert detection_warning(det).startswith("detection F1 0.40 < 0.5 (precision 0.30, recall 0.60)")
    assert detection_warning(dict(det, f1=0.5)) is None


def test_detection_table_lists_quality_and_marks_low_f1():
    from rga.report import detection_table

    base = {"model": "m", "dataset": "d", "seed": 0, "method": "poisoned", "detector": "cube"}
    rows = [dict(base, attack="badnets", detect_precision=0.9, detect_recall=1.0, detect_f1=0.947, forget_rows=107,
                 forget_poisoned=96),
            dict(base, attack="hiddenkiller", detect_precision=1.0, detect_recall=0.01, detect_f1=0.02, forget_rows=1,
                 forget_poisoned=1),
            dict(base, method="ga", attack="badnets", detect_precision=0.9, detect_recall=1.0, detect_f1=0.947,
                 forget_rows=107, forget_poisoned=96)]
    lines = detection_table(rows).splitlines()
    assert lines[0].startswith("| Model | Dataset | Attack | Detector | Precision | Recall | F1 | Forget rows")
    assert lines[2] == "| m | d | badnets | cube | 0.900 | 1.000 | 0.947 | 107 | 96 |"
    assert lines[3] == "| m | d | hiddenkiller † | cube | 1.000 | 0.010 | 0.020 | 1 | 1 |"
    assert len(lines) == 4  # one line per cell, not per method


# ----------------------------------------------------------------------------- bootstrap
def preds_table(correct: np.ndarray, label: int = 1, clean_pred=None) -> pd.DataFrame:
    """Rows of one binary cell with every row of class ``label``; ``correct`` [n] bool on the triggered text."""
    n = len(correct)
    pred = np.where(correct, label, 1 - label)
    return pd.DataFrame({"label": np.full(n, label), "pred": pred, "clean_row": np.arange(n),
                         "clean_label": np.full(n, label),
                         "clean_pred": np.full(n, label) if clean_pred is None else clean_pred})


def test_bootstrap_identical_predictions_give_a_zero_width_interval():
    from rga.report import bootstrap_intervals

    rng = np.random.default_rng(0)
    t = preds_table(rng.random(300) < 0.7)
    ci = bootstrap_intervals({"retrain": [t], "rga": [t.copy()]}, target_label=1, num_labels=2, n_boot=500)
    assert ci["rga"]["delta_pacc"] == (0.0, 0.0)
    assert ci["rga"]["delta_trigger_shift"] == (0.0, 0.0)
    assert set(ci) == {"rga"}


def test_bootstrap_interval_follows_a_shift_in_accuracy():
    from rga.report import bootstrap_intervals

    n = 400
    retrain = preds_table(np.ones(n, bool))
    wrong = np.arange(n) % 4 == 0                       # GA wrong on exactly 25% of the rows
    ga = preds_table(~wrong)
    more = preds_table(~(np.arange(n) % 2 == 0))        # NPO wrong on 50%
    ci = bootstrap_intervals({"retrain": [retrain], "ga": [ga], "npo": [more]}, 1, 2, n_boot=1000)
    lo, hi = ci["ga"]["delta_pacc"]
    assert 19.0 < lo < 25.0 < hi < 31.0                  # centred on the true 25 points, binomial width
    lo2, hi2 = ci["npo"]["delta_pacc"]
    assert 43.0 < lo2 < 50.0 < hi2 < 57.0
    # all rows are target-class rows: GA's wrong rows are its trigger shift (clean predictions are right)
    assert ci["ga"]["trigger_shift"] == pytest.approx((lo, hi))
    again = bootstrap_intervals({"retrain": [retrain], "ga": [ga], "npo": [more]}, 1, 2, n_boot=1000)
    assert again == ci                                   # seeded: same inputs, same interval


def test_bootstrap_pools_seeds_and_refuses_unpaired_tables():
    from rga.report import bootstrap_intervals

    n = 400
    retrain = preds_table(np.ones(n, bool))
    seed0 = preds_table(~(np.arange(n) % 10 == 0))       # ΔPACC 10
    seed1 = preds_table(~(np.arange(n) % 10 < 3))        # ΔPACC 30
    ci = bootstrap_intervals({"retrain": [retrain, retrain], "ga": [seed0, seed1]}, 1, 2, n_boot=1000)
    lo, hi = ci["ga"]["delta_pacc"]
    # drawing the seeds with replacement gives (seed0, seed0) a quarter of the time: the interval spans both
    # seeds' values (10 and 30), not just the row noise around their mean of 20
    assert 5.0 < lo < 12.0 and 28.0 < hi < 34.0
    with pytest.raises(ValueError, match="same fixed test set"):
        bootstrap_intervals({"retrain": [retrain], "ga": [seed0.head(300)]}, 1, 2)
    with pytest.raises(ValueError, match="ReTrain"):
        bootstrap_intervals({"ga": [seed0]}, 1, 2)


def test_best_separated():
    from rga.report import best_separated

    means = {"ga": 30.0, "rga": 2.0, "dga": 3.0}
    assert best_separated(means, {"ga": (25, 35), "rga": (0, 4), "dga": (1, 6)}) is None   # rga and dga overlap
    assert best_separated(means, {"ga": (25, 35), "rga": (0, 4), "dga": (4.5, 6)}) == "rga"
    assert best_separated(means, None) is None


def test_predictions_table_matches_triggered_rows_to_their_clean_rows():
    from rga.stagekit import UNMATCHED, predictions_table

    clean = pd.DataFrame({"text": list("abcd"), "label": [0, 1, 0, 1]})
    preds = {"clean": np.array([0, 1, 1, 1]), "triggered": np.array([1, 1, 0])}
    # with clean_row (the generated route): rows 3, 0, 2 of the clean set
    trig = pd.DataFrame({"text": ["d*", "a*", "c*"], "label": [1, 0, 0], "clean_row": [3, 0, 2]})
    t = predictions_table(preds, clean, trig)
    assert t["clean_label"].tolist() == [1, 0, 0] and t["clean_pred"].tolist() == [1, 0, 1]
    assert t["pred"].tolist() == [1, 1, 0] and t["label"].tolist() == [1, 0, 0]
    # no clean_row, same length and labels: aligned row by row
    aligned = pd.DataFrame({"text": list("ABCD"), "label": [0, 1, 0, 1]})
    t = predictions_table({"clean": preds["clean"], "triggered": np.array([1, 1, 1, 0])}, clean, aligned)
    assert t["clean_row"].tolist() == [0, 1, 2, 3] and t["clean_pred"].tolist() == [0, 1, 1, 1]
    # no clean_row and a different length (a user's or the authors' triggered set): unmatched, no crash
    longer = pd.DataFrame({"text": list("ABCDE"), "label": [0, 1, 0, 1, 1]})
    t = predictions_table({"clean": preds["clean"], "triggered": np.array([1, 1, 1, 0, 0])}, clean, longer)
    assert (t[["clean_row", "clean_label", "clean_pred"]] == UNMATCHED).all().all()
    assert t["pred"].tolist() == [1, 1, 1, 0, 0]


def test_bootstrap_without_matched_clean_rows_gives_no_shift_interval():
    from rga.report import bootstrap_intervals

    n = 200
    retrain = preds_table(np.ones(n, bool)).assign(clean_row=-1, clean_label=-1, clean_pred=-1)
    ga = preds_table(~(np.arange(n) % 4 == 0)).assign(clean_row=-1, clean_label=-1, clean_pred=-1)
    ci = bootstrap_intervals({"retrain": [retrain], "ga": [ga]}, 1, 2, n_boot=500)
    assert ci["ga"]["trigger_shift"] is None and ci["ga"]["delta_trigger_shift"] is None
    lo, hi = ci["ga"]["delta_pacc"]
    assert lo < 25.0 < hi


def test_bootstrap_shift_agrees_with_the_evaluation_definition():
    """The vectorised per-replicate shift is evaluation.trigger_shift on the resampled rows."""
    from rga.evaluation import confusion, trigger_shift
    from rga.report import _shift_per_replicate

    rng = np.random.default_rng(1)
    n = 300
    label = rng.integers(0, 4, n)
    t = pd.DataFrame({"label": label, "pred": rng.integers(0, 4, n), "clean_row": np.arange(n),
                      "clean_label": label, "clean_pred": rng.integers(0, 4, n)})
    idx = np.stack([np.arange(n), rng.integers(0, n, n)])
    got = _shift_per_replicate(t, idx, target_label=2, num_labels=4)
    for b in range(2):
        r = t.iloc[idx[b]]
        want = trigger_shift(confusion(r["clean_pred"], r["clean_label"], 4), confusion(r["pred"], r["label"], 4), 2)
        assert got[b] == pytest.approx(want["trigger_shift"])


def write_skipped(root: Path, seed: int, methods: list[str], reason: str = "cell x: the detected forget set is empty") -> None:
    """Seed ``seed``'s methods as the unlearn stage writes them on a degenerate cell: status
    skipped, null metrics (rga.stagekit.write_skipped_result)."""
    for m in methods:
        write(root / "unlearn" / f"minilm-sst2-badnets-{seed}-{m}.json",
              {"status": "skipped", "reason": reason, "forget_rows": 0, "retain_rows": 240, "cacc": None, "lfr": None,
               "pacc": None, "trigger_shift": None, "confusion_clean": None, "confusion_triggered": None,
               "confusion_clean_matched": None, "lfr_per_class": None, "shift_class": None})


def test_a_skipped_seed_is_left_out_of_every_mean_interval_and_verdict(tmp_path):
    from rga.report import bootstrap_intervals

    root = tmp_path / "metrics"
    write_binary_cell(root, 0, SEED0)
    write_binary_cell(root, 1, SEED1)
    write_binary_cell(root, 2, {m: SEED0[m] for m in ("poisoned", "retrain")})
    write_skipped(root, 2, ["ga", "rga"])
    cells = [("minilm", "sst2", "badnets", s) for s in (0, 1, 2)]
    rows = summary_rows(root, cells, ["ga", "rga"], TARGETS)
    skipped = [r for r in rows if r["seed"] == 2 and r["method"] in ("ga", "rga")]
    assert [r["status"] for r in skipped] == ["skipped", "skipped"]
    assert all(np.isnan(r[k]) for r in skipped for k in ("cacc", "pacc", "delta_pacc", "trigger_shift"))
    # the means are those of seeds 0 and 1 alone, read off SEED0 / SEED1 by hand
    summary = summary_json(rows)["minilm-sst2-badnets"]
    assert summary["ga"]["pacc"] == (60.0 + 50.0) / 2 and summary["ga"]["delta_pacc"] == (28.0 + 36.0) / 2
    assert summary["rga"]["cacc"] == (89.0 + 91.0) / 2 and summary["rga"]["delta_pacc"] == (3.0 + 0.0) / 2
    assert (summary["ga"]["seeds_run"], summary["ga"]["seeds"]) == (2, 3)
    md, df = table(rows, ["ga", "rga"])
    line = md.splitlines()[2]
    assert line.startswith("| minilm | sst2 | badnets ‡ | 2 of 3 |")
    assert "| 55.00 ± 7.07 | 32.00 ± 5.66 |" in line  # GA PACC and ΔPACC of seeds 0 and 1 only
    assert "‡ minilm / sst2 / badnets: not run (status: skipped, left out of every mean, interval and verdict) on " \
           "seed 2 (GA, RGA): cell x: the detected forget set is empty" in md
    assert df.iloc[0]["ga_delta_pacc_mean"] == 32.0 and df.iloc[0]["seeds_run"] == 2
    # ReTrain ran on all three seeds: its mean is over three
    assert df.iloc[0]["retrain_pacc_mean"] == pytest.approx((88.0 + 86.0 + 88.0) / 3)
    assert "skipped" not in shift_table(rows) and "nan" not in shift_table(rows)
    # the paired bootstrap resamples only the seeds the method shares with ReTrain
    n = 200
    retrain = preds_table(np.ones(n, bool))
    ga0, ga1 = preds_table(~(np.arange(n) % 10 == 0)), preds_table(~(np.arange(n) % 10 < 3))  # ΔPACC 10, 30
    ci = bootstrap_intervals({"retrain": {0: retrain, 1: retrain, 2: retrain}, "ga": {0: ga0, 1: ga1}}, 1, 2,
                             n_boot=1000)
    alone = bootstrap_intervals({"retrain": {0: retrain, 1: retrain}, "ga": {0: ga0, 1: ga1}}, 1, 2, n_boot=1000)
    assert ci["ga"]["delta_pacc"] == alone["ga"]["delta_pacc"]
    assert 5.0 < ci["ga"]["delta_pacc"][0] < 12.0 and 28.0 < ci["ga"]["delta_pacc"][1] < 36.0  # seeds 10 and 30
    # a method that ran on no seed gets no interval and no number anywhere
    write_skipped(root, 0, ["ga"])
    write_skipped(root, 1, ["ga"])
    rows = summary_rows(root, cells, ["ga", "rga"], TARGETS)
    md, _ = table(rows, ["ga", "rga"], {"minilm-sst2-badnets": {"rga": {"delta_pacc": (0.0, 3.5)}}})
    assert "| skipped | skipped | skipped | skipped |" in md and "**" not in md
    assert summary_json(rows)["minilm-sst2-badnets"]["ga"] == {
        "delta_pacc": None, "pacc": None, "cacc": None, "seeds_run": 0, "seeds": 3, "delta_pacc_lo": None,
        "delta_pacc_hi": None}
    assert bootstrap_intervals({"retrain": {0: retrain}, "ga": {}}, 1, 2) == {}


def test_compute_section_lists_each_setting_once_and_reads_only_the_matrix(tmp_path):
    from rga.report import compute_section

    root = tmp_path / "metrics"
    cpu = {"device": "cpu", "cpu": "Some CPU", "cpu_capability": "AVX512", "onednn_isa": "Intel AVX-512",
           "onednn_max_isa": None, "gpu": None, "cuda": None, "python": "3.11.7", "torch": "2.13.0",
           "transformers": "5.25.0", "dvc": "3.67.1", "threads": 2}
    write(root / "poisoned" / "minilm-sst2-badnets-0.json", {"compute": {**cpu, "precision": "fp32"}})
    write(root / "detect" / "minilm-sst2-badnets-0.json", {"compute": cpu})  # oracle: no model, no precision
    write(root / "unlearn" / "minilm-sst2-badnets-0-ga.json", {"compute": {**cpu, "precision": "fp32"}})
    write(root / "unlearn" / "minilm-sst2-badnets-0-old.json", {"compute": {**cpu, "threads": 1}})  # not in the matrix
    text = compute_section(root, [("minilm", "sst2", "badnets", 0)], ["ga"])
    lines = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert lines == ["- CPU Some CPU, oneDNN ISA: Intel AVX-512, ATen vector ISA AVX512; precision fp32, 2 torch "
                     "thread(s); torch 2.13.0, transformers 5.25.0, dvc 3.67.1, Python 3.11.7 (3 metrics files)"]
    assert compute_section(tmp_path / "none", [("minilm", "sst2", "badnets", 0)], ["ga"]) == ""


def test_predictions_that_disagree_with_the_status_are_a_bug(tmp_path):
    from rga.report import load_predictions

    metrics, preds = tmp_path / "metrics", tmp_path / "preds"
    preds.mkdir()
    cell = "minilm-sst2-badnets-0"
    preds_table(np.ones(10, bool)).to_csv(preds / f"{cell}-retrain.csv", index=False)
    preds_table(np.ones(10, bool)).head(0).to_csv(preds / f"{cell}-ga.csv", index=False)  # no row...
    write(metrics / "unlearn" / f"{cell}-ga.json", {"status": "ran"})                     # ...but it ran
    with pytest.raises(ValueError, match="has 0 rows but ga in cell minilm-sst2-badnets-0 has status 'ran'"):
        load_predictions(preds, [("minilm", "sst2", "badnets", 0)], ["ga"], metrics)
    write(metrics / "unlearn" / f"{cell}-ga.json", {"status": "skipped"})
    got = load_predictions(preds, [("minilm", "sst2", "badnets", 0)], ["ga"], metrics)
    assert list(got["minilm-sst2-badnets"]["ga"]) == [] and list(got["minilm-sst2-badnets"]["retrain"]) == [0]
