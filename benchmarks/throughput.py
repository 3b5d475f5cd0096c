"""Fine-tuning and inference throughput of MiniLM on SST-2 text, next to a pad-to-128 baseline
measured in the same run. Usage: python benchmarks/throughput.py [--rows 640] [--threads 2]

Prints samples/s for: rga's training loop (dynamic padding, length-grouped batches), a plain
loop padding every batch to 128 tokens, rga's inference (length-sorted batches) and plain
pad-to-128 inference. Not a test: numbers depend on the machine.
"""

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rga.data import read_csv_split
from rga.models import PYPI_MINILM, load_classifier
from rga.training import TrainConfig, predict_logits, train_classifier

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, default=640)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data", default=os.path.join(os.environ.get("RGA_DATA_MIRROR", "../shared/data"), "sst2", "train.csv"))
a = p.parse_args()
torch.set_num_threads(a.threads)
df = read_csv_split(a.data, 2).sample(n=a.rows, random_state=0)
texts, labels = df["text"].tolist(), df["label"].tolist()


def fresh():
    torch.manual_seed(0)
    return load_classifier(PYPI_MINILM, 2, "encoder", device=torch.device("cpu"))


model, tok = fresh()
t0 = time.perf_counter()
train_classifier(model, tok, texts, labels, TrainConfig(epochs=1, lr=1e-4), progress=False)
ours_train = len(texts) / (time.perf_counter() - t0)

model, tok = fresh()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
model.train()
y = torch.tensor(labels)
t0 = time.perf_counter()
for i in range(0, len(texts), 32):
    b = tok(texts[i:i + 32], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    loss = F.cross_entropy(model(**b).logits, y[i:i + 32])
    opt.zero_grad()
    loss.backward()
    opt.step()
base_train = len(texts) / (time.perf_counter() - t0)

model.eval()
t0 = time.perf_counter()
predict_logits(model, tok, texts)
ours_inf = len(texts) / (time.perf_counter() - t0)
t0 = time.perf_counter()
with torch.inference_mode():
    for i in range(0, len(texts), 128):
        model(**tok(texts[i:i + 128], padding="max_length", truncation=True, max_length=128, return_tensors="pt"))
base_inf = len(texts) / (time.perf_counter() - t0)

print(f"threads {a.threads}, {len(texts)} SST-2 training sentences, MiniLM (22.7M params), CPU")
print(f"fine-tuning  rga (dynamic padding, length-grouped): {ours_train:7.1f} samples/s   "
      f"pad-to-128 baseline: {base_train:6.1f} samples/s   ({ours_train / base_train:.1f}x)")
print(f"inference    rga (length-sorted batches):           {ours_inf:7.1f} sentences/s "
      f"pad-to-128 baseline: {base_inf:6.1f} sentences/s ({ours_inf / base_inf:.1f}x)")
