"""Time of RGA's norm term per training step (forward + backward of β·Σ_i ‖θ_i − θ_base,i‖₂ over
MiniLM's backbone tensors): rga's ``tensor_norms`` (in-place backward) against autograd's own
norm backward, measured side by side in the same process, with and without
:func:`rga.pipeline.tune_cpu_allocator` (the second in a fresh child process, ``RGA_MALLOC_TUNING=0``).

Each step starts from zero gradients already in place, as after the CE terms' backward, so the
norm gradient is accumulated into them as in a real step. Median of ``--steps`` steps.

Usage: python benchmarks/norm_term.py [--steps 12]

Not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from rga.pipeline import tune_cpu_allocator

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=12)
p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal
a = p.parse_args()
tuned = tune_cpu_allocator()

from rga.methods.rga import tensor_norms  # noqa: E402
from rga.models import PYPI_MINILM, load_classifier  # noqa: E402

model, _ = load_classifier(PYPI_MINILM, 2, "encoder", device=torch.device("cpu"))
params = [q for n, q in model.named_parameters() if not n.startswith("classifier")]
base = [q.detach().clone() for q in params]
with torch.no_grad():
    for q in params:
        q.add_(torch.randn_like(q) * 1e-3)


def autograd_norms(params, base):
    """The term as main computed it before: autograd's ``_foreach_norm`` backward."""
    return torch.stack([n.float() for n in torch._foreach_norm(torch._foreach_sub(list(params), list(base)))])


def step_ms(norm_fn) -> float:
    for q in params:
        q.grad = torch.zeros_like(q)
    t0 = time.perf_counter()
    (0.05 * norm_fn(params, base).sum()).backward()
    return 1000 * (time.perf_counter() - t0)


times = {"rga": [], "autograd": []}
for _ in range(a.steps):  # interleaved, so that drift hits both alike
    times["autograd"].append(step_ms(autograd_norms))
    times["rga"].append(step_ms(tensor_norms))
ms = {k: statistics.median(v) for k, v in times.items()}
if a.child:
    print(json.dumps(ms))
    sys.exit(0)
out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child"], check=True, stdout=subprocess.PIPE,
                     text=True, env={**os.environ, "RGA_MALLOC_TUNING": "0"}).stdout
plain = json.loads(out.strip().splitlines()[-1])
n = sum(q.numel() for q in params)
print(f"RGA norm term over {len(params)} tensors, {n / 1e6:.1f} M parameters, {torch.get_num_threads()} threads, "
      f"ms per step (median of {a.steps})")
print(f"allocator tuned ({'applied' if tuned else 'NOT applied'}): rga {ms['rga']:5.1f}  autograd {ms['autograd']:5.1f}  "
      f"ratio {ms['autograd'] / ms['rga']:.2f}x")
print(f"glibc defaults:   rga {plain['rga']:5.1f}  autograd {plain['autograd']:5.1f}  "
      f"ratio {plain['autograd'] / plain['rga']:.2f}x")
