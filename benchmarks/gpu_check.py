"""GPU check (about 5 minutes on one H200; no downloads: random weights from configs).

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --smoke    # the same code on tiny models on the CPU (tests the script)

1. BERT-base (``BertConfig()``, 110 M parameters): fine-tuning and RGA unlearning throughput in
   samples/s at batch 32 x 128 tokens, at ``amp_bf16`` and at ``bf16``. An unlearning sample is
   one forget row (each step also runs a retain batch of the same size).
2. A Llama-2-7B-shaped classifier (``LlamaConfig()``, 6.6 B parameters) in ``bf16``: peak CUDA
   memory of one RGA unlearning step at batch 32 x 128 tokens (forget and retain batch, θ_base
   copy, AdamW), with and without gradient checkpointing, against :mod:`rga.plan`'s estimate.

Prints one markdown table per part (the README's "Large models" section quotes them).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rga.methods.rga import param_distance
from rga.models import autocast, enable_checkpointing, set_precision
from rga.plan import GiB, Settings, estimate, gib, model_shape
from rga.training import clip_gradients, make_optimizer
from rga.unlearning import rga_weight


def build(config, precision: str, device: torch.device):
    """A random sequence classifier from ``config`` on ``device`` (bf16 weights for ``bf16``)."""
    from transformers import AutoModelForSequenceClassification

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    set_precision(model, precision)
    return model.train()


def batches(config, batch: int, length: int, device: torch.device, n: int):
    """``n`` random full-length batches (input ids, labels) on ``device``."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(5, config.vocab_size, (batch, length), generator=g).to(device),
             torch.randint(0, 2, (batch,), generator=g).to(device)) for _ in range(n)]


def finetune_step(model, opt, x, y):
    with autocast(model):
        logits = model(input_ids=x).logits.float()
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip_gradients(model, 1.0)
    opt.step()
    return loss


def rga_step(model, opt, forget, retain, ref, params, base, alpha=2.0, beta=0.05):
    """One RGA step as :func:`rga.unlearning.unlearn` runs it (Eq. 6-7)."""
    (xf, yf), (xr, yr) = forget, retain
    with autocast(model):
        f, r = model(input_ids=xf).logits.float(), model(input_ids=xr).logits.float()
    lam, _ = rga_weight(f, ref, alpha)
    loss = -lam * F.cross_entropy(f, yf) + F.cross_entropy(r, yr) + beta * param_distance(params, base)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip_gradients(model, 1.0)
    opt.step()
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(config, precision, device, batch, length, steps, warmup=3):
    """(fine-tune, unlearn) samples/s of ``config`` at ``precision``."""
    model = build(config, precision, device)
    data = batches(config, batch, length, device, 2)
    opt = make_optimizer(model, 2e-5)
    out = []
    for kind in ("finetune", "unlearn"):
        named = [(n, p) for n, p in model.named_parameters() if not n.startswith("classifier")]
        params, base = [p for _, p in named], [p.detach().clone() for _, p in named]
        ref = torch.zeros(batch, config.num_labels, device=device)
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                t0 = time.perf_counter()
            if kind == "finetune":
                finetune_step(model, opt, *data[0])
            else:
                rga_step(model, opt, data[0], data[1], ref, params, base)
        sync(device)
        out.append(batch * steps / (time.perf_counter() - t0))
        del params, base
    return out


def peak_rga_step(config, device, batch, length, checkpointing: bool):
    """(measured peak bytes, planner estimate) of one bf16 RGA unlearning step of ``config``."""
    shape = model_shape(config, config.num_labels)
    est = estimate(shape, Settings("bf16", gradient_checkpointing=checkpointing, batch_size=batch, max_length=length,
                                   task="unlearn", eager_attention=device.type == "cpu"))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    model = build(config, "bf16", device)
    if checkpointing:
        enable_checkpointing(model)
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("score")]
    params, base = [p for _, p in named], [p.detach().clone() for _, p in named]
    opt = make_optimizer(model, 5e-6)
    data = batches(config, batch, length, device, 2)
    ref = torch.zeros(batch, config.num_labels, device=device)
    try:
        for _ in range(2):  # the second step has the AdamW moments already allocated
            rga_step(model, opt, data[0], data[1], ref, params, base)
        sync(device)
        peak = torch.cuda.max_memory_allocated() - before if cuda else None
    except torch.OutOfMemoryError:
        peak = -1
    del model, opt, params, base
    if cuda:
        torch.cuda.empty_cache()
    return peak, est.total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, measures nothing")
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    from transformers import BertConfig, LlamaConfig

    t_start = time.perf_counter()
    if a.smoke:
        device, batch, length, steps = torch.device("cpu"), 4, 16, 2
        bert = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=2)
        llama = LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA GPU visible; run it on a GPU machine (or --smoke to test the script)")
        device, batch, length, steps = torch.device("cuda"), 32, 128, a.steps
        bert = BertConfig(num_labels=2)
        llama = LlamaConfig(num_labels=2, pad_token_id=0)
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke)"
    print(f"## gpu_check on {name}, torch {torch.__version__}\n")
    print(f"BERT-base, batch {batch} x {length} tokens, {steps} timed steps after 3 warm-up steps\n")
    print("| precision | fine-tuning samples/s | RGA unlearning samples/s (forget rows) |\n|---|---:|---:|")
    for precision in ("amp_bf16", "bf16"):
        ft, ul = throughput(bert, precision, device, batch, length, steps)
        print(f"| {precision} | {ft:.1f} | {ul:.1f} |")
    print(f"\nLlama-2-7B-shaped classifier in bf16, one RGA unlearning step, batch {batch} x {length} tokens "
          "(forget + retain), θ_base copy, AdamW\n")
    print("| gradient checkpointing | measured peak (max_memory_allocated) | planner estimate | measured / estimate |"
          "\n|---|---:|---:|---:|")
    for ckpt in (True, False):
        peak, est = peak_rga_step(llama, device, batch, length, ckpt)
        shown = "not measured (CPU smoke)" if peak is None else "out of memory" if peak < 0 else f"{peak / GiB:.1f} GiB"
        ratio = f"{peak / est:.2f}" if peak and peak > 0 else "-"
        print(f"| {'on' if ckpt else 'off'} | {shown} | {gib(est)} | {ratio} |")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
