"""detect stage: CUBE (or oracle) split of the poisoned training set into forget / retain sets.

Writes data/detect/<cell>/{forget,retain}.parquet (is_poisoned kept for analysis only),
metrics/detect/<cell>.json (precision, recall, F1, flagged count, cluster sizes, warning),
plots/detect/<cell>.csv (UMAP scatter for `dvc plots`) and plots/detect/<cell>.png.

For attack `given` the ground truth is what the user's train.csv says (stats.json
train.ground_truth): `is_poisoned` (scored as usual), `suspect` (the oracle detector flags the
suspect rows; precision/recall/F1 are null with a note, since suspicion is not ground truth) or
`none` (scores null; the oracle detector is refused).
"""

import json
import sys
import time

import numpy as np
import pandas as pd

from rga.data import dataset_spec, read_parquet
from rga.detection import (DETECTORS, RULES, CubeSizeError, cube_detect, degenerate_warnings, detection_scores,
                           noisy_oracle)
from rga.io import cell_name, choice, save_figure, write_csv, write_json, write_parquet
from rga.models import load_classifier, model_options, model_spec
from rga.plan import require_fit  # before any weight is loaded: refuse a cell that will not fit
from rga.pipeline import ROOT, attack_dir, detect_dir, parse_cell, poisoned_model_dir, stage_runtime
from rga.training import predict_logits

args = parse_cell("Detect poisoned training rows", "model", "dataset", "attack", "seed")
P = args.params_dict
compute = stage_runtime(P)  # threads and oneDNN cap from params.yaml compute:
D = P["detect"]
spec, mspec = dataset_spec(args.dataset, P), model_spec(args.model, P)
cell = cell_name(args.model, args.dataset, args.attack, args.seed)
detector = choice(D.get("detector", "cube"), DETECTORS, "detect.detector")
choice(D.get("rule", "label_relative"), RULES, "detect.rule")
adir = attack_dir(args.dataset, args.attack, args.seed)
train = read_parquet(adir / "train.parquet")
labels, truth = train["label"].to_numpy(), train["is_poisoned"].to_numpy()
stats_path = adir / "stats.json"
ground_truth = (json.loads(stats_path.read_text())["train"].get("ground_truth", "is_poisoned")
                if stats_path.is_file() else "is_poisoned")
if detector in ("oracle", "noisy_oracle") and ground_truth == "none":
    sys.exit(f"detect {cell}: detect.detector {detector} needs the poisoned rows, but dataset {args.dataset!r} "
             "marks none: add an is_poisoned (ground truth) or suspect column (0/1) to its train.csv, or set "
             "detect.detector: cube")
t0 = time.perf_counter()
info = {"cell": cell, "detector": detector, "compute": compute}
z = None
timing = {}
if detector == "oracle":
    flagged, clusters = truth.copy(), np.full(len(train), -1)
    warnings = degenerate_warnings(np.zeros(len(train), int), flagged, 1)
elif detector == "noisy_oracle":
    try:
        flagged = noisy_oracle(truth, float(D.get("precision", 1.0)), float(D.get("recall", 1.0)), args.seed)
    except ValueError as err:
        sys.exit(f"detect {cell}: {err}")
    clusters = np.full(len(train), -1)
    info.update({"target_precision": float(D.get("precision", 1.0)), "target_recall": float(D.get("recall", 1.0))})
    warnings = degenerate_warnings(np.zeros(len(train), int), flagged, 1)
else:
    require_fit(f"detect {cell}", mspec, P, "detect", spec.num_labels)
    model, tok = load_classifier(str(poisoned_model_dir(cell)), spec.num_labels, mspec.kind, **model_options(mspec))
    info["compute"]["precision"] = model.rga_precision
    logits, reps = predict_logits(model, tok, train["text"].tolist(), P["finetune"]["eval_batch_size"],
                             P["finetune"]["max_length"], return_hidden_kind=mspec.kind)
    timing = {"representation_seconds": round(time.perf_counter() - t0, 1)}
    try:
        res = cube_detect(reps, labels, spec.num_labels, seed=args.seed, n_components=D["n_components"],
                          n_neighbors=D["n_neighbors"], min_dist=mspec.min_dist, metric=D["metric"],
                          min_cluster_size=D["min_cluster_size"], min_samples=D["min_samples"],
                          rule=D["rule"], keep_ratio=D.get("keep_ratio", 0.5),
                          predictions=logits.argmax(1) if D.get("fit_filter", True) else None)
    except CubeSizeError as err:
        sys.exit(f"detect {cell}: {err}")
    info["training_accuracy"] = round(float((logits.argmax(1) == labels).mean() * 100), 2)
    flagged, clusters, z, warnings = res.flagged, res.clusters, res.embedding, res.warnings
    ids, sizes = np.unique(clusters, return_counts=True)
    info["cluster_sizes"] = {str(i): int(s) for i, s in zip(ids, sizes)}
    info["n_clusters"] = int((ids >= 0).sum())
info.update(detection_scores(flagged, truth if ground_truth == "is_poisoned" else None))
if ground_truth != "is_poisoned":
    marked = "suspect marks" if ground_truth == "suspect" else "no marks"
    info["note"] = (f"ground truth unknown (train.csv has {marked}), so precision, recall and F1 are not computed"
                    + (f"; {int(truth.sum())} rows are marked suspect" if ground_truth == "suspect" else ""))
info["warning"] = "; ".join(warnings) if warnings else None
for w in warnings:
    print(f"detect {cell}: WARNING: {w}")

out = detect_dir(cell)
table = train.assign(cluster=clusters, flagged=flagged)
write_parquet(table[flagged], out / "forget.parquet")
write_parquet(table[~flagged], out / "retain.parquet")
write_json(info, ROOT / "metrics" / "detect" / f"{cell}.json")
seconds = round(time.perf_counter() - t0, 1)  # printed only: the outputs must not change between identical runs

scatter = pd.DataFrame({
    "umap_1": z[:, 0] if z is not None else np.zeros(len(train)),
    "umap_2": z[:, 1] if z is not None else np.zeros(len(train)),
    "group": (np.where(truth, "poisoned", "clean") if ground_truth == "is_poisoned" else
              np.where(truth, "suspect", "unmarked") if ground_truth == "suspect" else np.full(len(train), "unknown")),
    "flagged": flagged, "cluster": clusters})
write_csv(scatter, ROOT / "plots" / "detect" / f"{cell}.csv")

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6.4, 5))
for grp, color in (("clean", "#4c72b0"), ("poisoned", "#dd3333"), ("unmarked", "#4c72b0"), ("suspect", "#dd8833"),
                   ("unknown", "#888888")):
    m = scatter["group"] == grp
    if grp in ("clean", "poisoned") or m.any():
        ax.scatter(scatter.umap_1[m], scatter.umap_2[m], s=6, c=color, alpha=0.6,
                   label=f"{grp} (true)" if grp in ("clean", "poisoned") else grp)
f = scatter["flagged"].to_numpy()
ax.scatter(scatter.umap_1[f], scatter.umap_2[f], s=28, facecolors="none", edgecolors="black",
           linewidths=0.6, label="flagged as poisoned")
scores = (f"precision {info['precision']:.2f}, recall {info['recall']:.2f}, F1 {info['f1']:.2f}"
          if info["f1"] is not None else f"{info['flagged']} flagged, ground truth unknown")
ax.set_title(f"CUBE on {cell}\n{scores} ({detector})", fontsize=10)
ax.set_xlabel("UMAP dimension 1 (a.u.)")
ax.set_ylabel("UMAP dimension 2 (a.u.)")
ax.legend(loc="best", fontsize=8, markerscale=1.5)
save_figure(fig, ROOT / "plots" / "detect" / f"{cell}.png")
if info["f1"] is None:
    print(f"detect {cell}: flagged {info['flagged']}; {info['note']} in {seconds}s {timing}")
else:
    print(f"detect {cell}: flagged {info['flagged']} (true {info['true_poisoned']}), precision "
          f"{info['precision']:.3f} recall {info['recall']:.3f} F1 {info['f1']:.3f} in {seconds}s {timing}")
