"""report stage: metrics/summary.json, report/table.{md,csv}, report/figures/*.png and
plots/overlay/*.csv (the methods of every cell per metric, read by dvc.yaml's top-level plots)."""

import json
import shutil
import sys

import pandas as pd

from rga.data import dataset_spec
from rga.io import load_params, save_figure, write_csv, write_json, write_text
from rga.pipeline import ROOT
from rga.unlearning import load_plugins
from rga.report import (CI_LEVEL, N_BOOTSTRAP, bootstrap_intervals, compute_section, detection_table, group_name, load_curves,
                        load_predictions, lfr_table, matrix_cells, overlay_tables, plot_confusions, plot_curve, shift_table,
                        summary_json, summary_rows, table)

P = load_params(ROOT / "params.yaml")
# The method list comes from the matrix (built-in + plugin methods); display names from the registry.
methods = list(P["matrix"]["methods"]) + list(P["matrix"].get("plugin_methods") or [])
sys.path.insert(0, str(ROOT.resolve()))
load_plugins(list(P["unlearn"].get("plugins") or []) +
             [f"plugins.{m}" for m in methods if (ROOT / "plugins" / f"{m}.py").is_file()])
cells = matrix_cells(P)
targets = {d: dataset_spec(d, P).target_label for d in P["matrix"]["datasets"]}
rows = summary_rows(ROOT / "metrics", cells, methods, targets)
# Paired bootstrap over the fixed test set's rows (and seeds) for every model x dataset x attack.
preds = load_predictions(ROOT / "data" / "preds", cells, methods, ROOT / "metrics")
dataset_of = {group_name(m, d, a): d for m, d, a, _ in cells}
intervals = {name: bootstrap_intervals(group, targets[dataset_of[name]], dataset_spec(dataset_of[name], P).num_labels)
             for name, group in preds.items()}
write_json(summary_json(rows, intervals), ROOT / "metrics" / "summary.json")
md, df = table(rows, methods, intervals)
write_csv(df, ROOT / "report" / "table.csv")
n_seeds = len(P["matrix"]["seeds"])
spread = "mean ± std over %d seeds" % n_seeds if n_seeds > 1 else "1 seed (no ± shown; add seeds to matrix.seeds)"
ci = (f"[lo, hi] = {CI_LEVEL:.0f}% paired bootstrap interval ({N_BOOTSTRAP} resamples of the fixed test set's rows"
      + (" and of the seeds" if n_seeds > 1 else "") + "; the same rows for the method and ReTrain)")
def lfr_section(rows) -> str:
    """The report's two-LFR section for multi-class cells ("" when every dataset is binary)."""
    text = lfr_table(rows)
    return text and ("\n## LFR on multi-class data, two definitions\n\nLFR = non-target triggered rows predicted "
                     "as the target label (the paper's text); LFR any = predicted as any wrong label (the authors' "
                     "evaluation, which the paper's Table 2 reports for AG-News). Equal on binary data.\n\n" + text)


write_text("# Backdoor unlearning results (paper Table 2 layout)\n\n"
           f"CACC, LFR, PACC in %; ΔPACC = |PACC_ReTrain − PACC_method| (pp), {spread}, "
           f"after {P['unlearn']['epochs']} unlearning epochs; {ci}. A ΔPACC is bold only when its interval "
           "lies below every other method's; where intervals overlap nothing is bold, because the data do not "
           "separate the methods.\n\n" + md +
           "\n## Trigger shift (pp) and CUBE detection F1\n\nTrigger shift: extra rate at which triggered "
           "target-class test rows are predicted as another class, relative to clean rows (the class that "
           "gains most). Near 0 = no new backdoor. Δ = method − ReTrain on the same cell and seed, with its "
           "paired bootstrap interval.\n\n" + shift_table(rows, intervals) +
           "\n## Detection quality\n\nThe forget set the unlearning methods worked on: precision (its purity), "
           "recall and F1 against the true poisoned rows, its size and its poisoned rows. † = F1 below 0.5.\n\n"
           + detection_table(rows) + lfr_section(rows) + compute_section(ROOT / "metrics", cells, methods), ROOT / "report" / "table.md")
write_csv(pd.DataFrame(rows), ROOT / "report" / "summary_rows.csv")

figs = ROOT / "report" / "figures"
if figs.exists():
    shutil.rmtree(figs)
figs.mkdir(parents=True)
curves_by_cell, retrain_by_cell = {}, {}
for model, dataset, attack, seed in cells:
    cell = f"{model}-{dataset}-{attack}-{seed}"
    spec = dataset_spec(dataset, P)
    names = list(spec.label_names) or [str(i) for i in range(spec.num_labels)]
    curves = load_curves(ROOT / "plots", cell, methods)
    rt = json.loads((ROOT / "metrics" / "unlearn" / f"{cell}-retrain.json").read_text())
    curves_by_cell[cell], retrain_by_cell[cell] = curves, rt
    save_figure(plot_curve(curves, "pacc", cell, "PACC on fully triggered test set (%)",
                           "PACC over unlearning epochs", ref=rt["pacc"], ylim=(0, 100)), figs / f"{cell}-pacc.png")
    # (a skipped method or ReTrain, status: skipped, has no curve and null metrics: no line, no reference)
    save_figure(plot_curve(curves, "cacc", cell, "CACC on clean test set (%)",
                           "CACC over unlearning epochs (scored at the record epochs)", ref=rt["cacc"]),
                figs / f"{cell}-cacc.png")
    save_figure(plot_curve(curves, "poison_loss", cell, "mean CE on forget set (nats, symlog)",
                           "Poison loss over unlearning epochs", logy=True), figs / f"{cell}-poison_loss.png")
    lam = {m: c for m, c in curves.items() if "lambda" in c and c["lambda"].notna().any()}
    if lam:
        save_figure(plot_curve(lam, "lambda", cell, "λ = exp(−α·KL) (unitless)", "RGA's adaptive weight λ",
                               ylim=(-0.02, 1.02)),
                    figs / f"{cell}-lambda.png")
    mats = {"poisoned": json.loads((ROOT / "metrics" / "poisoned" / f"{cell}.json").read_text())["confusion_triggered"],
            "retrain": rt["confusion_triggered"]}
    for m in methods:
        p = ROOT / "metrics" / "unlearn" / f"{cell}-{m}.json"
        if p.is_file():
            mats[m] = json.loads(p.read_text())["confusion_triggered"]
    mats = {m: mat for m, mat in mats.items() if mat is not None}  # skipped: no matrix
    save_figure(plot_confusions(mats, names, cell), figs / f"{cell}-confusion.png")
    scatter = ROOT / "plots" / "detect" / f"{cell}.png"
    if scatter.is_file():
        shutil.copyfile(scatter, figs / f"{cell}-cube.png")
# the methods of each cell overlaid, for `dvc plots show` / `dvc plots diff` (dvc.yaml top-level plots)
overlays = ROOT / "plots" / "overlay"
if overlays.exists():
    shutil.rmtree(overlays)
overlays.mkdir(parents=True)
for metric, frame in overlay_tables(curves_by_cell, retrain_by_cell).items():
    write_csv(frame, overlays / f"{metric}.csv")
print(md)
