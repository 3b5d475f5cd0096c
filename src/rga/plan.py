"""Memory planner: will a model stage fit, and what to change when it will not.

``python -m rga.plan <model> [--task unlearn] [--gpus 4 --gpu-memory 48GB]`` prints the estimate
for a registry entry (``models.<name>`` in params.yaml) without loading any weight; every model
stage calls :func:`check_stage` before it loads weights and stops with one message when the cell
does not fit.

The estimate (bytes) is the sum of

* **weights**: parameters × 4 (``fp32``, ``amp_bf16``) or 2 (``bf16``); with LoRA the frozen base
  at that size plus the float32 adapters and the float32 trainable copy of the head;
* **gradients** and **optimizer** (AdamW, two moments) of the trainable parameters, at their
  dtype (float32, or bf16 for full ``bf16`` training);
* **autocast cache**: ``amp_bf16`` full training keeps a bf16 copy of each trainable weight for
  the autocast region of a step (2 bytes per parameter);
* **reference**: RGA's θ_base copy on the device (the backbone at the weight dtype; the adapter
  starting values with LoRA). NPO, RGA and DGA also keep the poisoned model's logits on the
  forget set, N_forget × classes × 4 bytes in host memory, never a second model;
* **activations**: per layer and token ``c_h·hidden + c_i·intermediate`` stored elements times
  bytes per element (4 fp32, 3.2 amp_bf16, 2.5 bf16: norms stay float32), plus
  ``heads·length`` attention-score elements at :func:`attention_bytes` each for eager attention,
  times batch × length × layers; the unlearning step holds two batches (forget and retain) at
  once. With gradient checkpointing each layer keeps only its input, and one layer's
  activations (plus half a layer of backward temporaries) are rebuilt at a time;
* **workspace**: 1 GiB per GPU for the CUDA context and cuBLAS workspace (checked in
  :func:`fits`). The backward pass's temporaries need no term of their own: they are about as
  large as the activations it frees on the way (measured, ``tests/test_plan.py``).

The coefficients were counted with autograd's saved-tensor hooks on tiny BERT and Llama models
(``c_h`` 12; ``c_i`` 2 for BERT's GELU MLP, 4 for the gated SiLU MLP of Llama and Qwen3) and are
checked against measured peaks in ``tests/test_plan.py`` (CPU: the peak bytes of live tensors in
torch.profiler's memory timeline, the counterpart of ``torch.cuda.max_memory_allocated``; the
process's resident memory also counts oneDNN's packed weights and the C heap's slack, which
differ between hosts) and ``benchmarks/gpu_check.py`` (GPU, ``max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace

import torch

GiB = 1024 ** 3
HEADROOM = 0.9          # a cell fits when its estimate is at most this share of the free memory
CUDA_WORKSPACE = GiB    # per GPU: CUDA context, cuBLAS workspace, allocator slack
TASKS = ("finetune", "unlearn", "detect", "evaluate")
ACT_BYTES = {"fp32": 4.0, "amp_bf16": 3.2, "bf16": 2.5}

# Architecture numbers of the paper's models, for planning without their config.json (the hub is
# often unreachable where the plan is made). A local folder or the Hugging Face cache wins.
KNOWN_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                                 "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                                 "num_key_value_heads": 32, "max_position_embeddings": 4096},
    "Qwen/Qwen3-8B": {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
                      "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                      "max_position_embeddings": 40960, "tie_word_embeddings": False},
    "bert-base-uncased": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "intermediate_size": 3072,
                          "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 512},
    "distilbert-base-uncased": {"model_type": "distilbert", "vocab_size": 30522, "dim": 768, "hidden_dim": 3072,
                                "n_layers": 6, "n_heads": 12, "max_position_embeddings": 512},
}


class MemoryPlanError(MemoryError):
    """A cell does not fit the visible memory; the message names the estimate, the free memory
    and the settings that would fit."""


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know about a model (counted on the meta device, no weights).

    Attributes:
        params: all parameters of the sequence classifier.
        head: parameters outside the backbone (the classification head).
        lora: adapter parameters for the entry's LoRA settings (0 without LoRA).
        hidden, intermediate, layers, heads: architecture sizes.
        gated_mlp: Llama/Qwen3-style gated MLP (3 matrices) rather than BERT's 2.
        attention_dropout: the config's attention dropout probability.
    """

    params: int
    head: int
    lora: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    gated_mlp: bool
    attention_dropout: float


@dataclass(frozen=True)
class Settings:
    """One cell's memory-relevant settings (the registry entry plus the stage's batch)."""

    precision: str            # fp32 | amp_bf16 | bf16 (resolved, not auto)
    lora: object = None       # rga.models.LoraSpec or None
    gradient_checkpointing: bool = False
    device_map: str | None = None
    batch_size: int = 32
    max_length: int = 128
    task: str = "unlearn"     # finetune | unlearn | detect | evaluate
    needs_base: bool = True   # unlearn: RGA's θ_base copy
    eager_attention: bool = True


@dataclass
class Estimate:
    """Bytes per component (see the module docstring) and their sum."""

    parts: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))


def parse_bytes(text: str) -> int:
    """``"48GB"`` -> 48·10⁹, ``"48GiB"`` -> 48·2³⁰ (also MB/MiB/TB/TiB and plain bytes).

    Raises:
        ValueError: unreadable text (names it and the accepted forms).
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"memory size {text!r} not understood; write e.g. 48GB, 44.7GiB or 512MiB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
             "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}[unit]
    return int(float(m.group(1)) * scale)


def gib(n: float) -> str:
    """``n`` bytes as ``"12.3 GiB"``."""
    return f"{n / GiB:.1f} GiB" if n >= 0.1 * GiB else f"{n / 2 ** 20:.1f} MiB"


def load_config(path: str):
    """The transformers config of a registry path, without weights or network.

    Tries a local folder (a LoRA checkpoint's base is followed), then the Hugging Face cache,
    then :data:`KNOWN_CONFIGS`.

    Raises:
        rga.models.ModelNotFound: none of them has it (names the path).
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from .models import ModelNotFound, adapter_checkpoint, resolve_path

    hf_logging.set_verbosity_error()
    resolved = resolve_path(path)
    if os.path.isdir(resolved):
        adapter = adapter_checkpoint(resolved)
        if adapter is not None:
            return load_config(adapter["base_model_name_or_path"])
        return AutoConfig.from_pretrained(resolved, trust_remote_code=False)
    try:
        return AutoConfig.from_pretrained(resolved, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError):
        pass
    if path in KNOWN_CONFIGS:
        cfg = dict(KNOWN_CONFIGS[path])
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    raise ModelNotFound(f"no config for {path!r}: not a local folder, not in the Hugging Face cache and not "
                        f"one of the built-in architectures ({', '.join(KNOWN_CONFIGS)})")


def model_shape(config, num_labels: int = 2, lora=None, name: str = "<name>") -> Shape:
    """Count a sequence classifier's parameters from its config on the meta device.

    No memory is allocated and no random number is drawn (the RNG state is restored), so a
    stage may call it before seeding without changing its results.
    """
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    config.num_labels = num_labels
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    import warnings

    with torch.random.fork_rng(devices=[]), torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForSequenceClassification.from_config(config)
        prefix = model.base_model_prefix
        params = sum(p.numel() for p in model.parameters())
        head = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] != prefix)
        n_lora = 0
        if lora is not None:
            from .models import apply_lora

            peft_model = apply_lora(model, lora, name)
            n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size"))
    return Shape(params=params, head=head, lora=n_lora, hidden=hidden,
                 intermediate=int(getattr(text, "intermediate_size", None) or getattr(text, "hidden_dim", 4 * hidden)),
                 layers=int(getattr(text, "num_hidden_layers")), heads=int(getattr(text, "num_attention_heads")),
                 gated_mlp=hasattr(text, "mlp_bias") or getattr(text, "hidden_act", "") == "silu",
                 attention_dropout=float(getattr(text, "attention_dropout", None)
                                         or getattr(text, "attention_probs_dropout_prob", None) or 0.0))


def estimate(shape: Shape, s: Settings) -> Estimate:
    """Peak bytes of one step of ``s.task`` for a model of ``shape`` (module docstring).

    Raises:
        ValueError: an unknown task or precision (lists the valid choices).
    """
    if s.task not in TASKS:
        raise ValueError(f"unknown task {s.task!r}; valid choices: {', '.join(TASKS)}")
    if s.precision not in ACT_BYTES:
        raise ValueError(f"unknown precision {s.precision!r}; valid choices: {', '.join(ACT_BYTES)}")
    wb = 2 if s.precision == "bf16" else 4
    train = s.task in ("finetune", "unlearn")
    parts = {}
    if s.lora is not None:
        parts["weights"] = shape.params * wb + (shape.head + shape.lora) * 4
        trainable, tb = shape.head + shape.lora, 4
    else:
        parts["weights"] = shape.params * wb
        trainable, tb = shape.params, wb
    if train:
        parts["gradients"] = trainable * tb
        parts["optimizer"] = trainable * 2 * tb
        if s.precision == "amp_bf16" and s.lora is None:
            parts["autocast_cache"] = trainable * 2
        if s.task == "unlearn" and s.needs_base:
            parts["reference"] = shape.lora * 4 if s.lora is not None else (shape.params - shape.head) * wb
    act = ACT_BYTES[s.precision]
    c_i = 4 if shape.gated_mlp else 2
    tokens = s.batch_size * s.max_length
    layer = tokens * ((12 * shape.hidden + c_i * shape.intermediate) * act
                      + shape.heads * s.max_length * attention_bytes(shape, s))
    if train:
        passes = 2 if s.task == "unlearn" else 1  # forget and retain batches both held until backward
        if s.gradient_checkpointing:
            parts["activations"] = passes * shape.layers * tokens * shape.hidden * act + 1.5 * layer
        else:
            parts["activations"] = passes * shape.layers * layer
    else:  # inference: one layer's working set, plus every layer's hidden states (CUBE's representations)
        parts["activations"] = (shape.layers + 1) * tokens * shape.hidden * act + layer
    return Estimate({k: int(v) for k, v in parts.items()})


def attention_bytes(shape: Shape, s: Settings) -> int:
    """Bytes kept per attention-score element (batch × heads × length²) by eager attention in
    training, fitted to measured peaks of padded batches (``tests/test_plan.py``): the
    probabilities, and with attention dropout its mask and output, at the scores' dtype.

    * float32 scores: an fp32 model, and BERT under ``amp_bf16``, whose padded batches' float32
      additive mask promotes autocast's bf16 scores to float32;
    * the decoders (gated MLP: Llama, Qwen3) upcast the softmax to float32 under every precision
      and keep its bf16 copy for the next matmul;
    * BERT in pure ``bf16``: bf16 scores, mask and softmax.

    0 for the fused kernels used on GPUs (SDPA / flash), which keep no score matrix."""
    if not s.eager_attention:
        return 0
    dropout = shape.attention_dropout > 0
    if s.precision == "fp32" or (s.precision == "amp_bf16" and not shape.gated_mlp):
        return 12 if dropout else 4
    if shape.gated_mlp:
        return 7 if dropout else 6
    return 6 if dropout else 2


@dataclass(frozen=True)
class Devices:
    """Free memory where the model will run: ``kind`` ``cuda`` (one entry per GPU) or ``cpu``."""

    kind: str
    free: tuple[int, ...]

    def describe(self) -> str:
        if self.kind == "cpu":
            return f"{gib(self.free[0])} free RAM"
        sizes = sorted(set(self.free))
        each = " / ".join(gib(f) for f in sizes)
        return f"{len(self.free)} GPU{'s' if len(self.free) > 1 else ''} with {each} free each"


def visible_devices() -> Devices:
    """Free memory of the visible GPUs (``torch.cuda.mem_get_info``), else available RAM."""
    if torch.cuda.is_available():
        return Devices("cuda", tuple(int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())))
    import psutil

    return Devices("cpu", (int(psutil.virtual_memory().available),))


def fits(est: Estimate, s: Settings, dev: Devices) -> bool:
    """Whether ``est`` fits ``dev`` with :data:`HEADROOM`: on one device, or with
    ``device_map: auto`` spread evenly over all GPUs (each also pays :data:`CUDA_WORKSPACE`)."""
    if dev.kind == "cpu":
        return est.total <= HEADROOM * dev.free[0]
    used = dev.free if s.device_map == "auto" else dev.free[:1]
    share = est.total / len(used) + CUDA_WORKSPACE
    return all(share <= HEADROOM * f for f in used)


def alternatives(shape: Shape, s: Settings, dev: Devices, limit: int = 6) -> list[str]:
    """Settings that would fit, each with its estimate: single changes first (``bf16``, LoRA,
    gradient checkpointing, a smaller batch, more GPUs), then combinations."""
    from .models import LoraSpec

    changes = []
    if s.precision != "bf16":
        changes.append(("precision: bf16", {"precision": "bf16"}))
    if s.lora is None and s.task in ("finetune", "unlearn"):
        changes.append(("lora: {r: 16}", {"lora": LoraSpec(r=16, alpha=32.0)}))
    if not s.gradient_checkpointing and s.task in ("finetune", "unlearn"):
        changes.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}))
    if dev.kind == "cuda" and len(dev.free) > 1 and s.device_map != "auto":
        changes.append((f"device_map: auto (all {len(dev.free)} GPUs)", {"device_map": "auto"}))
    out = []

    def try_(label, kw):
        t = replace(s, **kw)
        e = estimate(shape, t)
        if fits(e, t, dev):
            out.append(f"{label} -> {gib(e.total)}")
            return True
        return False

    for label, kw in changes:
        try_(label, kw)
    b = s.batch_size // 2
    while b >= 1 and not try_(f"batch_size: {b}", {"batch_size": b}):
        b //= 2
    if not out:  # no single change fits: pairs, then triples
        import itertools

        for k in (2, 3):
            for combo in itertools.combinations(changes, k):
                kw = {}
                for _, c in combo:
                    kw.update(c)
                try_(" + ".join(label for label, _ in combo), kw)
            if out:
                break
    if dev.kind == "cuda":
        per = max(dev.free)
        usable = HEADROOM * per - CUDA_WORKSPACE
        need = math.ceil(estimate(shape, replace(s, device_map="auto")).total / usable) if usable > 0 else 0
        if need > len(dev.free) or (need > 1 and s.device_map != "auto"):
            out.append(f"device_map: auto on {need} GPUs with {gib(per)} free each")
    return out[:limit]


def report(name: str, shape: Shape, s: Settings, dev: Devices) -> tuple[bool, str]:
    """``(fits, text)``: the estimate broken down, the free memory, the verdict, and when the
    cell does not fit the settings that would."""
    est = estimate(shape, s)
    ok = fits(est, s, dev)
    lora = f"LoRA r={s.lora.r}" if s.lora is not None else "full fine-tuning"
    place = "device_map auto" if s.device_map == "auto" else "one device"
    adapters = f" ({shape.lora / 1e6:.1f} M in adapters)" if s.lora is not None else ""
    count = f"{shape.params / 1e9:.2f} B" if shape.params >= 1e8 else f"{shape.params / 1e6:.1f} M"
    head = (f"{name}: {s.task}, {count} parameters{adapters}, "
            f"precision {s.precision}, {lora}, gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}, "
            f"{place}, batch {s.batch_size} x {s.max_length} tokens")
    parts = ", ".join(f"{k} {gib(v)}" for k, v in est.parts.items())
    lines = [head, f"  estimate {gib(est.total)} ({parts})",
             f"  available: {dev.describe()} (a cell fits in {HEADROOM:.0%} of it"
             + (f", less {gib(CUDA_WORKSPACE)} per GPU" if dev.kind == "cuda" else "") + ")"]
    if ok:
        lines.append("  fits")
    else:
        alt = alternatives(shape, s, dev)
        lines.append(f"  does NOT fit: estimate {gib(est.total)}, {dev.describe()}. Settings that fit: "
                     + ("; ".join(alt) if alt else "none found; use more or larger GPUs"))
    return ok, "\n".join(lines)


def settings_for(spec, params: dict, task: str, device: str = "cpu", method: str | None = None) -> Settings:
    """The :class:`Settings` a stage runs ``spec`` (a :class:`rga.models.ModelSpec`) with.

    ``precision: auto`` resolves as :func:`rga.models.resolve_precision` does on ``device``;
    the batch comes from ``finetune.batch_size`` (finetune, retrain), ``unlearn.batch_size``
    (unlearn) or ``finetune.eval_batch_size`` (detect, evaluate).

    Raises:
        ValueError: an unknown task (lists the valid choices).
    """
    from .models import resolve_precision

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    ft = params.get("finetune", {})
    batch = {"finetune": ft.get("batch_size", 32), "unlearn": params.get("unlearn", {}).get("batch_size", 32)}.get(
        task, ft.get("eval_batch_size", 128))
    needs_base = True
    if method is not None and task == "unlearn":
        from .unlearning import get_method

        needs_base = get_method(method).needs_base
    return Settings(precision=resolve_precision(spec.precision, torch.device(device)), lora=spec.lora,
                    gradient_checkpointing=spec.gradient_checkpointing, device_map=spec.device_map,
                    batch_size=int(batch), max_length=int(ft.get("max_length", 128)), task=task,
                    needs_base=needs_base, eager_attention=device == "cpu")


def check_stage(spec, params: dict, task: str, num_labels: int, method: str | None = None,
                devices: Devices | None = None) -> str | None:
    """Run by every model stage before it loads weights: refuse a cell that will not fit.

    Environment ``RGA_PLAN``: ``check`` (default) raises, ``warn`` logs and goes on, ``off``
    skips. A model whose config cannot be found offline is not checked (loading it then fails
    with its own message).

    Returns:
        the report text (``None`` when skipped).

    Raises:
        MemoryPlanError: the estimate exceeds the free memory; the message is :func:`report`'s.
    """
    import logging

    from .models import ModelNotFound, pick_device

    mode = os.environ.get("RGA_PLAN", "check")
    if mode == "off":
        return None
    try:
        config = load_config(spec.path)
    except (ModelNotFound, OSError, ValueError):
        return None
    shape = model_shape(config, num_labels, spec.lora, spec.name)
    devices = devices or visible_devices()
    s = settings_for(spec, params, task, "cuda" if devices.kind == "cuda" else pick_device().type, method)
    ok, text = report(spec.name, shape, s, devices)
    if not ok:
        if mode == "warn":
            logging.getLogger("rga").warning("%s", text)
        else:
            raise MemoryPlanError(text + "\n  (set RGA_PLAN=warn to run anyway)")
    return text


def require_fit(stage: str, spec, params: dict, task: str, num_labels: int, method: str | None = None) -> None:
    """:func:`check_stage` for a stage script, run before any weight is loaded: a cell that will
    not fit ends the process with ``<stage>: <report>`` (exit status 1) instead of a traceback.

    Raises:
        SystemExit: the estimate exceeds the free memory (and ``RGA_PLAN`` is ``check``).
    """
    try:
        check_stage(spec, params, task, num_labels, method)
    except MemoryPlanError as err:
        raise SystemExit(f"{stage}: {err}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Estimate a model stage's memory without running it.")
    p.add_argument("model", help="registry name (models.<name> in params.yaml)")
    p.add_argument("--task", choices=TASKS, default="unlearn")
    p.add_argument("--method", default="rga", help="unlearning method (RGA keeps θ_base; others do not)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--gpus", type=int, help="pretend this many GPUs (with --gpu-memory)")
    p.add_argument("--gpu-memory", help="free memory per pretended GPU, e.g. 48GB or 141GB")
    p.add_argument("--cpu-memory", help="pretend a CPU with this much free RAM, e.g. 64GB")
    a = p.parse_args(argv)

    from .io import load_params
    from .models import model_spec

    params = load_params(a.params)
    try:
        spec = model_spec(a.model, params)
    except ValueError as err:
        p.error(str(err))
    if a.gpus or a.gpu_memory:
        if not (a.gpus and a.gpu_memory):
            p.error("--gpus and --gpu-memory go together")
        dev = Devices("cuda", (parse_bytes(a.gpu_memory),) * a.gpus)
    elif a.cpu_memory:
        dev = Devices("cpu", (parse_bytes(a.cpu_memory),))
    else:
        dev = visible_devices()
    shape = model_shape(load_config(spec.path), a.num_labels, spec.lora, a.model)
    s = settings_for(spec, params, a.task, dev.kind, a.method if a.task == "unlearn" else None)
    ok, text = report(a.model, shape, s, dev)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
