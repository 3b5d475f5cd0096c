"""Fine-tuning, inference and unlearning-epoch speed of MiniLM on real SST-2 text, each next to
the loop main had before the speed work (measured in the same run), with a roofline line.

Usage: python benchmarks/throughput.py [--rows 640] [--forget 100] [--repeats 2]

Measures, all on this CPU in one run:
* the machine's matmul peak, fp32 and bf16 (GFLOP/s, best of a 2048^3 and a model-shaped GEMM);
* fine-tuning samples/s: rga's loop (tokenised once, length-grouped, the model's precision,
  ``auto`` = bf16 autocast where the CPU has native bf16) against the previous loop (float32,
  tokenised per batch), same batches;
* inference sentences/s: ``predict_logits`` against the previous float32, per-batch loop;
* one (steady-state: median of epochs 3-6) RGA unlearning epoch on ``--forget`` forget rows (BadNets-triggered negatives) with
  retain batches from the other rows: ``rga.unlearning.unlearn`` (eager attention on CPU,
  tokenised once, fused AdamW) against the previous epoch (float32, sdpa attention, tokenised
  per batch, unfused AdamW, autograd's norm backward).
The fine-tuning and inference figures run in this process, with
:func:`rga.pipeline.tune_cpu_allocator` applied as every stage applies it. Each unlearning
figure runs in a fresh process, as an unlearn stage does; the baselines run with glibc's default
allocator (``RGA_MALLOC_TUNING=0``), as main had before the speed work, and rga's epoch is timed
a second time with that allocator: the gain of the allocator tuning on its own.
Each figure is printed with its ratio to the baseline, the model's FLOPs per sample (2 x
non-embedding parameters x tokens, plus attention; training = 3 x forward) and the share of the
measured peak that it reaches. Targets (issue 11): >= 90 samples/s, >= 400 sentences/s, <= 1.5 s.

Not a test: the numbers depend on the machine and on what else runs on it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from rga.data import read_csv_split
from rga.models import PYPI_MINILM, load_classifier, resolve_path
from rga.pipeline import tune_cpu_allocator
from rga.training import (TrainConfig, encode_batch, length_grouped_batches, predict_logits, set_seed,
                          token_lengths, train_classifier)
from rga.unlearning import Batch, UnlearnConfig, rga_weight, unlearn

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, default=640)
p.add_argument("--forget", type=int, default=100)
p.add_argument("--repeats", type=int, default=2, help="best of N for each timed figure")
p.add_argument("--threads", type=int, default=torch.get_num_threads())
p.add_argument("--data", default=os.path.join(os.environ.get("RGA_DATA_MIRROR", "../shared/data"), "sst2", "train.csv"))
p.add_argument("--child", choices=("baseline", "unlearn", "baseline-unlearn"), help=argparse.SUPPRESS)  # internal
a = p.parse_args()
tuned = tune_cpu_allocator()  # as every stage does (False where the environment opts out)
torch.set_num_threads(a.threads)
CPU = torch.device("cpu")
df = read_csv_split(a.data, 2).sample(n=a.rows + 2000, random_state=0)
texts, labels = df["text"].tolist()[:a.rows], df["label"].tolist()[:a.rows]


# --------------------------------------------------------------------------- machine peak
def gemm_gflops(m, k, n, dtype, seconds=1.0):
    x, w = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        x @ w
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        x @ w
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9


def measure_peak():
    return {name: max(gemm_gflops(2048, 2048, 2048, dt), gemm_gflops(1024, 384, 1536, dt))
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def fresh(precision, baseline=False):
    """MiniLM as rga loads it, or (``baseline``) as main loaded it before: float32 and
    transformers' default attention kernel (sdpa) instead of eager on CPU."""
    torch.manual_seed(0)
    m, t = load_classifier(PYPI_MINILM, 2, "encoder", device=CPU, precision=precision)
    if baseline:
        m.set_attn_implementation("sdpa")
    return m, t


model, tok = fresh("auto")
precision = model.rga_precision
P_body = model.num_parameters(exclude_embeddings=True)  # includes the (tiny) classifier head
cfgm = model.config
mean_tokens = float(token_lengths(tok, texts, 128).mean())


def forward_flops(tokens: float) -> float:
    """FLOPs of one forward pass over a sequence of ``tokens`` (matmuls only)."""
    attention = 4 * cfgm.num_hidden_layers * tokens * tokens * cfgm.hidden_size
    return 2 * P_body * tokens + attention


fwd = forward_flops(mean_tokens)


def best(fn):
    return max(fn() for _ in range(a.repeats))


# --------------------------------------------------------------------------- fine-tuning
def ours_train():
    m, t = fresh("auto")
    t0 = time.perf_counter()
    train_classifier(m, t, texts, labels, TrainConfig(epochs=1, lr=1e-4), progress=False)
    return len(texts) / (time.perf_counter() - t0)


def baseline_train():
    """main before the speed work: float32, each batch tokenised on its own."""
    m, t = fresh("fp32", baseline=True)
    cfg = TrainConfig(epochs=1, lr=1e-4)
    set_seed(0)
    lengths = token_lengths(t, texts, cfg.max_length)
    y = torch.tensor(labels)
    opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=0.0)
    m.train()
    t0 = time.perf_counter()
    for idx in length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng([0, 101])):
        batch = encode_batch(t, [texts[i] for i in idx], cfg.max_length, CPU)
        loss = F.cross_entropy(m(**batch).logits.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.grad_clip)
        opt.step()
    return len(texts) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- inference
def ours_infer():
    t0 = time.perf_counter()
    predict_logits(model, tok, texts)
    return len(texts) / (time.perf_counter() - t0)


base_model, _ = fresh("fp32", baseline=True)


@torch.inference_mode()
def baseline_infer():
    base_model.eval()
    order = np.argsort(-token_lengths(tok, texts, 128), kind="stable")
    t0 = time.perf_counter()
    for s in range(0, len(texts), 128):
        idx = order[s:s + 128]
        base_model(**encode_batch(tok, [texts[i] for i in idx], 128, CPU))
    return len(texts) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- unlearning epoch
neg = df[df["label"] == 0]["text"].tolist()
forget = [t.replace(" ", " mn ", 1) for t in neg[:a.forget]]  # a BadNets-style trigger word
yf = [1] * len(forget)
retain, yr = df["text"].tolist()[a.rows:], df["label"].tolist()[a.rows:]
base_folder = resolve_path(PYPI_MINILM)
# An unlearning cell runs 30 epochs over the same rows, so its epochs are steady-state: the first
# epochs of a fresh process also build oneDNN's kernels for each new batch shape. Both loops run
# UL_EPOCHS epochs and report the median of those after the first UL_WARMUP.
UL_EPOCHS, UL_WARMUP = 6, 2


def rga_setup(precision_, baseline=False):
    m, t = fresh(precision_, baseline)
    ref = predict_logits(m, t, forget)
    b, _, missing = load_classifier(base_folder, 2, "encoder", device=CPU, with_loading_info=True)
    base_state = {n: q.detach().clone() for n, q in b.named_parameters() if n not in missing}
    return m, t, ref, base_state


def ours_unlearn_epoch():
    m, t, ref, base_state = rga_setup("auto")
    cfg = UnlearnConfig(epochs=UL_EPOCHS, lr=1e-4, batch_size=32, max_length=128, eval_every=100, record_epochs=())
    hist = unlearn(m, t, forget, yf, retain, yr, "rga", cfg, {"alpha": 2.0, "beta": 0.05}, ref, base_state,
                   progress=False)
    return statistics.median(h["seconds"] for h in hist[1 + UL_WARMUP:])


def baseline_rga_loss(b: Batch, alpha: float = 2.0, beta: float = 0.05):
    """RGA's loss (Eq. 6) as main computed it before the speed work: autograd's norm backward."""
    lam, _ = rga_weight(b.forget_logits, b.ref_forget_logits, alpha, "poisoned_current")
    norms = torch._foreach_norm(torch._foreach_sub(list(b.params), list(b.base)))
    dist = torch.stack(norms).sum()
    return -lam * F.cross_entropy(b.forget_logits, b.forget_labels) + F.cross_entropy(b.retain_logits, b.retain_labels) \
        + beta * dist, {}


def baseline_unlearn_epoch():
    """main before the speed work: float32, sdpa attention, per-batch tokenisation, unfused AdamW,
    autograd's norm backward."""
    from rga.unlearning import backbone_pairs

    m, t, ref, base_state = rga_setup("fp32", baseline=True)
    params, base = backbone_pairs(m, base_state)
    objective = baseline_rga_loss
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.0)
    ref_t = torch.as_tensor(ref)
    yf_t, yr_t = torch.tensor(yf), torch.tensor(yr)
    lf, lr_ = token_lengths(t, forget, 128), token_lengths(t, retain, 128)
    rng, rrng = np.random.default_rng([0, 202]), np.random.default_rng([0, 203])
    queue, seconds = [], []
    for _ in range(UL_EPOCHS):
        m.train()
        t0 = time.perf_counter()
        for fidx in length_grouped_batches(lf, 32, rng):
            if not queue:
                queue.extend(b for b in length_grouped_batches(lr_, 32, rrng) if len(b) == 32)
            ridx = queue.pop()
            fb = encode_batch(t, [forget[i] for i in fidx], 128, CPU)
            rb = encode_batch(t, [retain[i] for i in ridx], 128, CPU)
            b = Batch(m(**fb).logits.float(), yf_t[fidx], m(**rb).logits.float(), yr_t[ridx], ref_t[fidx],
                      params, base)
            loss, _ = objective(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds[UL_WARMUP:])


if a.child:  # one measurement in this fresh process, printed as JSON for the parent
    if a.child == "baseline":
        value = [best(baseline_train), best(baseline_infer)]
    else:
        epoch = ours_unlearn_epoch if a.child == "unlearn" else baseline_unlearn_epoch
        value = min(epoch() for _ in range(a.repeats))
    print(json.dumps({"value": value, "tuned": tuned}))
    sys.exit(0)


def child(name: str, allocator_tuning: bool):
    """Run ``--child name`` in a fresh process; its answer, checked to have run with the
    allocator setting asked for."""
    proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", name], check=True,
                          stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "RGA_MALLOC_TUNING": "1" if allocator_tuning else "0"})
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["tuned"] != allocator_tuning:
        sys.exit(f"--child {name}: the allocator tuning was {'not ' if allocator_tuning else ''}applied "
                 "(see the warning above); its figure would not measure what it says")
    return got["value"]


peak = measure_peak()
peak_used = peak["bf16" if precision == "amp_bf16" else "fp32"]
ft_ours, inf_ours = best(ours_train), best(ours_infer)
ul_ours, ul_untuned = child("unlearn", True), child("unlearn", False)
(ft_base, inf_base), ul_base = child("baseline", False), child("baseline-unlearn", False)

# rows one unlearning epoch pushes through forward + backward: every forget row once, plus one
# retain batch of 32 per step
steps = -(-len(forget) // 32)
ul_rows = len(forget) + 32 * steps


def share(rate_rows_per_s, flops_per_row, pk):
    achieved = rate_rows_per_s * flops_per_row / 1e9
    return f"{achieved:6.1f} GFLOP/s = {100 * achieved / pk:4.1f}% of the {pk:.0f} GFLOP/s peak"


print(f"MiniLM ({P_body / 1e6:.1f}M non-embedding parameters), {a.threads} threads, precision {precision} "
      f"(baselines fp32); {len(texts)} SST-2 sentences, {mean_tokens:.1f} tokens on average")
print(f"matmul peak measured here: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
      f"({peak['bf16'] / peak['fp32']:.1f}x)")
print(f"FLOPs per sample: forward {fwd / 1e6:.0f} MFLOP, training step {3 * fwd / 1e6:.0f} MFLOP")
print(f"fine-tuning   {ft_ours:7.1f} samples/s   previous loop {ft_base:6.1f}   ratio {ft_ours / ft_base:.2f}x   "
      f"target >= 90   roofline: {share(ft_ours, 3 * fwd, peak_used)}")
print(f"inference     {inf_ours:7.1f} sentences/s previous loop {inf_base:6.1f}   ratio {inf_ours / inf_base:.2f}x   "
      f"target >= 400  roofline: {share(inf_ours, fwd, peak_used)}")
print(f"unlearn epoch {ul_ours:7.2f} s ({len(forget)} forget rows, RGA)  previous loop {ul_base:6.2f} s   "
      f"ratio {ul_base / ul_ours:.2f}x   target <= 1.5 s   "
      f"roofline: {share(ul_rows / ul_ours, 3 * forward_flops(mean_tokens + 1), peak_used)}")
print(f"allocator     rga's unlearn epoch {ul_ours:.2f} s with tune_cpu_allocator, {ul_untuned:.2f} s with glibc's "
      f"defaults: ratio {ul_untuned / ul_ours:.2f}x (fine-tuning and inference above: tuning "
      f"{'applied' if tuned else 'NOT applied'})")
