"""Report: summary rows with delta_pacc and trigger shift, the paper's Table 2 layout, figures.

Inputs are the small metric files of the pipeline; nothing here touches a model.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .evaluation import delta_pacc, trigger_shift

FIXED_DISPLAY = {"poisoned": "Poisoned", "retrain": "ReTrain"}


def display(method: str) -> str:
    """A method's display name: ``Poisoned``/``ReTrain``, else the registry's (e.g. ``SimNPO``).

    Methods come from the matrix (``matrix.methods`` + ``matrix.plugin_methods``) and the
    registry; nothing here lists them. An unregistered name is shown upper-cased.
    """
    if method in FIXED_DISPLAY:
        return FIXED_DISPLAY[method]
    from .unlearning import get_method

    try:
        return get_method(method).display
    except ValueError:
        return method.upper()


class MissingCellError(FileNotFoundError):
    """A metrics file the report needs does not exist; the message names the cell."""


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        raise MissingCellError(f"missing {what}: {path} (run `dvc repro` for that cell)")
    return json.loads(path.read_text(encoding="utf-8"))


MIN_FLAGGED_SHARE = 0.005


def detection_warning(det: dict) -> str | None:
    """The detect stage's own warning, or one for a forget set below 0.5% of the training rows
    (far below any useful poison rate: detection probably missed the poison, so unlearning on
    that cell says little about the methods)."""
    notes = [det["warning"]] if det.get("warning") else []
    rows = sum((det.get("cluster_sizes") or {}).values())
    if rows and 0 < det.get("flagged", 0) < MIN_FLAGGED_SHARE * rows:
        notes.append(f"only {det['flagged']} of {rows} training rows flagged (< {MIN_FLAGGED_SHARE:.1%}), "
                     "detection probably missed the poisoned rows (try detect.detector: oracle)")
    return "; ".join(notes) or None


def summary_rows(metrics_dir: Path, cells: list[tuple], methods: list[str], target_labels: dict) -> list[dict]:
    """One row per cell x method (plus the poisoned model as method ``poisoned``).

    Args:
        metrics_dir: folder with ``poisoned/``, ``detect/``, ``unlearn/``.
        cells: ``(model, dataset, attack, seed)`` tuples.
        methods: unlearning methods (``retrain`` is always added).
        target_labels: dataset -> target label.

    Returns:
        rows with cacc, lfr, pacc, delta_pacc (= |PACC_ReTrain − PACC_method|), trigger_shift,
        detect_f1 and the poisoned model's before values.

    Raises:
        MissingCellError: a ReTrain (or other) metrics file is missing; names the cell.
    """
    rows = []
    for model, dataset, attack, seed in cells:
        cell = f"{model}-{dataset}-{attack}-{seed}"
        before = _read(metrics_dir / "poisoned" / f"{cell}.json", f"poisoned-model metrics of cell {cell}")
        rt = _read(metrics_dir / "unlearn" / f"{cell}-retrain.json", f"ReTrain metrics of cell {cell}")
        det_path = metrics_dir / "detect" / f"{cell}.json"
        det = json.loads(det_path.read_text()) if det_path.is_file() else {}
        f1, warning = det.get("f1"), detection_warning(det)
        results = {"poisoned": before, "retrain": rt}
        for m in methods:
            if m != "retrain":
                results[m] = _read(metrics_dir / "unlearn" / f"{cell}-{m}.json", f"{m} metrics of cell {cell}")
        for m, r in results.items():
            ts = trigger_shift(r.get("confusion_clean_matched", r["confusion_clean"]), r["confusion_triggered"],
                               target_labels[dataset])
            rows.append({"model": model, "dataset": dataset, "attack": attack, "seed": int(seed), "method": m,
                         "cacc": r["cacc"], "lfr": r["lfr"], "pacc": r["pacc"],
                         "delta_pacc": delta_pacc(rt["pacc"], r["pacc"]),
                         "trigger_shift": ts["trigger_shift"], "detect_f1": f1, "detect_warning": warning,
                         "poisoned_cacc": before["cacc"], "poisoned_lfr": before["lfr"],
                         "poisoned_pacc": before["pacc"]})
    return rows


def summary_json(rows: list[dict]) -> dict:
    """``{cell: {method: {metric: value}}}`` for `dvc metrics show/diff` (values rounded to 2 dp)."""
    out: dict = {}
    for r in rows:
        cell = f"{r['model']}-{r['dataset']}-{r['attack']}-{r['seed']}"
        vals = {k: (round(r[k], 2) if isinstance(r[k], float) else r[k])
                for k in ("cacc", "lfr", "pacc", "delta_pacc", "trigger_shift")}
        if r["method"] == "poisoned" and r["detect_f1"] is not None:
            vals["detect_f1"] = round(r["detect_f1"], 3)
        out.setdefault(cell, {})[r["method"]] = vals
    return out


def _fmt(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"


def table(rows: list[dict], methods: list[str]) -> tuple[str, pd.DataFrame]:
    """Table 2 layout: rows model/dataset/attack, column groups ReTrain, then each method
    (CACC, LFR, PACC, ΔPACC), mean ± std over seeds; the best (lowest) mean ΔPACC in bold.
    Rows whose detection stage left a warning get a † after the attack, a footnote with the
    warning, and no bold (the unlearning there says little about the methods).

    Returns:
        ``(markdown, dataframe)``; the dataframe holds the means and stds as numbers.
    """
    df = pd.DataFrame(rows)
    methods = ["retrain"] + [m for m in dict.fromkeys(methods) if m != "retrain"]
    header = ["Model", "Dataset", "Attack"]
    for m in methods:
        cols = ["CACC", "LFR", "PACC"] + ([] if m == "retrain" else ["ΔPACC"])
        header += [f"{display(m)} {c}" for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    records, notes = [], []
    for (model, dataset, attack), g in df.groupby(["model", "dataset", "attack"], sort=False):
        cells = [model, dataset, attack]
        means = {m: g[g.method == m]["delta_pacc"].mean() for m in methods if m != "retrain"}
        warnings = sorted({w for w in g.get("detect_warning", pd.Series(dtype=object)).dropna()})
        best = min(means.values()) if means and not warnings else None
        if warnings:
            notes.append(f"† {model} / {dataset} / {attack}: detection warning: {'; '.join(warnings)}")
            cells[2] = f"{attack} †"
        rec = {"model": model, "dataset": dataset, "attack": attack, "seeds": int(g.seed.nunique())}
        for m in methods:
            gm = g[g.method == m]
            for k in ("cacc", "lfr", "pacc") + (() if m == "retrain" else ("delta_pacc",)):
                s = _fmt(gm[k].tolist())
                if k == "delta_pacc" and best is not None and np.isclose(means[m], best):
                    s = f"**{s}**"
                cells.append(s)
                rec[f"{m}_{k}_mean"] = float(gm[k].mean())
                rec[f"{m}_{k}_std"] = float(gm[k].std(ddof=1)) if len(gm) > 1 else 0.0
        lines.append("| " + " | ".join(cells) + " |")
        records.append(rec)
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text, pd.DataFrame(records)


def shift_table(rows: list[dict]) -> str:
    """Markdown: trigger shift (pp) per method and the detection F1, mean over seeds; methods in
    the order of ``rows`` (poisoned and ReTrain first)."""
    df = pd.DataFrame(rows)
    methods = list(dict.fromkeys(["poisoned", "retrain"] + df.method.tolist()))
    methods = [m for m in methods if m in set(df.method)]
    lines = ["| Model | Dataset | Attack | CUBE F1 | " + " | ".join(f"{display(m)} shift" for m in methods) + " |",
             "|---|---|---|---:|" + "---:|" * len(methods)]
    for (model, dataset, attack), g in df.groupby(["model", "dataset", "attack"], sort=False):
        f1 = g["detect_f1"].dropna()
        cells = [model, dataset, attack, f"{f1.mean():.3f}" if len(f1) else "–"]
        cells += [_fmt(g[g.method == m]["trigger_shift"].tolist()) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matrix_cells(params: dict) -> list[tuple]:
    """All ``(model, dataset, attack, seed)`` cells of the params matrix."""
    m = params["matrix"]
    return list(itertools.product(m["models"], m["datasets"], m["attacks"], m["seeds"]))


# ----------------------------------------------------------------------------- figures

COLORS = {"retrain": "#2a9d8f", "ga": "#e63946", "npo": "#f4a261", "rga": "#1d3557", "dga": "#8d99ae",
          "poisoned": "#6d597a"}  # fixed colours for the paper's methods; others take the tab10 cycle


def color(method: str, i: int = 0) -> str:
    """Line colour of ``method`` (its fixed colour, else the ``i``-th of matplotlib's tab10)."""
    if method in COLORS:
        return COLORS[method]
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


def load_curves(plots_dir: Path, cell: str, methods: list[str]) -> dict[str, pd.DataFrame]:
    """Per-method epoch histories (``plots/unlearn/<cell>-<method>/history.csv``) that exist."""
    out = {}
    for m in methods:
        p = plots_dir / "unlearn" / f"{cell}-{m}" / "history.csv"
        if p.is_file():
            out[m] = pd.read_csv(p)
    return out


def plot_curve(curves: dict, column: str, cell: str, ylabel: str, title: str, ref: float | None = None,
               logy: bool = False, ylim: tuple[float, float] | None = None):
    """One quantity over unlearning epochs, one line per method (paper Figures 3 and 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (m, df) in enumerate(curves.items()):
        if column in df and df[column].notna().any():
            d = df[["epoch", column]].dropna()
            ax.plot(d["epoch"], d[column], marker="o", ms=3, label=display(m), color=color(m, i))
    if ref is not None:
        ax.axhline(ref, ls="--", color=COLORS["retrain"], label="ReTrain")
    if logy:
        ax.set_yscale("symlog", linthresh=0.1)
    if ylim is not None:
        ax.set_ylim(*ylim)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("unlearning epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{cell}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_confusions(mats: dict[str, np.ndarray], names: list[str], cell: str):
    """Confusion matrices on the fully triggered test set, one panel per model (Figure 2b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mats)
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 3.2), squeeze=False)
    for ax, (m, mat) in zip(axes[0], mats.items()):
        mat = np.asarray(mat, float)
        share = mat / np.maximum(mat.sum(1, keepdims=True), 1) * 100
        ax.imshow(share, vmin=0, vmax=100, cmap="Blues")
        for i, j in itertools.product(range(mat.shape[0]), range(mat.shape[1])):
            ax.text(j, i, f"{int(mat[i, j])}\n{share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 60 else "black")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(display(m), fontsize=10)
        ax.set_xlabel("predicted label")
    axes[0][0].set_ylabel("true label")
    fig.suptitle(f"Fully triggered test set (trigger in every class, original labels) — {cell}", fontsize=10)
    fig.tight_layout()
    return fig
