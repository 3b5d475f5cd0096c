"""RGA: Robust Gradient Ascent (the paper's method, §5, Eq. 6-7)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..unlearning import KL_DIRECTIONS, Batch, register, rga_weight

NORMS = ("l2", "squared")
ANCHORS = ("base", "poisoned")


class _TensorNorms(torch.autograd.Function):
    """‖θ_i − θ_base,i‖₂ per tensor with a lean backward (see :func:`tensor_norms`)."""

    @staticmethod
    def forward(ctx, base, *params):
        diffs = torch._foreach_sub(list(params), list(base))
        norms = torch._foreach_norm(diffs)
        # detached copies: the outputs themselves on ctx would make a reference cycle through
        # their grad_fn that keeps the differences alive when no backward ever runs
        ctx.diffs, ctx.norms = diffs, [n.detach() for n in norms]
        return tuple(norms)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        diffs, norms = ctx.diffs, ctx.norms
        if diffs is None:
            raise RuntimeError("tensor_norms: backward through the same graph twice is not supported "
                               "(the differences were turned into the gradients in place)")
        ctx.diffs = ctx.norms = None
        out = []
        for d, n, g in zip(diffs, norms, grads):
            # autograd's norm backward: g · (d / n).masked_fill_(n == 0, 0); the same roundings in
            # place on d. On the CPU the test n == 0 is free, and where n > 0 the fill changes
            # nothing, so it is skipped (where n == 0 the result is 0 · g, as autograd's).
            if d.device.type != "cpu":  # no host sync per tensor on accelerators
                out.append(d.div_(n).masked_fill_(n == 0, 0).mul_(g))
            elif n.item() == 0:
                out.append(d.zero_().mul_(g))
            else:
                out.append(d.div_(n).mul_(g))
        return (None, *out)


def tensor_norms(params: Sequence[torch.Tensor], base: Sequence[torch.Tensor]) -> torch.Tensor:
    """[n_tensors] float32: ‖θ_i − θ_base,i‖₂ per parameter tensor, on one device (the first
    norm's, so it also works under device_map). Differentiable w.r.t. ``params`` (a single
    backward per graph); empty [0] for no tensors.

    Computed in one fused pass (``torch._foreach_sub`` / ``torch._foreach_norm``) instead of a
    Python loop over hundreds of tensors; :func:`param_distance` and :func:`squared_distance`
    reduce it. The backward gives exactly autograd's gradient of the norm,
    ∂L/∂‖d_i‖ · d_i / ‖d_i‖ (0 where d_i = 0), bit for bit, but computes it in place in the
    saved differences d_i instead of allocating two new tensors per parameter: with MiniLM's
    47 MB word embedding that is most of the term's cost.

    Raises:
        RuntimeError: a second backward through the same graph (``retain_graph=True``): the
            saved differences were consumed by the first; build the term again instead.
    """
    if not params:
        return torch.zeros(0)
    norms = _TensorNorms.apply(list(base), *params)
    return torch.stack([n.float().to(norms[0].device) for n in norms])


def param_distance(params: Sequence[torch.Tensor], base: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_i ‖θ_i − θ_base,i‖₂ over parameter tensors (plain, not squared, norms; Eq. 6 term iii
    applied per tensor as in the authors' implementation). Differentiable w.r.t. ``params``.
    Returns a scalar (0 when θ = θ_base or there are no tensors)."""
    return tensor_norms(params, base).sum()


def squared_distance(params: Sequence[torch.Tensor], base: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_i ‖θ_i − θ_base,i‖₂² = ‖θ − θ_base‖₂² over all parameter tensors (an L2-SP style
    penalty; beyond the paper). Differentiable; scalar, 0 when θ = θ_base.

    Its gradient 2(θ − θ_base) shrinks as θ approaches θ_base, whereas the plain norm's
    gradient (θ_i − θ_base,i)/‖θ_i − θ_base,i‖ has length 1 per tensor however close θ_i is,
    so the plain norm keeps pulling every tensor toward the base model at a fixed rate.
    """
    return (tensor_norms(params, base) ** 2).sum()


@register("rga", display="RGA", needs_reference=True, needs_base=True, initial_logs={"lambda": 1.0},
          checks={"alpha": (lambda v: v >= 0, ">= 0"), "beta": (lambda v: v >= 0, ">= 0"),
                  "kl_direction": KL_DIRECTIONS, "norm": NORMS, "anchor": ANCHORS})
def rga_loss(b: Batch, alpha: float = 2.0, beta: float = 0.05, kl_direction: str = "poisoned_current",
             norm: str = "l2", anchor: str = "base") -> tuple[torch.Tensor, dict]:
    """Robust Gradient Ascent, Eq. 6: −λ·CE(forget) + CE(retain) + β·Σ‖θ − θ_base‖₂. Scalar.

    Defaults are the paper's RGA. Two variants, beyond the paper (README "Inside RGA"):

    - ``norm: squared``: the norm term is β·Σ_i ‖θ_i − θ_base,i‖₂² (:func:`squared_distance`);
      ``l2`` (default) is Eq. 6's plain norm (:func:`param_distance`).
    - ``anchor: poisoned``: θ_base is the poisoned model at the start of unlearning (every
      trainable tensor, the classifier head included), so the term holds the model near the
      fine-tuned weights instead of pulling it back toward the pretrained ones.
      :func:`rga.unlearning.unlearn` builds ``b.base`` from the model itself
      (:func:`rga.unlearning.poisoned_anchor`); ``base`` (default) is the pretrained model, as in Eq. 6.

    The logged ``param_distance`` is always Σ_i ‖θ_i − θ_anchor,i‖₂ (plain norms), whichever
    ``norm`` the loss uses.

    λ = exp(−α·KL) comes from :func:`rga.unlearning.rga_weight` (Eq. 7, no gradient flows
    through it). ``b.params`` are the backbone parameters that exist in the base model (the
    classifier head is excluded: the base model has none), ``b.base`` their pretrained values
    θ_base (both lists of tensors of matching shapes). With LoRA, ``b.params`` are the adapter
    tensors (lora_A, lora_B of every adapted module) and ``b.base`` their values when the
    adapters were created, where the adapted model equals the base model; the head is
    excluded as in full fine-tuning (:func:`rga.unlearning.backbone_pairs`).
    """
    lam, kl = rga_weight(b.forget_logits, b.ref_forget_logits, alpha, kl_direction)
    f = F.cross_entropy(b.forget_logits, b.forget_labels)
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    loss = -lam * f + r
    logs = {"forget_ce": f.item(), "retain_ce": r.item(), "lambda": lam.item(), "kl": kl.item()}
    if beta:
        norms = tensor_norms(b.params, b.base)  # one pass serves the loss and the logged distance
        dist = norms.sum()
        loss = loss + beta * (dist if norm == "l2" else (norms ** 2).sum())
        logs["param_distance"] = dist.item()
    return loss, logs
