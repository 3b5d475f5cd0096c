"""Where one steady-state RGA unlearning epoch spends its time: torch's profiler over one epoch
(100 BadNets-style forget rows of SST-2, as in ``benchmarks/throughput.py``) after three warm-up
epochs, top operators by self CPU time. Shows the next bottleneck to whoever comes next.

Usage: python benchmarks/profile_unlearn.py [--rows 30]
       RGA_MALLOC_TUNING=0 python benchmarks/profile_unlearn.py   # with glibc's default allocator

Not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from rga.pipeline import tune_cpu_allocator

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, default=30, help="operators to list")
p.add_argument("--data", default=os.path.join(os.environ.get("RGA_DATA_MIRROR", "../shared/data"), "sst2", "train.csv"))
a = p.parse_args()
tuned = tune_cpu_allocator()

from rga.data import read_csv_split  # noqa: E402
from rga.models import PYPI_MINILM, load_classifier, resolve_path  # noqa: E402
from rga.training import predict_logits  # noqa: E402
from rga.unlearning import UnlearnConfig, unlearn  # noqa: E402

df = read_csv_split(a.data, 2).sample(n=2640, random_state=0)  # the rows throughput.py uses
forget = [t.replace(" ", " mn ", 1) for t in df[df["label"] == 0]["text"].tolist()[:100]]
retain, yr = df["text"].tolist()[640:], df["label"].tolist()[640:]
torch.manual_seed(0)
model, tok = load_classifier(PYPI_MINILM, 2, "encoder", device=torch.device("cpu"))
ref = predict_logits(model, tok, forget)
b, _, missing = load_classifier(resolve_path(PYPI_MINILM), 2, "encoder", device=torch.device("cpu"),
                                with_loading_info=True)
base_state = {n: q.detach().clone() for n, q in b.named_parameters() if n not in missing}


def run(epochs: int) -> None:
    cfg = UnlearnConfig(epochs=epochs, lr=1e-4, batch_size=32, max_length=128, eval_every=100, record_epochs=())
    unlearn(model, tok, forget, [1] * len(forget), retain, yr, "rga", cfg, {"alpha": 2.0, "beta": 0.05}, ref,
            base_state, progress=False)


run(3)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    run(1)
print(f"one RGA unlearning epoch, {len(forget)} forget rows, {torch.get_num_threads()} threads, allocator tuning "
      f"{'applied' if tuned else 'NOT applied'}")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=40))
