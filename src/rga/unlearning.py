"""Backdoor unlearning: the method registry and the shared unlearning loop (paper §3.2, §5, §6.1).

A method is one small function from a forget batch and a retain batch to a loss, registered by
name with :func:`register`; each built-in lives in its own module under ``rga/methods/``:

- ``ga``     (Eq. 3):  CE(retain) − CE(forget)
- ``npo``    (Zhang et al., 2024): CE(retain) − (2/β)·mean log σ(−β·(log p_θ(y|x) − log p_ref(y|x)))
- ``rga``    (Eq. 6-7): −λ·CE(forget) + CE(retain) + β·Σ_i ‖θ_i − θ_base,i‖₂,  λ = exp(−α·KL)
- ``dga``    (Table 3 ablation): RGA without the norm term
- ``simnpo`` (Fan et al., 2024): reference-free NPO, CE(retain) − (2/β)·mean log σ(−β·log p_θ(y|x) − γ)
- ``ft``     retain-only fine-tuning: CE(retain)
- ``ga_stop`` (control): GA in the epochs before ``stop_epoch``, CE(retain) from it on
- ``retain_norm`` (control): RGA with λ ≡ 0, CE(retain) + β·Σ_i ‖θ_i − θ_base,i‖₂

Everything else (batching, optimiser, clipping, evaluation, logging) is shared in
:func:`unlearn`. ReTrain reuses :func:`rga.training.train_classifier` instead. A user's method
needs no edit here: a module that calls :func:`register` and is listed in ``unlearn.plugins``
(or lives in the repository's ``plugins/<name>.py``) is picked up by the pipeline.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models import autocast
from .training import (NonFiniteLossError, clip_gradients, collate, length_grouped_batches, log_epoch,
                       make_optimizer, progress_bar, set_seed, tokenize_once)

KL_DIRECTIONS = ("poisoned_current", "current_poisoned")
OPTIMIZER_RESETS = ("never", "epoch")


@dataclass
class Batch:
    """One unlearning step's tensors.

    Attributes:
        forget_logits: [B_f, C] current model logits on the forget batch (with grad).
        forget_labels: [B_f] labels of the forget rows (the target label for true poison).
        retain_logits: [B_r, C] current logits on the paired retain batch (with grad).
        retain_labels: [B_r].
        ref_forget_logits: [B_f, C] logits of the frozen poisoned model on the forget rows
            (computed once before unlearning); set for methods with ``needs_reference``.
        params: the model's backbone parameters, paired with ``base`` (methods with
            ``needs_base``, e.g. RGA's norm term); empty otherwise.
        base: their base-model values θ_base (same shapes, frozen).
        epoch: the current unlearning epoch, 1-based, set by :func:`unlearn` (``ga_stop`` ends
            its ascent by it); None outside the loop.
    """

    forget_logits: torch.Tensor
    forget_labels: torch.Tensor
    retain_logits: torch.Tensor
    retain_labels: torch.Tensor
    ref_forget_logits: torch.Tensor | None = None
    params: Sequence[torch.Tensor] = ()
    base: Sequence[torch.Tensor] = ()
    epoch: int | None = None


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Method:
    """A registered unlearning method.

    Attributes:
        name: the name used in ``matrix.methods``, the stage names and the params section.
        loss: ``loss(batch, **params) -> (scalar loss, logs)``; logs must hold ``forget_ce``
            and ``retain_ce`` (nats) and may add more (e.g. ``lambda``).
        params: the method's params with their defaults (from the loss's keyword arguments);
            ``params.yaml`` section ``<name>:`` overrides them.
        checks: per param, a tuple of valid values or ``(predicate, "description")``.
        needs_reference: the loss reads ``batch.ref_forget_logits`` (the poisoned model's logits).
        needs_base: the loss reads ``batch.params``/``batch.base`` (θ and θ_base).
        display: name in tables and figures.
        module: the module that registered it.
        initial_logs: values of its logs before any update (epoch 0), e.g. ``{"lambda": 1.0}``.
    """

    name: str
    loss: Callable[..., tuple]
    params: dict
    checks: dict = field(default_factory=dict)
    needs_reference: bool = False
    needs_base: bool = False
    display: str = ""
    module: str = ""
    initial_logs: dict = field(default_factory=dict)


_REGISTRY: dict[str, Method] = {}
SAVE_KEY = "save_model"  # reserved in every method's params section: keep the cleaned model (stage option)


def register(name: str, *, display: str | None = None, needs_reference: bool = False, needs_base: bool = False,
             checks: dict | None = None, initial_logs: dict | None = None) -> Callable:
    """Decorator that registers a loss function as unlearning method ``name``.

    The loss takes a :class:`Batch` first; its other arguments are the method's params and
    must all be keyword arguments with defaults (their types are taken from the defaults).

    Example::

        @register("my_ga", checks={"scale": (lambda v: v > 0, "> 0")})
        def my_ga_loss(b: Batch, scale: float = 1.0):
            f = F.cross_entropy(b.forget_logits, b.forget_labels)
            r = F.cross_entropy(b.retain_logits, b.retain_labels)
            return r - scale * f, {"forget_ce": f.item(), "retain_ce": r.item()}

    Raises:
        ValueError: ``name`` is already registered (by another function), is not a plain
            identifier, or a param has no default; ``checks`` names an unknown param.
    """
    def deco(fn: Callable) -> Callable:
        if not name.isidentifier() or name != name.lower() or name in ("retrain", "poisoned"):
            raise ValueError(f"method name {name!r} must be a lower-case identifier other than "
                             "'retrain' and 'poisoned'")
        old = _REGISTRY.get(name)
        if old is not None and (old.module, old.loss.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"unlearning method {name!r} is already registered by {old.module}.{old.loss.__qualname__}; "
                             f"choose another name for {fn.__module__}.{fn.__qualname__}")
        sig = list(inspect.signature(fn).parameters.values())
        if not sig:
            raise ValueError(f"method {name!r}: the loss must take a Batch as its first argument")
        params = {}
        if any(p.name == SAVE_KEY for p in sig[1:]):
            raise ValueError(f"method {name!r}: {SAVE_KEY!r} is reserved (it tells the stage to save the cleaned "
                             "model); rename that parameter")
        for p in sig[1:]:
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"method {name!r}: parameter {p.name!r} of {fn.__qualname__} has no default; "
                                 "every method param needs one (it is the value used when params.yaml omits it)")
            params[p.name] = p.default
        unknown = set(checks or {}) - set(params)
        if unknown:
            raise ValueError(f"method {name!r}: checks for unknown param(s) {sorted(unknown)}; params: {sorted(params)}")
        _REGISTRY[name] = Method(name, fn, params, dict(checks or {}), needs_reference, needs_base,
                                 display or name.upper(), fn.__module__, dict(initial_logs or {}))
        return fn

    return deco


def builtin_methods() -> tuple[str, ...]:
    """Names of the built-in methods (the modules of ``rga/methods``)."""
    from . import methods

    return tuple(sorted(m.name for m in pkgutil.iter_modules(methods.__path__)))


def load_plugins(modules: Sequence[str]) -> None:
    """Import user modules that register methods (``unlearn.plugins``).

    Raises:
        ValueError: a module cannot be imported (names it and the import error).
    """
    for mod in modules or ():
        try:
            importlib.import_module(mod)
        except ImportError as err:
            raise ValueError(f"unlearn.plugins: cannot import {mod!r} ({err}); it must be importable "
                             "from the repository root or an installed package") from err


def get_method(name: str) -> Method:
    """The registered method ``name``, importing its built-in module on first use.

    Raises:
        ValueError: unknown method; the message lists the valid choices.
    """
    if name not in _REGISTRY and name in builtin_methods():
        importlib.import_module(f"{__package__}.methods.{name}")
    if name not in _REGISTRY:
        known = sorted(set(builtin_methods()) | set(_REGISTRY))
        raise ValueError(f"unknown unlearning method {name!r}; valid choices: {', '.join(known)} "
                         "(ReTrain is the 'retrain' stage; a method of your own must be registered, see "
                         "unlearn.plugins)")
    return _REGISTRY[name]


def _check_value(method: str, key: str, value: Any, default: Any, check) -> Any:
    where = f"{method}.{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        value = type(default)(value) if isinstance(default, float) else value
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    if isinstance(check, tuple) and check and callable(check[0]):
        pred, text = check
        if not pred(value):
            raise ValueError(f"{where} must be {text}, got {value!r}")
    elif check is not None and value not in check:
        raise ValueError(f"unknown {where} {value!r}; valid choices: {', '.join(map(str, check))}")
    return value


def split_method_section(method: str, section: dict | None) -> tuple[dict, bool]:
    """Split a method's params.yaml section into its loss params and the stage option
    ``save_model`` (keep the cleaned model; default false).

    Raises:
        ValueError: ``save_model`` is not true/false (names the key).
    """
    params = dict(section or {})
    save = params.pop(SAVE_KEY, False)
    if not isinstance(save, bool):
        raise ValueError(f"{method}.{SAVE_KEY} must be true or false, got {save!r}")
    return params, save


def validate_method_params(method: str, method_params: dict | None) -> dict:
    """Check a method's params section (``<method>:`` in params.yaml, without ``save_model``, see
    :func:`split_method_section`) against its registration.

    Returns:
        the full params: defaults overridden by ``method_params``.

    Raises:
        ValueError: unknown method, unknown key (a typo such as ``rga.alpah`` would otherwise be
            silently ignored), a value of the wrong type or outside its check (e.g.
            ``npo.beta`` <= 0, an unknown ``kl_direction``); the message names the key, the value
            and the valid choices.
    """
    m = get_method(method)
    given = dict(method_params or {})
    unknown = set(given) - set(m.params)
    if unknown:
        valid = ", ".join(sorted(f"{method}.{k}" for k in m.params)) or "none"
        raise ValueError(f"unknown key(s) {sorted(f'{method}.{k}' for k in unknown)}; valid keys: {valid}")
    out = dict(m.params)
    for k, v in given.items():
        out[k] = _check_value(method, k, v, m.params[k], m.checks.get(k))
    return out


def make_objective(method: str, method_params: dict) -> Callable[[Batch], tuple]:
    """The loss function of ``method`` with its params bound (validated first).

    Raises:
        ValueError: see :func:`validate_method_params`.
    """
    return functools.partial(get_method(method).loss, **validate_method_params(method, method_params))


def rga_weight(forget_logits: torch.Tensor, ref_forget_logits: torch.Tensor, alpha: float,
               kl_direction: str = "poisoned_current") -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive GA weight λ = exp(−α·KL) of Eq. 7, computed without gradient (shared by RGA and DGA).

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
    slightly below 1 even before any update — the same single forward pass serves the loss
    and λ, as in GA-style implementations.

    Returns:
        ``(lam, kl)``: scalar tensors, λ ∈ (0, 1].

    Raises:
        ValueError: unknown ``kl_direction`` (lists the valid ones).
    """
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"unknown kl_direction {kl_direction!r}; valid choices: {', '.join(KL_DIRECTIONS)}")
    with torch.no_grad():
        logp_cur = F.log_softmax(forget_logits.float(), -1)
        logp_ref = F.log_softmax(ref_forget_logits.float(), -1)
        if kl_direction == "poisoned_current":
            kl = (logp_ref.exp() * (logp_ref - logp_cur)).sum(-1).mean()
        else:
            kl = (logp_cur.exp() * (logp_cur - logp_ref)).sum(-1).mean()
        kl = kl.clamp_min(0.0)
        return torch.exp(-alpha * kl), kl


@dataclass
class UnlearnConfig:
    """Shared unlearning settings (paper §6.1: 30 epochs, batch 32, fine-tuning lr).

    One epoch is one pass over the forget set in length-grouped batches of ``batch_size``,
    each paired with a random retain batch of ``batch_size`` rows (drawn, seeded, from a
    length-grouped shuffle of the retain set, as in fine-tuning, so both halves of a step are
    padded tightly; the retain shuffle carries over between epochs); gradients are clipped to
    ``grad_clip``. Forget and retain batches go through the model in two forward passes, each
    padded to its own longest row: one joint pass padded both to the longer of the two and was
    about 7% slower per epoch on SST-2 (measured on the project's 2-core CPU). Metrics are
    evaluated every ``eval_every`` epochs (PACC and LFR only) and in full (CACC, LFR, PACC,
    trigger shift) at ``record_epochs`` and at the last epoch.

    The optimiser is AdamW with ``weight_decay`` (decoupled, per step: θ ← θ − lr·wd·θ).
    ``optimizer_reset: never`` keeps one AdamW (its moments and step count) for all epochs;
    ``epoch`` creates a fresh one at the start of every epoch, so Adam's moments and bias
    correction restart each epoch, as issue 13 reports of the paper authors' code (with weight
    decay 0.01; not checked against that code here).
    """

    epochs: int = 30
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    grad_clip: float = 1.0
    eval_every: int = 1
    record_epochs: tuple[int, ...] = (10, 20, 30)
    seed: int = 0
    optimizer_reset: str = "never"
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.optimizer_reset not in OPTIMIZER_RESETS:
            raise ValueError(f"unknown unlearn.optimizer_reset {self.optimizer_reset!r}; valid choices: "
                             f"{', '.join(OPTIMIZER_RESETS)}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not 0 <= self.weight_decay < 1:
            raise ValueError(f"unlearn.weight_decay must be a number in [0, 1), got {self.weight_decay!r}")


def epoch_optimizer(opt: torch.optim.Optimizer, model, cfg: UnlearnConfig, epoch: int) -> torch.optim.Optimizer:
    """The optimiser for unlearning epoch ``epoch`` (1-based).

    ``cfg.optimizer_reset == "epoch"``: from epoch 2 on, a fresh AdamW (lr ``cfg.lr``, weight
    decay ``cfg.weight_decay``) with empty moments and step count 0, so the epoch's first step
    is Adam's bias-corrected first step again (each weight moves by about lr); this is the
    protocol issue 13 reports of the paper authors' code (a new optimiser every epoch).
    ``"never"``: ``opt`` itself, its moments carried over.
    """
    if cfg.optimizer_reset == "epoch" and epoch > 1:
        return make_optimizer(model, cfg.lr, weight_decay=cfg.weight_decay)
    return opt


def poisoned_anchor(model) -> dict[str, torch.Tensor]:
    """θ_anchor for ``rga.anchor: poisoned``: a detached copy of every trainable parameter of
    the model unlearning starts from (the poisoned model, classifier head included), by name, for
    :func:`backbone_pairs`. P_trainable × bytes per weight of extra memory."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def backbone_pairs(model, base_state: dict[str, torch.Tensor]) -> tuple[list, list]:
    """Pair the model's trainable parameters with their θ_base values by name.

    ``base_state`` maps parameter names to their θ_base values: in full fine-tuning the
    pretrained model's (only names the base checkpoint holds, so the classification head is
    left out); with LoRA the adapters' values when they were created
    (``model.rga_adapter_init``, :func:`rga.models.add_adapters`), at which the adapted model
    equals the base model, so again the head is left out and the frozen weights, which cannot
    move, add nothing. Each θ_base copy is placed on its parameter's device in its dtype:
    P_base × (4 bytes for float32, 2 for bf16) of device memory.

    Returns:
        ``(params, base)`` lists in the same order.
    """
    params, base = [], []
    for name, p in model.named_parameters():
        if name in base_state and p.requires_grad:
            params.append(p)
            base.append(base_state[name].to(device=p.device, dtype=p.dtype))
    return params, base


def unlearn(model, tokenizer, forget_texts: Sequence[str], forget_labels: Sequence[int],
            retain_texts: Sequence[str], retain_labels: Sequence[int], method: str, cfg: UnlearnConfig,
            method_params: dict | None = None, ref_forget_logits: np.ndarray | None = None,
            base_state: dict | None = None, evaluate: Callable[[bool], dict] | None = None,
            initial_metrics: dict | None = None, on_epoch_end: Callable[[int, dict], None] | None = None, where: str = "",
            progress: bool = True, inject_nan_at_epoch: int | None = None) -> list[dict]:
    """Unlearn the forget set from ``model`` in place.

    Args:
        model, tokenizer: the poisoned model (updated in place) and its tokenizer.
        forget_texts, forget_labels: the forget set (N_f rows), e.g. CUBE's detected poison.
        retain_texts, retain_labels: the retain set (N_r rows).
        method: a registered method name (:func:`get_method`).
        cfg: :class:`UnlearnConfig`.
        method_params: ``npo``/``rga``/``dga`` section of params (β, α, kl_direction).
        ref_forget_logits: [N_f, C] poisoned-model logits on the forget rows, computed once.
        base_state: name -> θ_base tensor, for RGA's norm term. Must be None when the method's
            params say ``anchor: poisoned``: θ_anchor is then a copy of ``model`` as it is now
            (:func:`poisoned_anchor`).
        evaluate: ``evaluate(full)`` returns metrics of the current model: all of them
            (cacc/lfr/pacc/trigger_shift) when ``full`` is true (record epochs, last epoch,
            epoch 0), else at least PACC (the clean test set need not be re-scored where only
            PACC is plotted).
        initial_metrics: the poisoned model's metrics, already computed by the finetune stage;
            when given, epoch 0's record takes them instead of evaluating the unchanged model
            again.
        on_epoch_end: ``f(epoch, record)`` after each epoch (and for epoch 0), e.g. logging.
        where: cell name used in error messages.
        inject_nan_at_epoch: testing hook: the loss of that epoch's first step becomes NaN.

    Returns:
        history, one record per epoch (0 = before unlearning) with ``poison_loss`` (mean
        forget CE), ``retain_loss``, ``lambda`` (RGA/DGA) and the evaluated metrics.

    Raises:
        NonFiniteLossError: a non-finite loss; names method, cell and epoch. Records of the
            epochs before it have already been passed to ``on_epoch_end``.
        ValueError: an empty forget set, a missing reference or ``base_state``, ``base_state``
            given with ``anchor: poisoned``, or bad method params (see :func:`validate_method_params`).
    """
    spec = get_method(method)
    if len(forget_texts) == 0:
        raise ValueError(f"{where}: empty forget set")
    if spec.needs_reference and ref_forget_logits is None:
        raise ValueError(f"{method} needs the poisoned model's reference logits on the forget set")
    set_seed(cfg.seed)
    device = next(model.parameters()).device
    full_params = validate_method_params(method, method_params or {})
    if spec.needs_base and full_params.get("anchor") == "poisoned":
        if base_state:
            raise ValueError(f"{method}.anchor is 'poisoned': the norm is measured from the model unlearning starts "
                             "from, so base_state must not be given (it would be ignored)")
        base_state = poisoned_anchor(model)
    if spec.needs_base and not base_state:
        raise ValueError(f"{method} needs the base model's parameters (base_state)")
    params, base = backbone_pairs(model, base_state) if spec.needs_base else ([], [])
    objective = make_objective(method, full_params)
    opt = make_optimizer(model, cfg.lr, weight_decay=cfg.weight_decay)
    yf = torch.as_tensor(np.asarray(forget_labels), dtype=torch.long)
    yr = torch.as_tensor(np.asarray(retain_labels), dtype=torch.long)
    ref = torch.as_tensor(ref_forget_logits, dtype=torch.float32) if ref_forget_logits is not None else None
    forget_tokens = tokenize_once(tokenizer, forget_texts, cfg.max_length)
    retain_tokens = tokenize_once(tokenizer, retain_texts, cfg.max_length)
    warn_small_sets(len(forget_texts), len(retain_texts), cfg.batch_size, where)
    rng = np.random.default_rng([cfg.seed, 202])
    retain_rng = np.random.default_rng([cfg.seed, 203])
    retain_queue: list[np.ndarray] = []

    def next_retain_batch() -> np.ndarray:
        while True:
            if not retain_queue:
                retain_queue.extend(length_grouped_batches(retain_tokens.lengths, cfg.batch_size, retain_rng))
            b = retain_queue.pop()
            if len(b) == min(cfg.batch_size, len(retain_texts)):  # skip short tail batches
                return b
    history = []

    rec0 = {"epoch": 0}
    if ref is not None:
        rec0["poison_loss"] = float(F.cross_entropy(ref, yf).item())
    rec0.update(spec.initial_logs)  # e.g. RGA's λ = 1 before any update
    if initial_metrics is not None:
        rec0.update(initial_metrics)
    elif evaluate:
        rec0.update(evaluate(True))
    history.append(rec0)
    if on_epoch_end:
        on_epoch_end(0, rec0)

    desc = f"{method} {where}".strip()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        opt = epoch_optimizer(opt, model, cfg, epoch)
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        batches = length_grouped_batches(forget_tokens.lengths, cfg.batch_size, rng)
        bar = progress_bar(batches, f"{method} epoch {epoch}/{cfg.epochs}", progress)
        for step, fidx in enumerate(bar):
            ridx = next_retain_batch()
            fb = collate(tokenizer, forget_tokens.rows(fidx), device)
            rb = collate(tokenizer, retain_tokens.rows(ridx), device)
            with autocast(model):  # one autocast region: the bf16 weight casts are made once per step
                f_logits, r_logits = model(**fb).logits.float(), model(**rb).logits.float()
            out = f_logits.device  # the last layer's device (not the first) when device_map spreads the model
            b = Batch(f_logits, yf[fidx].to(out), r_logits, yr[ridx].to(out),
                      ref[fidx].to(out) if ref is not None else None, params, base, epoch)
            loss, logs = objective(b)
            if inject_nan_at_epoch == epoch and step == 0:
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"unlearning method {method!r}, cell {where or '?'}: non-finite loss "
                    f"({loss.item()}) at epoch {epoch} step {step}; metrics of epochs 0-{epoch - 1} were kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                clip_gradients(model, cfg.grad_clip)
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
        full = epoch in cfg.record_epochs or epoch == cfg.epochs
        if evaluate and (full or epoch % max(cfg.eval_every, 1) == 0):
            rec.update(evaluate(full))
        history.append(rec)
        log_epoch(desc, rec)
        if on_epoch_end:
            on_epoch_end(epoch, rec)
    model.eval()
    return history


def warn_small_sets(n_forget: int, n_retain: int, batch_size: int, where: str = "") -> None:
    """Log a warning when the forget or retain set is smaller than one batch.

    Not an error: a 1-row forget set (e.g. a detector that found almost nothing) still runs,
    one short step per epoch, but its results say little; the warning says what to change.
    """
    import logging

    log = logging.getLogger("rga")
    if n_forget < batch_size:
        log.warning("%s: the forget set has %d rows, fewer than one batch (unlearn.batch_size %d): each "
                    "epoch is one step of %d rows; check the detection result or lower unlearn.batch_size",
                    where or "unlearn", n_forget, batch_size, n_forget)
    if n_retain < batch_size:
        log.warning("%s: the retain set has %d rows, fewer than one batch (unlearn.batch_size %d): every "
                    "step reuses all of them; lower unlearn.batch_size or use more training rows",
                    where or "unlearn", n_retain, batch_size)


def count_epoch_rows(n_forget: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """How often each forget row is visited in one epoch's batches (all ones by design)."""
    batches = length_grouped_batches(np.arange(n_forget), batch_size, np.random.default_rng(seed))
    return np.bincount(np.concatenate(batches), minlength=n_forget)
