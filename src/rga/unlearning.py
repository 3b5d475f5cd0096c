"""Backdoor unlearning objectives and the unlearning epoch (paper §3.2, §5, §6.1).

Each objective is one small function from a forget batch and a retain batch to a loss:

- ``ga_loss``  (Eq. 3):  CE(retain) − CE(forget)
- ``npo_loss`` (Zhang et al., 2024): CE(retain) − (2/β)·mean log σ(−β·(log p_θ(y|x) − log p_ref(y|x)))
- ``rga_loss`` (Eq. 6-7): −λ·CE(forget) + CE(retain) + β·Σ_i ‖θ_i − θ_base,i‖₂,  λ = exp(−α·KL)
- ``dga_loss`` (Table 3 ablation): RGA without the norm term.

Everything else (batching, optimiser, clipping, evaluation, logging) is shared in
:func:`unlearn`. ReTrain reuses :func:`rga.training.train_classifier` instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import autocast
from .training import NonFiniteLossError, encode_batch, length_grouped_batches, set_seed, token_lengths

METHODS = ("ga", "npo", "rga", "dga")
KL_DIRECTIONS = ("poisoned_current", "current_poisoned")


@dataclass
class Batch:
    """One unlearning step's tensors.

    Attributes:
        forget_logits: [B_f, C] current model logits on the forget batch (with grad).
        forget_labels: [B_f] labels of the forget rows (the target label for true poison).
        retain_logits: [B_r, C] current logits on the paired retain batch (with grad).
        retain_labels: [B_r].
        ref_forget_logits: [B_f, C] logits of the frozen poisoned model on the forget rows
            (computed once before unlearning); needed by NPO, RGA, DGA.
    """

    forget_logits: torch.Tensor
    forget_labels: torch.Tensor
    retain_logits: torch.Tensor
    retain_labels: torch.Tensor
    ref_forget_logits: torch.Tensor | None = None


def ga_loss(b: Batch) -> tuple[torch.Tensor, dict]:
    """Vanilla gradient ascent with a retain term, Eq. 3: CE(retain) − CE(forget). Scalar."""
    f = F.cross_entropy(b.forget_logits, b.forget_labels)
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    return r - f, {"forget_ce": f.item(), "retain_ce": r.item()}


def npo_loss(b: Batch, beta: float = 1.0) -> tuple[torch.Tensor, dict]:
    """NPO (Zhang et al., 2024) with a retain term. Scalar.

    loss = CE(retain) + mean_i [ −(2/β) · log σ(−β · (log p_θ(y_i|x_i) − log p_ref(y_i|x_i))) ]
    with p_ref the frozen poisoned model. At p_θ = p_ref the forget term is (2/β)·log 2.
    """
    logp = F.log_softmax(b.forget_logits, -1).gather(1, b.forget_labels[:, None]).squeeze(1)
    logp_ref = F.log_softmax(b.ref_forget_logits, -1).gather(1, b.forget_labels[:, None]).squeeze(1)
    forget = (-(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref))).mean()
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    f_ce = F.cross_entropy(b.forget_logits.detach(), b.forget_labels)
    return r + forget, {"forget_ce": f_ce.item(), "retain_ce": r.item(), "npo_forget": forget.item()}


@torch.no_grad()
def rga_weight(forget_logits: torch.Tensor, ref_forget_logits: torch.Tensor, alpha: float,
               kl_direction: str = "poisoned_current") -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive GA weight λ = exp(−α·KL) of Eq. 7, computed without gradient.

    Args:
        forget_logits: [B, C] current logits on the forget batch.
        ref_forget_logits: [B, C] the poisoned model's logits on the same rows.
        alpha: decay rate α (paper: 2). α = 0 gives λ = 1, i.e. plain GA.
        kl_direction: ``poisoned_current`` = KL(p_poisoned ‖ p_θ), batch mean — what the
            authors' implementation computes (``kl_div(log p_θ, p_poisoned)``) and the default;
            ``current_poisoned`` = KL(p_θ ‖ p_poisoned), Eq. 7 as printed. Both are 0 when the
            current and poisoned predictions agree (λ = 1) and grow as they diverge.

    In :func:`unlearn` the current logits are those of the training forward pass (train mode,
    with dropout) while the reference logits are computed once in eval mode, so λ starts
    slightly below 1 even before any update (measured here: 0.998 in the first epoch) — the
    same single forward pass serves the loss and λ, as in GA-style implementations.

    Returns:
        ``(lam, kl)``: scalar tensors, λ ∈ (0, 1].

    Raises:
        ValueError: unknown ``kl_direction`` (lists the valid ones).
    """
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"unknown kl_direction {kl_direction!r}; valid choices: {', '.join(KL_DIRECTIONS)}")
    logp_cur = F.log_softmax(forget_logits.float(), -1)
    logp_ref = F.log_softmax(ref_forget_logits.float(), -1)
    if kl_direction == "poisoned_current":
        kl = (logp_ref.exp() * (logp_ref - logp_cur)).sum(-1).mean()
    else:
        kl = (logp_cur.exp() * (logp_cur - logp_ref)).sum(-1).mean()
    kl = kl.clamp_min(0.0)
    return torch.exp(-alpha * kl), kl


def param_distance(params: Sequence[torch.Tensor], base: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_i ‖θ_i − θ_base,i‖₂ over parameter tensors (plain, not squared, norms; Eq. 6 term iii
    applied per tensor as in the authors' implementation). Differentiable w.r.t. ``params``.

    Computed in one fused pass (``torch._foreach_sub`` / ``torch._foreach_norm``) instead of a
    Python loop over hundreds of tensors. Returns a scalar (0 when θ = θ_base).
    """
    if not params:
        return torch.zeros(())
    diffs = torch._foreach_sub(list(params), list(base))
    norms = torch._foreach_norm(diffs)
    return torch.stack([n.float() for n in norms]).sum()


def rga_loss(b: Batch, alpha: float = 2.0, beta: float = 0.05, kl_direction: str = "poisoned_current",
             params: Sequence[torch.Tensor] = (), base: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, dict]:
    """Robust Gradient Ascent, Eq. 6: −λ·CE(forget) + CE(retain) + β·Σ‖θ − θ_base‖₂. Scalar.

    λ comes from :func:`rga_weight` (no gradient flows through it). ``params`` are the
    backbone parameters that exist in the base model (the classifier head is excluded: the
    base model has none), ``base`` their pretrained values θ_base.
    """
    lam, kl = rga_weight(b.forget_logits, b.ref_forget_logits, alpha, kl_direction)
    f = F.cross_entropy(b.forget_logits, b.forget_labels)
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    loss = -lam * f + r
    logs = {"forget_ce": f.item(), "retain_ce": r.item(), "lambda": lam.item(), "kl": kl.item()}
    if beta:
        dist = param_distance(params, base)
        loss = loss + beta * dist
        logs["param_distance"] = dist.item()
    return loss, logs


def dga_loss(b: Batch, alpha: float = 2.0, kl_direction: str = "poisoned_current") -> tuple[torch.Tensor, dict]:
    """Dynamic Gradient Ascent (Table 3 ablation): RGA terms i + ii, no norm term."""
    return rga_loss(b, alpha=alpha, beta=0.0, kl_direction=kl_direction)


@dataclass
class UnlearnConfig:
    """Shared unlearning settings (paper §6.1: 30 epochs, batch 32, fine-tuning lr).

    One epoch is one pass over the forget set in length-grouped batches of ``batch_size``,
    each paired with a random retain batch of ``batch_size`` rows (drawn, seeded, from a
    length-grouped shuffle of the retain set, as in fine-tuning, so both halves of a step are
    padded tightly; the retain shuffle carries over between epochs); gradients are clipped to
    ``grad_clip``. Metrics are evaluated every ``eval_every`` epochs, at ``record_epochs``
    and at the last epoch.
    """

    epochs: int = 30
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    grad_clip: float = 1.0
    eval_every: int = 1
    record_epochs: tuple[int, ...] = (10, 20, 30)
    seed: int = 0


METHOD_KEYS = {"ga": {"objective"}, "npo": {"beta"}, "rga": {"alpha", "beta", "kl_direction"},
               "dga": {"alpha", "kl_direction"}}


def validate_method_params(method: str, method_params: dict | None) -> dict:
    """Check a method's params section (``ga``/``npo``/``rga``/``dga`` in params.yaml).

    Raises:
        ValueError: unknown method, unknown key (a typo such as ``rga.alpah`` would otherwise be
            silently ignored), ``npo.beta`` <= 0, negative ``alpha``/``rga.beta``, or an unknown
            ``kl_direction``; the message names the key, the value and the valid choices.
    """
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; valid choices: {', '.join(METHODS)} "
                         "(ReTrain is the 'retrain' stage)")
    mp = dict(method_params or {})
    unknown = set(mp) - METHOD_KEYS[method]
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(f'{method}.{k}' for k in unknown)}; valid keys: "
                         f"{', '.join(sorted(f'{method}.{k}' for k in METHOD_KEYS[method]))}")
    if method == "npo" and float(mp.get("beta", 1.0)) <= 0:
        raise ValueError(f"npo.beta must be > 0, got {mp['beta']}")
    if float(mp.get("alpha", 0.0)) < 0:
        raise ValueError(f"{method}.alpha must be >= 0, got {mp['alpha']}")
    if method == "rga" and float(mp.get("beta", 0.0)) < 0:
        raise ValueError(f"rga.beta must be >= 0, got {mp['beta']}")
    if mp.get("kl_direction", KL_DIRECTIONS[0]) not in KL_DIRECTIONS:
        raise ValueError(f"unknown {method}.kl_direction {mp['kl_direction']!r}; valid choices: "
                         f"{', '.join(KL_DIRECTIONS)}")
    return mp


def make_objective(method: str, method_params: dict, params=(), base=()) -> Callable[[Batch], tuple]:
    """The loss function of ``method`` with its params bound (validated first).

    Raises:
        ValueError: see :func:`validate_method_params`.
    """
    mp = validate_method_params(method, method_params)
    if method == "ga":
        return ga_loss
    if method == "npo":
        return lambda b: npo_loss(b, beta=float(mp.get("beta", 1.0)))
    if method == "rga":
        return lambda b: rga_loss(b, alpha=float(mp.get("alpha", 2.0)), beta=float(mp.get("beta", 0.05)),
                                  kl_direction=mp.get("kl_direction", "poisoned_current"),
                                  params=params, base=base)
    if method == "dga":
        return lambda b: dga_loss(b, alpha=float(mp.get("alpha", 2.0)),
                                  kl_direction=mp.get("kl_direction", "poisoned_current"))
    raise ValueError(f"unknown unlearning method {method!r}; valid choices: {', '.join(METHODS)} "
                     "(ReTrain is the 'retrain' stage)")


def backbone_pairs(model, base_state: dict[str, torch.Tensor]) -> tuple[list, list]:
    """Pair the model's parameters with their θ_base values by name.

    ``base_state`` maps parameter names to pretrained values (only names the base checkpoint
    actually holds). Returns ``(params, base)`` lists in the same order.
    """
    params, base = [], []
    for name, p in model.named_parameters():
        if name in base_state:
            params.append(p)
            base.append(base_state[name].to(device=p.device, dtype=p.dtype))
    return params, base


def unlearn(model, tokenizer, forget_texts: Sequence[str], forget_labels: Sequence[int],
            retain_texts: Sequence[str], retain_labels: Sequence[int], method: str, cfg: UnlearnConfig,
            method_params: dict | None = None, ref_forget_logits: np.ndarray | None = None,
            base_state: dict | None = None, evaluate: Callable[[], dict] | None = None,
            on_epoch_end: Callable[[int, dict], None] | None = None, where: str = "",
            progress: bool = True, inject_nan_at_epoch: int | None = None) -> list[dict]:
    """Unlearn the forget set from ``model`` in place.

    Args:
        model, tokenizer: the poisoned model (updated in place) and its tokenizer.
        forget_texts, forget_labels: the forget set (N_f rows), e.g. CUBE's detected poison.
        retain_texts, retain_labels: the retain set (N_r rows).
        method: one of :data:`METHODS`.
        cfg: :class:`UnlearnConfig`.
        method_params: ``npo``/``rga``/``dga`` section of params (β, α, kl_direction).
        ref_forget_logits: [N_f, C] poisoned-model logits on the forget rows, computed once.
        base_state: name -> θ_base tensor, for RGA's norm term.
        evaluate: returns metrics (e.g. cacc/lfr/pacc) of the current model; called at
            epoch 0 and at the evaluation epochs.
        on_epoch_end: ``f(epoch, record)`` after each epoch (and for epoch 0), e.g. logging.
        where: cell name used in error messages.
        inject_nan_at_epoch: testing hook: the loss of that epoch's first step becomes NaN.

    Returns:
        history, one record per epoch (0 = before unlearning) with ``poison_loss`` (mean
        forget CE), ``retain_loss``, ``lambda`` (RGA/DGA) and the evaluated metrics.

    Raises:
        NonFiniteLossError: a non-finite loss; names method, cell and epoch. Records of the
            epochs before it have already been passed to ``on_epoch_end``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; valid choices: {', '.join(METHODS)}")
    if len(forget_texts) == 0:
        raise ValueError(f"{where}: empty forget set")
    if method in ("npo", "rga", "dga") and ref_forget_logits is None:
        raise ValueError(f"{method} needs the poisoned model's reference logits on the forget set")
    set_seed(cfg.seed)
    device = next(model.parameters()).device
    params, base = backbone_pairs(model, base_state or {}) if method == "rga" else ([], [])
    objective = make_objective(method, method_params or {}, params, base)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    yf = torch.as_tensor(np.asarray(forget_labels), dtype=torch.long)
    yr = torch.as_tensor(np.asarray(retain_labels), dtype=torch.long)
    ref = torch.as_tensor(ref_forget_logits, dtype=torch.float32) if ref_forget_logits is not None else None
    lengths = token_lengths(tokenizer, forget_texts, cfg.max_length)
    retain_lengths = token_lengths(tokenizer, retain_texts, cfg.max_length)
    rng = np.random.default_rng([cfg.seed, 202])
    retain_rng = np.random.default_rng([cfg.seed, 203])
    retain_queue: list[np.ndarray] = []

    def next_retain_batch() -> np.ndarray:
        while True:
            if not retain_queue:
                retain_queue.extend(length_grouped_batches(retain_lengths, cfg.batch_size, retain_rng))
            b = retain_queue.pop()
            if len(b) == min(cfg.batch_size, len(retain_texts)):  # skip short tail batches
                return b
    history = []

    rec0 = {"epoch": 0}
    if ref is not None:
        rec0["poison_loss"] = float(F.cross_entropy(ref, yf).item())
    if method in ("rga", "dga"):
        rec0["lambda"] = 1.0
    if evaluate:
        rec0.update(evaluate())
    history.append(rec0)
    if on_epoch_end:
        on_epoch_end(0, rec0)

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        batches = length_grouped_batches(lengths, cfg.batch_size, rng)
        bar = tqdm(batches, desc=f"{method} epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        for step, fidx in enumerate(bar):
            ridx = next_retain_batch()
            fb = encode_batch(tokenizer, [forget_texts[i] for i in fidx], cfg.max_length, device)
            rb = encode_batch(tokenizer, [retain_texts[i] for i in ridx], cfg.max_length, device)
            with autocast(device):
                f_logits, r_logits = model(**fb).logits.float(), model(**rb).logits.float()
            b = Batch(f_logits, yf[fidx].to(device), r_logits, yr[ridx].to(device),
                      ref[fidx].to(device) if ref is not None else None)
            loss, logs = objective(b)
            if inject_nan_at_epoch == epoch and step == 0:
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"unlearning method {method!r}, cell {where or '?'}: non-finite loss "
                    f"({loss.item()}) at epoch {epoch} step {step}; metrics of epochs 0-{epoch - 1} were kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * len(fidx)
            bar.set_postfix(poison_loss=f"{logs['forget_ce']:.3f}")
        n = len(forget_texts)
        rec = {"epoch": epoch, "poison_loss": sums["forget_ce"] / n, "retain_loss": sums["retain_ce"] / n,
               "seconds": time.perf_counter() - t0}
        if "lambda" in sums:
            rec["lambda"] = sums["lambda"] / n
            rec["kl"] = sums["kl"] / n
        if "param_distance" in sums:
            rec["param_distance"] = sums["param_distance"] / n
        if evaluate and (epoch % max(cfg.eval_every, 1) == 0 or epoch in cfg.record_epochs or epoch == cfg.epochs):
            rec.update(evaluate())
        history.append(rec)
        if on_epoch_end:
            on_epoch_end(epoch, rec)
    model.eval()
    return history


def count_epoch_rows(n_forget: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """How often each forget row is visited in one epoch's batches (all ones by design)."""
    batches = length_grouped_batches(np.arange(n_forget), batch_size, np.random.default_rng(seed))
    return np.bincount(np.concatenate(batches), minlength=n_forget)
