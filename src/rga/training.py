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


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Token counts [N] (special tokens included, truncated at ``max_length``)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    return np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))


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
    lengths = token_lengths(tokenizer, texts, cfg.max_length)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 101])
    history = []
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        batches = length_grouped_batches(lengths, cfg.batch_size, rng, cfg.group_factor)
        total, seen, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{cfg.epochs}", disable=not progress,
                   unit="batch", leave=False)
        for step, idx in enumerate(bar):
            batch = encode_batch(tokenizer, [texts[i] for i in idx], cfg.max_length, device)
            with autocast(device):
                logits = model(**batch).logits.float()
            loss = F.cross_entropy(logits, y[idx].to(device))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: non-finite loss {loss.item()} at epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}", rate=f"{seen / (time.perf_counter() - t0):.1f}/s")
        rec = {"epoch": epoch, "train_loss": total / max(seen, 1),
               "samples_per_s": seen / (time.perf_counter() - t0)}
        history.append(rec)
        if on_epoch_end:
            on_epoch_end(epoch, rec)
    model.eval()
    return history


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 128, max_length: int = 128,
                   return_hidden_kind: str | None = None, progress: bool = False):
    """Logits [N, C] (float32 numpy) in the order of ``texts``; batches sorted by length.

    With ``return_hidden_kind`` (``encoder``/``decoder``) also returns the pooled last-layer
    representation [N, H] (CUBE step 1) from the same forward pass.
    """
    from .models import autocast, pool_hidden

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(texts)
    order = np.argsort(-token_lengths(tokenizer, texts, max_length), kind="stable") if n else np.array([], int)
    logits_out: list = [None] * math.ceil(n / batch_size)
    hidden_out: list = [None] * len(logits_out)
    for b, start in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc="predict")):
        idx = order[start:start + batch_size]
        batch = encode_batch(tokenizer, [texts[i] for i in idx], max_length, device)
        with autocast(device):
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
