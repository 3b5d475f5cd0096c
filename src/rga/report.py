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

from .evaluation import delta_pacc, lfr_any, trigger_shift

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
MIN_DETECTION_F1 = 0.5


def detection_warning(det: dict) -> str | None:
    """The detect stage's own warning, one for a detection F1 below 0.5 (where the ground truth
    is known), and one for a forget set below 0.5% of the training rows (far below any useful
    poison rate: detection probably missed the poison). Unlearning on such a cell says little
    about the methods. Returns the notes joined by "; ", or None."""
    notes = [det["warning"]] if det.get("warning") else []
    if det.get("f1") is not None and det["f1"] < MIN_DETECTION_F1:
        notes.append(f"detection F1 {det['f1']:.2f} < {MIN_DETECTION_F1} (precision {det['precision']:.2f}, recall "
                     f"{det['recall']:.2f}): the forget set is not the poison, so this row says little about the methods")
    rows = sum((det.get("cluster_sizes") or {}).values())
    if rows and 0 < det.get("flagged", 0) < MIN_FLAGGED_SHARE * rows:
        notes.append(f"only {det['flagged']} of {rows} training rows flagged (< {MIN_FLAGGED_SHARE:.1%}), "
                     "detection probably missed the poisoned rows (try detect.detector: oracle)")
    return "; ".join(notes) or None


NAN = float("nan")


def ran(result: dict) -> bool:
    """False for a method's metrics file that says ``status: skipped`` (a degenerate cell,
    :func:`rga.stagekit.write_skipped_result`); True otherwise (files from before the field
    existed ran)."""
    return result.get("status", "ran") != "skipped"


def summary_rows(metrics_dir: Path, cells: list[tuple], methods: list[str], target_labels: dict) -> list[dict]:
    """One row per cell x method (plus the poisoned model as method ``poisoned``).

    Args:
        metrics_dir: folder with ``poisoned/``, ``detect/``, ``unlearn/``.
        cells: ``(model, dataset, attack, seed)`` tuples.
        methods: unlearning methods (``retrain`` is always added).
        target_labels: dataset -> target label.

    Returns:
        rows with cacc, lfr, lfr_any (every wrong prediction, :func:`rga.evaluation.lfr_any`),
        num_labels, pacc, delta_pacc (= |PACC_ReTrain − PACC_method|), trigger_shift,
        delta_trigger_shift (= trigger_shift − ReTrain's, same cell and seed: ReTrain itself
        scores some shift, e.g. on HiddenKiller), the detection scores (detector, precision,
        recall, F1, forget rows and their poisoned rows) and the poisoned model's before values;
        ``status`` ("ran" or "skipped") and ``skip_reason``. A skipped method's metrics (and
        every delta against a skipped ReTrain) are NaN, never a stand-in value.

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
        shifts = {m: (trigger_shift(r.get("confusion_clean_matched", r["confusion_clean"]), r["confusion_triggered"],
                                    target_labels[dataset])["trigger_shift"] if ran(r) else NAN)
                  for m, r in results.items()}
        for m, r in results.items():
            # a method skipped on a degenerate cell has null metrics: NaN here, so every mean, std and
            # interval leaves it out (and so does every comparison with a skipped ReTrain)
            ok = ran(r) and ran(rt)
            rows.append({"model": model, "dataset": dataset, "attack": attack, "seed": int(seed), "method": m,
                         "status": "ran" if ran(r) else "skipped",
                         "skip_reason": None if ran(r) else r.get("reason"),
                         "cacc": r["cacc"] if ran(r) else NAN, "lfr": r["lfr"] if ran(r) else NAN,
                         "lfr_any": lfr_any(r["confusion_triggered"], target_labels[dataset]) if ran(r) else NAN,
                         "num_labels": len(before["confusion_triggered"]), "pacc": r["pacc"] if ran(r) else NAN,
                         "delta_pacc": delta_pacc(rt["pacc"], r["pacc"]) if ok else NAN,
                         "trigger_shift": shifts[m],
                         "delta_trigger_shift": shifts[m] - shifts["retrain"] if ok else NAN,
                         "detect_f1": f1, "detect_warning": warning,
                         "detector": det.get("detector"), "detect_precision": det.get("precision"),
                         "detect_recall": det.get("recall"), "forget_rows": det.get("flagged"),
                         "forget_poisoned": det.get("true_positives"),
                         "poisoned_cacc": before["cacc"], "poisoned_lfr": before["lfr"],
                         "poisoned_pacc": before["pacc"]})
    return rows


def mean_or_none(values: pd.Series, digits: int = 2) -> float | None:
    """The mean of the non-missing values rounded to ``digits``, None when there are none."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    return round(float(v.mean()), digits) if len(v) else None


def group_name(model: str, dataset: str, attack: str) -> str:
    """``<model>-<dataset>-<attack>``: a cell without its seed (results are pooled over seeds)."""
    return f"{model}-{dataset}-{attack}"


def summary_json(rows: list[dict], intervals: dict | None = None) -> dict:
    """The headline numbers for `dvc metrics show/diff`, means over seeds (rounded to 2 dp):
    ``{<model>-<dataset>-<attack>: {"detect_f1": F1, <method>: {delta_pacc, delta_pacc_lo,
    delta_pacc_hi, pacc, cacc}}}`` for every unlearning method (ReTrain, the reference, and the
    poisoned model are in ``report/summary_rows.csv``, with per-seed rows, LFR, trigger shift and
    the rest). The interval bounds come from ``intervals`` (:func:`bootstrap_intervals` per
    group); without them they are null. ``seeds_run`` of ``seeds``: the seeds the method ran on
    (a degenerate cell's skipped seeds are left out of every mean and bound; a method that ran on
    none has nulls). The keys are the same whether or not a cell was skipped.
    """
    df = pd.DataFrame(rows)
    out: dict = {}
    for (model, dataset, attack), g in df.groupby(["model", "dataset", "attack"], sort=False):
        name = group_name(model, dataset, attack)
        entry: dict = {}
        f1 = g[g.method == "poisoned"]["detect_f1"].dropna()
        if len(f1):
            entry["detect_f1"] = round(float(f1.mean()), 3)
        for m in dict.fromkeys(g.method):
            if m in ("poisoned", "retrain"):
                continue
            gm = g[g.method == m]
            vals = {k: mean_or_none(gm[k]) for k in ("delta_pacc", "pacc", "cacc")}
            vals.update(seeds_run=int(gm.delta_pacc.notna().sum()), seeds=int(len(gm)))
            ci = ((intervals or {}).get(name) or {}).get(m)
            lo, hi = ci["delta_pacc"] if ci else (None, None)
            vals["delta_pacc_lo"], vals["delta_pacc_hi"] = (None if v is None else round(float(v), 2) for v in (lo, hi))
            entry[m] = vals
        out[name] = entry
    return out


# ----------------------------------------------------------------------------- uncertainty

N_BOOTSTRAP = 2000
CI_LEVEL = 95.0


def load_predictions(preds_dir: Path, cells: list[tuple], methods: list[str], metrics_dir: Path | None = None) -> dict:
    """Per-row predictions (``data/preds/<cell>-<method>.csv``, see
    :func:`rga.stagekit.predictions_table`) grouped for :func:`bootstrap_intervals`.

    Returns:
        ``{<model>-<dataset>-<attack>: {method: {seed: table}}}`` with ReTrain included; seeds
        in the order of ``cells``. A method skipped on a degenerate cell (``status: skipped`` in
        its metrics file under ``metrics_dir``; its predictions file has the header and no row,
        :func:`rga.stagekit.write_skipped_result`) has no entry for that seed.

    Raises:
        MissingCellError: a predictions file is missing (names the cell and method).
        ValueError: a predictions file that disagrees with its metrics file's status (rows for a
            skipped method, or none for one that ran): a bug, not an outcome.
    """
    out: dict = {}
    for model, dataset, attack, seed in cells:
        cell = f"{model}-{dataset}-{attack}-{seed}"
        group = out.setdefault(group_name(model, dataset, attack), {})
        for m in ["retrain"] + [m for m in methods if m != "retrain"]:
            path = preds_dir / f"{cell}-{m}.csv"
            if not path.is_file():
                raise MissingCellError(f"missing per-row predictions of {m} in cell {cell}: {path} "
                                       "(run `dvc repro` for that cell)")
            tab = pd.read_csv(path)
            group.setdefault(m, {})
            status = None
            if metrics_dir is not None:
                mpath = Path(metrics_dir) / "unlearn" / f"{cell}-{m}.json"
                status = json.loads(mpath.read_text()).get("status", "ran") if mpath.is_file() else None
            if status is not None and (status == "skipped") == bool(len(tab)):
                raise ValueError(f"{path} has {len(tab)} rows but {m} in cell {cell} has status {status!r}: "
                                 "the predictions and the metrics file disagree (re-run that cell)")
            if len(tab):
                group[m][int(seed)] = tab
    return out


def _shift_per_replicate(tab: pd.DataFrame, idx: np.ndarray, target_label: int, num_labels: int) -> np.ndarray:
    """Trigger shift (pp) of one model on each bootstrap resample of its rows; ``idx`` [B, n]."""
    label = tab["label"].to_numpy()
    target = label == target_label
    n_target = target[idx].sum(1).astype(float)
    n_target[n_target == 0] = np.nan
    best = np.full(len(idx), -np.inf)
    for c in range(num_labels):
        if c == target_label:
            continue
        trig = ((tab["pred"].to_numpy() == c) & target)[idx].sum(1)
        clean = ((tab["clean_pred"].to_numpy() == c) & target)[idx].sum(1)
        best = np.maximum(best, 100.0 * (trig - clean) / n_target)
    return best


def bootstrap_intervals(preds: dict[str, list[pd.DataFrame]], target_label: int, num_labels: int,
                        n_boot: int = N_BOOTSTRAP, level: float = CI_LEVEL, seed: int = 0) -> dict:
    """Paired bootstrap intervals for ΔPACC, trigger shift and Δ trigger shift of every method.

    One replicate resamples the n test rows with replacement (the same rows for every method,
    ReTrain and seed: the test set is fixed, so the methods are paired on it) and, with S > 1
    seeds, the seeds with replacement; the statistic is the mean over the drawn seeds of the
    per-seed value, e.g. ``|PACC_ReTrain,s − PACC_method,s|`` on the drawn rows. The interval is
    the percentile interval at ``level`` % (paper §6.1 defines ΔPACC; the bootstrap is ours).

    Seeds where a method or ReTrain was skipped (a degenerate cell) are left out of that
    method's interval: each method is resampled over the seeds it shares with ReTrain.

    Args:
        preds: ``{method: {seed: table}}`` (or ``{method: [table per seed]}``) with ``retrain``
            among them; every table has the same n rows (columns ``label``, ``pred``,
            ``clean_pred``, as written by :func:`rga.stagekit.predictions_table`).
        target_label, num_labels: the dataset's.
        n_boot: replicates B; seed: the resampling seed (same inputs, same intervals).

    The interval is that of a mean of absolute differences, so it lies above 0 whenever some
    rows disagree: a point ΔPACC of exactly 0 can sit below a replicate interval [lo > 0, hi].

    Returns:
        ``{method: {"delta_pacc": (lo, hi), "trigger_shift": (lo, hi),
        "delta_trigger_shift": (lo, hi)}}`` in percentage points, ReTrain excluded, and so is a
        method that shares no seed with ReTrain (it never ran); the two
        trigger-shift intervals are ``None`` when some triggered rows are not matched to their
        clean rows (``clean_row`` −1, see :func:`rga.stagekit.predictions_table`).

    Raises:
        ValueError: no ``retrain`` entry, or tables of different lengths or seed counts (the
            paired bootstrap needs one fixed test set and the same seeds for every method).
    """
    if "retrain" not in preds:
        raise ValueError("the paired bootstrap needs ReTrain's predictions (method 'retrain')")
    lists = {m: len(t) for m, t in preds.items() if isinstance(t, (list, tuple))}
    if lists and len(set(lists.values())) > 1:  # a list pairs seeds by position: every method needs all of them
        raise ValueError(f"per-seed lists of different lengths {lists}: the paired bootstrap needs the same fixed "
                         "test set and the same seeds for every method (pass {method: {seed: table}} when some "
                         "seeds were skipped)")
    preds = {m: dict(enumerate(t)) if isinstance(t, (list, tuple)) else dict(t) for m, t in preds.items()}
    if not preds["retrain"]:
        return {}  # ReTrain ran on no seed: nothing to compare with
    n = len(next(iter(preds["retrain"].values())))
    for m, tabs in preds.items():
        if any(len(t) != n for t in tabs.values()):
            raise ValueError(f"method {m!r}: seeds with {[len(t) for t in tabs.values()]} rows, but ReTrain has "
                             f"{n} rows; the paired bootstrap needs the same fixed test set for every method and seed")
    rng = np.random.default_rng([seed, 505])
    idx = rng.integers(0, n, size=(n_boot, n))
    cols = np.arange(n_boot)[:, None]
    draws: dict[tuple, np.ndarray] = {}  # one seed draw per set of seeds (the same for methods sharing it)

    def seed_draw(shared: tuple) -> np.ndarray:
        if shared not in draws:
            k = len(shared)
            draws[shared] = rng.integers(0, k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), int)
        return draws[shared]

    def per_seed(fn, m: str, shared: tuple) -> np.ndarray:  # [B, drawn seeds]
        return np.stack([fn(preds[m][s]) for s in shared], axis=1)[cols, seed_draw(shared)]

    def pacc(t):
        return 100.0 * (t["pred"].to_numpy() == t["label"].to_numpy())[idx].mean(1)

    def shift(t):
        return _shift_per_replicate(t, idx, target_label, num_labels)

    # the trigger shift compares each triggered row with its own clean row: only where they are matched
    matched = all((t["clean_row"].to_numpy() >= 0).all() for tabs in preds.values() for t in tabs.values())
    tail = (100.0 - level) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        lo, hi = np.nanpercentile(values.mean(1), [tail, 100.0 - tail])
        return float(lo), float(hi)

    out = {}
    for m in preds:
        shared = tuple(s for s in preds["retrain"] if s in preds[m])
        if m == "retrain" or not shared:
            continue
        d_pacc = np.abs(per_seed(pacc, "retrain", shared) - per_seed(pacc, m, shared))
        if matched:
            sm = per_seed(shift, m, shared)
            d_shift = sm - per_seed(shift, "retrain", shared)
        out[m] = {"delta_pacc": interval(d_pacc), "trigger_shift": interval(sm) if matched else None,
                  "delta_trigger_shift": interval(d_shift) if matched else None}
    return out


def best_separated(means: dict[str, float], intervals: dict[str, tuple[float, float]] | None) -> str | None:
    """The method to bold: the lowest mean ΔPACC, only when its interval lies entirely below every
    other method's interval (non-overlapping 95% intervals). ``None`` otherwise, or when
    ``intervals`` is missing or there is a single method."""
    if not intervals or len(means) < 2 or any(m not in intervals for m in means):
        return None
    best = min(means, key=lambda m: (means[m], m))
    hi = intervals[best][1]
    return best if all(hi < intervals[m][0] for m in means if m != best) else None


def format_mean_std(values, digits: int = 2) -> str:
    """``mean ± std`` (sample std, ddof 1) of the non-missing values; the value alone for one,
    ``–`` for none."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def format_interval(interval) -> str:
    """`` [lo, hi]`` (1 decimal) of an interval, empty for none."""
    return f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else ""



def table(rows: list[dict], methods: list[str], intervals: dict | None = None) -> tuple[str, pd.DataFrame]:
    """Table 2 layout: rows model/dataset/attack, column groups ReTrain, then each method
    (CACC, LFR, PACC, ΔPACC), mean ± std over seeds; ΔPACC with its paired-bootstrap interval
    ``[lo, hi]`` when ``intervals`` (``{group: bootstrap_intervals(...)}``) is given.

    Bolding: the lowest mean ΔPACC is bold only when its interval lies below every other
    method's (:func:`best_separated`); overlapping intervals bold nothing. Rows whose detection
    stage left a warning (or whose detection F1 is below 0.5) get a † after the attack, a
    footnote with the warning, and no bold (the unlearning there says little about the methods).
    "Seeds run" says on how many of the row's seeds every method ran ("k of n"); rows with a
    method skipped on a degenerate cell get a ‡ and a footnote with the reason, those seeds are
    left out of the method's mean, std, interval and of the bold verdict; a method that ran on
    no seed shows "skipped".

    Returns:
        ``(markdown, dataframe)``; the dataframe holds the means, stds and interval bounds.
    """
    df = pd.DataFrame(rows)
    methods = ["retrain"] + [m for m in dict.fromkeys(methods) if m != "retrain"]
    header = ["Model", "Dataset", "Attack", "Seeds run"]
    for m in methods:
        cols = ["CACC", "LFR", "PACC"] + ([] if m == "retrain" else ["ΔPACC"])
        header += [f"{display(m)} {c}" for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    records, notes = [], []
    if "status" not in df:
        df = df.assign(status="ran", skip_reason=None)
    for (model, dataset, attack), g in df.groupby(["model", "dataset", "attack"], sort=False):
        n_seeds = int(g.seed.nunique())
        # seeds each method has a result on (ReTrain included: a ΔPACC needs both)
        k_of = {m: int(g[g.method == m]["delta_pacc" if m != "retrain" else "pacc"].notna().sum()) for m in methods}
        k_all = min(k_of.values())
        cells = [model, dataset, attack, f"{k_all} of {n_seeds}"]
        ci = (intervals or {}).get(group_name(model, dataset, attack)) or {}
        means = {m: g[g.method == m]["delta_pacc"].mean() for m in methods if m != "retrain" and k_of[m]}
        warnings = sorted({w for w in g.get("detect_warning", pd.Series(dtype=object)).dropna()})
        skipped = g[g.status == "skipped"]
        best = None if warnings else best_separated(means, {m: v["delta_pacc"] for m, v in ci.items()})
        if warnings:
            notes.append(f"† {model} / {dataset} / {attack}: detection warning: {'; '.join(warnings)}")
            cells[2] = f"{attack} †"
        if len(skipped):
            by_seed = skipped.groupby("seed", sort=True)
            notes.append(f"‡ {model} / {dataset} / {attack}: not run (status: skipped, left out of every mean, "
                         "interval and verdict) on " + "; ".join(
                             f"seed {sd} ({', '.join(display(m) for m in dict.fromkeys(gs.method))}): "
                             f"{gs.skip_reason.dropna().iloc[0] if gs.skip_reason.notna().any() else 'skipped'}"
                             for sd, gs in by_seed))
            cells[2] += " ‡"
        rec = {"model": model, "dataset": dataset, "attack": attack, "seeds": n_seeds, "seeds_run": k_all}
        for m in methods:
            gm = g[g.method == m]
            if not k_of[m]:  # ran on no seed: no number at all (NaN in the dataframe, same columns)
                cells += ["skipped"] * (3 if m == "retrain" else 4)
                for k in ("cacc", "lfr", "pacc") + (() if m == "retrain" else ("delta_pacc",)):
                    rec[f"{m}_{k}_mean"] = rec[f"{m}_{k}_std"] = NAN
                if m != "retrain":
                    rec[f"{m}_delta_trigger_shift_mean"] = NAN
                continue
            for k in ("cacc", "lfr", "pacc") + (() if m == "retrain" else ("delta_pacc", "delta_trigger_shift")):
                if k == "delta_trigger_shift":  # in the dataframe only (the shift table shows it)
                    if k in gm:
                        rec[f"{m}_{k}_mean"] = float(gm[k].mean())
                    continue
                s = format_mean_std(gm[k].tolist())
                if k == "delta_pacc":
                    s += format_interval(ci.get(m, {}).get("delta_pacc"))
                    if k_of[m] != k_all:
                        s += f" ({k_of[m]} of {n_seeds} seeds)"
                    if m == best:
                        s = f"**{s}**"
                    if m in ci:
                        rec[f"{m}_delta_pacc_lo"], rec[f"{m}_delta_pacc_hi"] = ci[m]["delta_pacc"]
                        if ci[m].get("delta_trigger_shift"):
                            rec[f"{m}_delta_trigger_shift_lo"], rec[f"{m}_delta_trigger_shift_hi"] = \
                                ci[m]["delta_trigger_shift"]
                cells.append(s)
                vals = gm[k].dropna()
                rec[f"{m}_{k}_mean"] = float(vals.mean())
                rec[f"{m}_{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        lines.append("| " + " | ".join(cells) + " |")
        records.append(rec)
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text, pd.DataFrame(records)


def shift_table(rows: list[dict], intervals: dict | None = None) -> str:
    """Markdown: trigger shift (pp) per method, mean ± std over seeds, with Δ = method − ReTrain
    (same cell and seed); both with their paired-bootstrap intervals when ``intervals`` is given;
    the detection F1 beside it. Methods in the order of ``rows`` (poisoned and ReTrain first)."""
    df = pd.DataFrame(rows)
    methods = list(dict.fromkeys(["poisoned", "retrain"] + df.method.tolist()))
    methods = [m for m in methods if m in set(df.method)]
    lines = ["| Model | Dataset | Attack | CUBE F1 | " + " | ".join(f"{display(m)} shift" for m in methods) + " |",
             "|---|---|---|---:|" + "---:|" * len(methods)]
    for (model, dataset, attack), g in df.groupby(["model", "dataset", "attack"], sort=False):
        ci = (intervals or {}).get(group_name(model, dataset, attack)) or {}
        f1 = g["detect_f1"].dropna()
        cells = [model, dataset, attack, f"{f1.mean():.3f}" if len(f1) else "–"]
        for m in methods:
            gm = g[g.method == m]
            if not gm["trigger_shift"].notna().any():
                cells.append("skipped")
                continue
            text = format_mean_std(gm["trigger_shift"].tolist()) + format_interval(ci.get(m, {}).get("trigger_shift"))
            if m not in ("poisoned", "retrain") and "delta_trigger_shift" in gm and gm["delta_trigger_shift"].notna().any():
                text += f" (Δ {gm['delta_trigger_shift'].mean():.2f}{format_interval(ci.get(m, {}).get('delta_trigger_shift'))})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def lfr_table(rows: list[dict]) -> str:
    """Markdown: both LFR definitions per multi-class cell and method, mean over seeds:
    ``LFR`` (predicted as the target, the paper's text) and ``LFR any`` (any wrong label, the
    authors' evaluation, :func:`rga.evaluation.lfr_any`). Empty string when every dataset is
    binary (the two are then equal)."""
    df = pd.DataFrame([r for r in rows if r.get("num_labels", 2) > 2])
    if df.empty:
        return ""
    methods = list(dict.fromkeys(["poisoned", "retrain"] + df.method.tolist()))
    lines = ["| Model | Dataset | Attack | " + " | ".join(f"{display(m)} LFR / LFR any" for m in methods) + " |",
             "|---|---|---|" + "---:|" * len(methods)]
    for (model, dataset, attack), g in df.groupby(["model", "dataset", "attack"], sort=False):
        cells = [model, dataset, attack]
        for m in methods:
            gm = g[g.method == m]
            cells.append(f"{gm['lfr'].mean():.2f} / {gm['lfr_any'].mean():.2f}" if gm["lfr"].notna().any()
                         else "skipped" if len(gm) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def detection_table(rows: list[dict]) -> str:
    """Markdown: detection quality per cell, mean over seeds: the detector, precision, recall and
    F1 (0-1), the forget set's size (rows) and how many of them are truly poisoned (its purity is
    the precision). A cell with F1 below 0.5 is marked with †, as in the main table."""
    df = pd.DataFrame([r for r in rows if r["method"] == "poisoned"])
    lines = ["| Model | Dataset | Attack | Detector | Precision | Recall | F1 | Forget rows | Poisoned in forget |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for (model, dataset, attack), g in df.groupby(["model", "dataset", "attack"], sort=False):
        f1 = g["detect_f1"].dropna()
        mark = " †" if len(f1) and f1.mean() < MIN_DETECTION_F1 else ""
        cells = [model, dataset, attack + mark, " / ".join(sorted(set(g["detector"].dropna()))) or "–"]
        for k in ("detect_precision", "detect_recall", "detect_f1"):
            v = g[k].dropna()
            cells.append(f"{v.mean():.3f}" if len(v) else "–")
        for k in ("forget_rows", "forget_poisoned"):
            v = g[k].dropna()
            cells.append(f"{v.mean():.0f}" if len(v) else "–")
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


OVERLAY_METRICS = ("pacc", "cacc", "poison_loss", "lambda")


def overlay_tables(curves_by_cell: dict[str, dict[str, pd.DataFrame]], retrain: dict[str, dict],
                   metrics: tuple[str, ...] = OVERLAY_METRICS) -> dict[str, pd.DataFrame]:
    """Long tables for DVC's overlay plots (top-level ``plots:`` of dvc.yaml, template
    ``.dvc/plots/methods.json``): one per metric, columns ``cell, method, epoch, <metric>``, one
    row per epoch a method recorded the metric (CACC only at the record epochs), in cell, method
    and epoch order. ReTrain, which has no epochs, is a flat line at its final value for the
    metrics it has (PACC, CACC), over the epochs the cell's methods recorded (none when no method
    has a history).

    Args:
        curves_by_cell: cell name -> :func:`load_curves` of that cell (method -> history).
        retrain: cell name -> ReTrain's metrics (``metrics/unlearn/<cell>-retrain.json``).

    Returns:
        metric -> table (an empty table with the columns when no method recorded it).
    """
    out = {}
    for metric in metrics:
        parts = []
        for cell, curves in curves_by_cell.items():
            epochs = sorted({int(e) for df in curves.values() for e in df["epoch"]})
            if retrain.get(cell, {}).get(metric) is not None and epochs:
                parts.append(pd.DataFrame({"cell": cell, "method": "retrain", "epoch": epochs,
                                           metric: float(retrain[cell][metric])}))
            for method, df in curves.items():
                if metric in df:
                    d = df[["epoch", metric]].dropna()
                    parts.append(pd.DataFrame({"cell": cell, "method": method, "epoch": d["epoch"].astype(int),
                                               metric: d[metric].astype(float)}))
        cols = ["cell", "method", "epoch", metric]
        out[metric] = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
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


def compute_section(metrics_dir: Path, cells: list[tuple], methods: list[str]) -> str:
    """Markdown: the compute that made a run's numbers, once per distinct setting, from the
    ``compute`` field of the model stages' metrics files of ``cells`` × ``methods`` (ReTrain
    included) under ``metrics_dir`` (``poisoned/``, ``detect/``, ``unlearn/``; files of cells
    or methods no longer in the matrix are not read): device, CPU or GPU, oneDNN's instruction
    set, library versions, precision and torch threads, with how many metrics files each
    setting made. Empty string when no file records it (files from before the field existed)."""
    seen: dict[str, list] = {}
    names = [f"{m}-{d}-{a}-{s}" for m, d, a, s in cells]
    paths = [Path(metrics_dir) / sub / f"{c}.json" for sub in ("poisoned", "detect") for c in names]
    paths += [Path(metrics_dir) / "unlearn" / f"{c}-{m}.json" for c in names
              for m in ["retrain"] + [m for m in methods if m != "retrain"]]
    for path in paths:
        if path.is_file():
            c = json.loads(path.read_text(encoding="utf-8")).get("compute")
            if c:  # one line per setting; the precisions of the model stages that ran under it are listed
                key = json.dumps({k: v for k, v in c.items() if k != "precision"}, sort_keys=True)
                entry = seen.setdefault(key, [c, 0, set()])
                entry[1] += 1
                if c.get("precision"):
                    entry[2].add(c["precision"])
    if not seen:
        return ""
    lines = []
    for c, count, precisions in seen.values():
        where = (f"GPU {c.get('gpu')} (CUDA {c.get('cuda')})" if c.get("gpu") else
                 f"CPU {c.get('cpu')}, oneDNN ISA: {c.get('onednn_isa') or 'unknown'}"
                 + (f" (capped at {c['onednn_max_isa']})" if c.get("onednn_max_isa") else "")
                 + f", ATen vector ISA {c.get('cpu_capability')}")
        lines.append(f"- {where}; precision {', '.join(sorted(precisions)) or '–'}, {c.get('threads')} torch thread(s); "
                     f"torch {c.get('torch')}, transformers {c.get('transformers')}, dvc {c.get('dvc')}, "
                     f"Python {c.get('python')} ({count} metrics file{'s' if count != 1 else ''})")
    return ("\n## Compute\n\nWhere these numbers were made (the `compute` field of each model stage's metrics "
            "file). A re-run on the same hardware with the same library versions, precision and thread count "
            "reproduced the accuracy metrics exactly (logged losses may differ in the last digits); on other "
            "hardware they move, most within one seed std, some by more (README \"Reproducibility\").\n\n" + "\n".join(lines) + "\n")
