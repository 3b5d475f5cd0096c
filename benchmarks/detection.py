"""Time CUBE detection on N SST-2 training rows with MiniLM: representation extraction, UMAP,
HDBSCAN. Usage: python benchmarks/detection.py [--rows 7000] [--model PATH]

The model defaults to the base MiniLM (detection cost does not depend on the weights); pass a
poisoned model folder (models/poisoned/<cell>) to time it on that.
"""

import argparse
import os
import time

import torch

from rga.data import read_csv_split
from rga.detection import cluster_hdbscan, filter_clusters, reduce_umap, resolve_size
from rga.models import PYPI_MINILM, load_classifier
from rga.training import predict_logits

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, default=7000)
p.add_argument("--model", default=PYPI_MINILM)
p.add_argument("--data", default=os.path.join(os.environ.get("RGA_DATA_MIRROR", "../shared/data"), "sst2", "train.csv"))
a = p.parse_args()
df = read_csv_split(a.data, 2)
df = df.sample(n=min(a.rows, len(df)), random_state=0) if a.rows <= len(df) else df
model, tok = load_classifier(a.model, 2, "encoder", device=torch.device("cpu"))
t0 = time.perf_counter()
logits, reps = predict_logits(model, tok, df["text"].tolist(), return_hidden_kind="encoder")
t1 = time.perf_counter()
z = reduce_umap(reps, 4, 100, 0.25, "cosine", 0)
t2 = time.perf_counter()
clusters = cluster_hdbscan(z, resolve_size(0.05, len(df), "mcs"), resolve_size(0.04, len(df), "ms"))
flagged = filter_clusters(clusters, df["label"].to_numpy(), 2)
t3 = time.perf_counter()
print(f"CUBE on {len(df)} rows ({torch.get_num_threads()} torch threads): representations {t1 - t0:.1f}s, "
      f"UMAP {t2 - t1:.1f}s, HDBSCAN+filter {t3 - t2:.1f}s, total {t3 - t0:.1f}s "
      f"({len(set(clusters) - {-1})} clusters, {int(flagged.sum())} flagged)")
