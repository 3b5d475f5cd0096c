"""Which factor decides CUBE on SST-2 HiddenKiller? Detection F1 of a poisoned model's training set
under each representation / UMAP / HDBSCAN / filter setting, plus supervised probe AUCs.

Usage (from the repository root, after `dvc repro` has built the cell):
    python experiments/hiddenkiller-detection/sweep.py --cell minilm-sst2-hiddenkiller-0
    python experiments/hiddenkiller-detection/sweep.py --cell minilm-sst2-hiddenkiller-0 \
        --model /tmp/other-poisoned-model --attack-dir /tmp/other-attack-dir   # a variant model

Prints one markdown table row per setting: F1, precision, recall, flagged rows.
"""

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from rga.data import read_parquet
from rga.detection import (apply_fit_filter, cluster_hdbscan, detection_scores, filter_clusters, reduce_umap,
                           resolve_size)
from rga.models import autocast, load_classifier
from rga.training import collate, tokenize_once

p = argparse.ArgumentParser()
p.add_argument("--cell", required=True)
p.add_argument("--model", help="poisoned model folder (default models/poisoned/<cell>)")
p.add_argument("--attack-dir", help="attack outputs (default data/attacks/<dataset>-<attack>-<seed>)")
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
seed = int(a.cell.rsplit("-", 1)[1])
train = read_parquet(f"{a.attack_dir or 'data/attacks/' + a.cell.split('-', 1)[1]}/train.parquet")
model, tok = load_classifier(a.model or f"models/poisoned/{a.cell}", 2, "encoder", precision="auto")
model.eval()
texts, labels, truth = train["text"].tolist(), train["label"].to_numpy(), train["is_poisoned"].to_numpy().astype(bool)
tokens = tokenize_once(tok, texts, 128)
order = np.argsort(-tokens.lengths, kind="stable")
n_layers, width = model.config.num_hidden_layers, model.config.hidden_size
reps = {f"{kind}{layer}": np.zeros((len(texts), width), np.float32)
        for kind in ("cls", "mean") for layer in range(n_layers + 1)}
pred = np.zeros(len(texts), int)
with torch.no_grad():
    for s in range(0, len(texts), 128):
        idx = order[s:s + 128]
        batch = collate(tok, tokens.rows(idx), torch.device("cpu"))
        with autocast(model):
            out = model(**batch, output_hidden_states=True)
        pred[idx] = out.logits.float().argmax(1).numpy()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        for layer, h in enumerate(out.hidden_states):
            h = h.float()
            reps[f"cls{layer}"][idx] = h[:, 0].numpy()
            reps[f"mean{layer}"][idx] = ((h * mask).sum(1) / mask.sum(1)).numpy()
last = f"cls{n_layers}"
print(f"{a.cell}: training accuracy {100 * (pred == labels).mean():.1f}%, {truth.sum()} poisoned of {len(texts)}")

SETTINGS = [  # name, representation, n_neighbors, min_cluster_size, min_samples, rule, fit filter
    ("paper CUBE: last-layer [CLS], rule largest", last, 100, 0.022, 0.017, "largest", False),
    ("default: last-layer [CLS], label_relative + fit filter", last, 100, 0.022, 0.017, "label_relative", True),
    ("default without the fit filter", last, 100, 0.022, 0.017, "label_relative", False),
    ("last-layer mean pooling", f"mean{n_layers}", 100, 0.022, 0.017, "label_relative", True),
    ("layer 3 [CLS]", "cls3", 100, 0.022, 0.017, "label_relative", True),
    ("layer 3 mean pooling", "mean3", 100, 0.022, 0.017, "label_relative", True),
    ("layer 3 mean pooling, n_neighbors 15", "mean3", 15, 0.022, 0.017, "label_relative", True),
    ("last-layer [CLS], n_neighbors 15", last, 15, 0.022, 0.017, "label_relative", True),
    ("last-layer [CLS], HDBSCAN 1% / 1%", last, 100, 0.01, 0.01, "label_relative", True),
    ("last-layer [CLS], HDBSCAN 4% / 3%", last, 100, 0.04, 0.03, "label_relative", True),
]
print("| Setting | F1 | Precision | Recall | Flagged |\n|---|---:|---:|---:|---:|")
embedded = {}
for name, rep, nn, mcs, ms, rule, ff in SETTINGS:
    if (rep, nn) not in embedded:
        embedded[rep, nn] = reduce_umap(reps[rep], 4, nn, 0.25, "cosine", seed)
    clusters = cluster_hdbscan(embedded[rep, nn], resolve_size(mcs, len(texts), "mcs"), resolve_size(ms, len(texts), "ms"))
    flagged = filter_clusters(clusters, labels, 2, rule, 0.5)
    if ff:
        flagged = apply_fit_filter(flagged, pred, labels)
    sc = detection_scores(flagged, truth)
    print(f"| {name} | {sc['f1']:.2f} | {sc['precision']:.2f} | {sc['recall']:.2f} | {sc['flagged']} |", flush=True)

# supervised upper bound: can a linear probe tell poisoned from clean rows of the target label at all?
target = labels == labels[truth][0]
for rep in (last, f"mean{n_layers}", "mean3"):
    x = reps[rep][target]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    auc = cross_val_score(LogisticRegression(max_iter=2000), x, truth[target], cv=5, scoring="roc_auc").mean()
    print(f"supervised probe AUC (poisoned vs clean rows labelled {labels[truth][0]}), {rep}: {auc:.3f}")
