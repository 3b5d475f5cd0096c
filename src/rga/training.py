"""The one batching and optimisation loop (fine-tuning, ReTrain) and batched inference.

Batches are length-grouped (shuffle, then sort by length inside mega-batches of
``group_factor * batch_size`` rows, then shuffle the batch order) and padded dynamically to
the longest text of the batch, so short SST-2 sentences are not padded to 128 tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names where."""


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class Tokenized:
    """N texts tokenised once, unpadded (special tokens included, truncated at ``max_length``).

    Attributes:
        features: the tokenizer's per-row lists, e.g. ``input_ids``, ``attention_mask``
            (and ``token_type_ids`` for BERT-style models), each a list of N int lists.
        lengths: [N] token counts.
    """

    features: dict
    lengths: np.ndarray

    def rows(self, idx) -> list[dict]:
        """Per-row feature dicts of rows ``idx`` (for :func:`collate`)."""
        return [{k: v[i] for k, v in self.features.items()} for i in idx]


def tokenize_once(tokenizer, texts: Sequence[str], max_length: int) -> Tokenized:
    """Tokenise ``texts`` once per stage (no padding); batches are cut from it by :func:`collate`.

    Gives exactly the batches that tokenising each batch on its own gave (tested in
    ``tests/test_training.py``), without re-tokenising every batch of every epoch.
    """
    if len(texts) == 0:
        return Tokenized({"input_ids": []}, np.zeros(0, dtype=np.int64))
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    features = {k: list(v) for k, v in enc.items()}
    ids = features.get("input_ids", [])
    return Tokenized(features, np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)))


def collate(tokenizer, rows: list[dict], device) -> dict:
    """Pad pre-tokenised rows (``Tokenized.rows``) to the longest of them, as tensors on ``device``.

    Uses the tokenizer's own padding (side, pad id, attention mask), so the batch equals
    ``tokenizer(texts, padding=True, truncation=True, ...)`` on the same texts.
    """
    enc = tokenizer.pad(rows, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Token counts [N] (special tokens included, truncated at ``max_length``)."""
    return tokenize_once(tokenizer, texts, max_length).lengths


def progress_bar(iterable, desc: str, enabled: bool = True, **kw):
    """A tqdm bar on a terminal; nothing when stderr is not a terminal (``dvc repro > log``),
    where the loops log one plain line per epoch instead (see :func:`log_epoch`)."""
    return tqdm(iterable, desc=desc, disable=None if enabled else True, leave=False, **kw)


def log_epoch(desc: str, record: dict) -> None:
    """One plain log line per epoch (``logging``, logger ``rga``), readable in ``run.log``."""
    import logging

    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
             if isinstance(v, (int, float)) and k != "epoch"]
    logging.getLogger("rga").info("%s epoch %s: %s", desc, record.get("epoch"), ", ".join(parts))


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                           group_factor: int = 50) -> list[np.ndarray]:
    """Index batches that cover every row exactly once, grouped by similar length.

    Args:
        lengths: [N] token counts.
        batch_size: rows per batch (the last batch of a mega-batch may be smaller).
        rng: randomness for the shuffles.
        group_factor: mega-batch size in batches.

    Returns:
        list of int arrays of row indices.
    """
    n = len(lengths)
    order = rng.permutation(n)
    mega = batch_size * group_factor
    batches = []
    for start in range(0, n, mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def make_optimizer(model, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (all of them in full fine-tuning; the adapters and
    head with LoRA), fused into one kernel where torch has one (CPU, CUDA).

    Moments take each parameter's dtype: float32 (8 bytes per parameter) for float32 weights,
    bfloat16 (4 bytes) for ``precision: bf16``.

    The fused step reads each parameter, gradient and moment once instead of once per
    elementwise op: on the project's 2-core CPU it took the MiniLM optimizer step from about a
    third of an unlearning step to about a ninth (``benchmarks/throughput.py`` measures the
    whole loop). Same update rule as ``torch.optim.AdamW`` up to float rounding.
    """
    device = next(model.parameters()).device
    fused = True if device.type in ("cpu", "cuda") else None
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def clip_gradients(model, max_norm: float) -> None:
    """Clip the global gradient norm to ``max_norm`` (one fused pass over all gradients)."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)


def encode_batch(tokenizer, texts: Sequence[str], max_length: int, device) -> dict:
    """Tokenise a batch padded to its longest text (at most ``max_length``) on ``device``."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


@dataclass
class TrainConfig:
    """Fine-tuning settings (paper §6.1: AdamW/Adam, batch 32, max length 128).

    ``lr`` is per model (params ``models.<name>.lr``); ``epochs`` 5 for encoders, 10 for
    decoders in the paper profile.
    """

    epochs: int
    lr: float
    batch_size: int = 32
    max_length: int = 128
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    group_factor: int = 50


def train_classifier(model, tokenizer, texts: Sequence[str], labels: Sequence[int], cfg: TrainConfig,
                     on_epoch_end: Callable[[int, dict], None] | None = None,
                     desc: str = "finetune", progress: bool = True) -> list[dict]:
    """Fine-tune all parameters with cross-entropy (paper Eq. 1) on ``texts``/``labels``.

    Args:
        model: a sequence-classification model (train mode is set here).
        tokenizer: its tokenizer.
        texts: N training texts; labels: N ints.
        cfg: :class:`TrainConfig`.
        on_epoch_end: called as ``f(epoch, {"train_loss": ..., "samples_per_s": ...})``
            (epochs counted from 1), e.g. to log with DVCLive.

    Returns:
        per-epoch history dicts.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (names the epoch and step).
    """
    import time

    from .models import autocast

    set_seed(cfg.seed)
    device = next(model.parameters()).device
    tokens = tokenize_once(tokenizer, texts, cfg.max_length)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 101])
    history = []
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        batches = length_grouped_batches(tokens.lengths, cfg.batch_size, rng, cfg.group_factor)
        total, seen, t0 = 0.0, 0, time.perf_counter()
        bar = progress_bar(batches, f"{desc} epoch {epoch}/{cfg.epochs}", progress, unit="batch")
        for step, idx in enumerate(bar):
            batch = collate(tokenizer, tokens.rows(idx), device)
            with autocast(model):
                logits = model(**batch).logits.float()
            loss = F.cross_entropy(logits, y[idx].to(logits.device))  # the last layer's device under device_map
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: non-finite loss {loss.item()} at epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                clip_gradients(model, cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}", rate=f"{seen / (time.perf_counter() - t0):.1f}/s")
        rec = {"epoch": epoch, "train_loss": total / max(seen, 1),
               "samples_per_s": seen / (time.perf_counter() - t0)}
        history.append(rec)
        log_epoch(desc, rec)
        if on_epoch_end:
            on_epoch_end(epoch, rec)
    model.eval()
    return history


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 128, max_length: int = 128,
                   return_hidden_kind: str | None = None, progress: bool = False):
    """Logits [N, C] (float32 numpy) in the order of ``texts``; batches sorted by length.

    Texts are tokenised once (:func:`tokenize_once`); forward passes run under the model's
    precision (:func:`rga.models.autocast`).

    With ``return_hidden_kind`` (``encoder``/``decoder``) also returns the pooled last-layer
    representation [N, H] (CUBE step 1) from the same forward pass.
    """
    from .models import autocast, pool_hidden

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(texts)
    tokens = tokenize_once(tokenizer, texts, max_length)
    order = np.argsort(-tokens.lengths, kind="stable") if n else np.array([], int)
    logits_out: list = [None] * math.ceil(n / batch_size)
    hidden_out: list = [None] * len(logits_out)
    for b, start in enumerate(progress_bar(range(0, n, batch_size), "predict", progress)):
        idx = order[start:start + batch_size]
        batch = collate(tokenizer, tokens.rows(idx), device)
        with autocast(model):
            out = model(**batch, output_hidden_states=return_hidden_kind is not None)
        logits_out[b] = out.logits.float().cpu().numpy()
        if return_hidden_kind:
            hidden_out[b] = pool_hidden(out.hidden_states[-1], batch["attention_mask"],
                                        return_hidden_kind).float().cpu().numpy()
    if was_training:
        model.train()
    num_labels = model.config.num_labels
    logits = np.zeros((n, num_labels), dtype=np.float32)
    if n:
        logits[order] = np.concatenate(logits_out)
    if not return_hidden_kind:
        return logits
    width = hidden_out[0].shape[1] if n else int(model.config.hidden_size)
    hidden = np.zeros((n, width), dtype=np.float32)
    if n:
        hidden[order] = np.concatenate(hidden_out)
    return logits, hidden
