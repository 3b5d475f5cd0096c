"""Peak tensor memory of a few training or unlearning steps of a tiny random model, in a fresh process.

Run by ``tests/test_plan.py`` as ``python tests/memprobe.py '<json>'``; prints one JSON line with
the planner's estimate and the measured peak, both in bytes.

The peak is that of the bytes held by live tensors, read from torch.profiler's memory timeline:
the CPU counterpart of ``torch.cuda.max_memory_allocated``, which ``benchmarks/gpu_check.py``
compares on GPUs. Not the process's peak resident memory (VmHWM): that also counts oneDNN's
packed-weight copies and scratchpads and the C heap's slack, which depend on the machine (measured on the bf16 + checkpointing Llama step: VmHWM 43-62 MB across
oneDNN instruction sets and hosts, tensor peak 38.1 MB on all of them).
"""

import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch


def warm_up(cfg) -> None:
    """One small training step (batch 2 x 8 tokens) on a throwaway model of the same kind, so that
    lazily built library state is not counted as the model's."""
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from rga.training import make_optimizer

    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").train()
    opt = make_optimizer(model, 1e-3)
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = F.cross_entropy(model(input_ids=torch.full((2, 8), 5)).logits.float(), torch.zeros(2, dtype=torch.long))
        loss.backward()
        opt.step()
    del model, opt


def tensor_peak(prof) -> int:
    """Peak bytes of live CPU tensors over a ``torch.profiler.profile(profile_memory=True,
    record_shapes=True, with_stack=True)`` run: the maximum over time of the timeline's
    per-category sizes summed (parameters, gradients, optimizer state, activations, temporaries...)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"  # [times, sizes per category] (a .raw.json.gz name gives raw events)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of a CUDA-only API
            prof.export_memory_timeline(str(path), device="cpu")
        times, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes)


def steps(spec: dict, s, cfg, lora) -> list[float]:
    """Build the model as the stages do and run ``spec['steps']`` optimizer steps; returns the losses."""
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from rga.models import add_adapters, autocast, enable_checkpointing, set_precision
    from rga.training import clip_gradients, make_optimizer
    from rga.unlearning import backbone_pairs
    from rga.methods.rga import param_distance

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    if spec["precision"] == "bf16":
        model = model.to(torch.bfloat16)
    if lora is not None:
        model = add_adapters(model, None, lora)
    if s.gradient_checkpointing:
        enable_checkpointing(model)
    set_precision(model, spec["precision"])
    model.train()
    if lora is not None:
        base_state = model.rga_adapter_init
    else:
        base_state = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith(("score", "classifier"))}
    params, ref = backbone_pairs(model, base_state) if s.task == "unlearn" else ([], [])
    opt = make_optimizer(model, 1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, cfg.vocab_size, (s.batch_size, s.max_length), generator=g)
    mask = torch.ones_like(x)
    mask[-1, -1] = 0  # one padded position: real batches are padded, and the additive mask's dtype decides the scores'
    y = torch.randint(0, 2, (s.batch_size,), generator=g)
    losses = []
    for _ in range(spec.get("steps", 3)):
        with autocast(model):
            f = model(input_ids=x, attention_mask=mask).logits.float()
            r = model(input_ids=x.flip(0), attention_mask=mask).logits.float() if s.task == "unlearn" else None
        loss = F.cross_entropy(f, y)
        if r is not None:
            loss = F.cross_entropy(r, y) - 0.1 * loss + 0.05 * param_distance(params, ref)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def main(spec: dict) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoConfig

    from rga.models import LoraSpec
    from rga.plan import Settings, estimate, model_shape

    torch.set_num_threads(1)
    cfg = AutoConfig.for_model(**spec["config"])
    lora = LoraSpec(**spec["lora"]) if spec.get("lora") else None
    s = Settings(precision=spec["precision"], lora=lora, gradient_checkpointing=spec.get("checkpointing", False),
                 batch_size=spec["batch"], max_length=spec["length"], task=spec["task"], needs_base=True)
    est = estimate(model_shape(cfg, 2, lora), s)
    warm_up(cfg)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        losses = steps(spec, s, cfg, lora)
    return {"estimate": est.total, "parts": est.parts, "measured": tensor_peak(prof), "losses": losses}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
