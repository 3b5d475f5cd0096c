"""Retain + norm: RGA with λ ≡ 0, a control that attributes RGA's effect (README "Inside RGA")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unlearning import Batch, register
from .rga import param_distance


@register("retain_norm", display="Retain+norm", needs_base=True,
          checks={"beta": (lambda v: v >= 0, ">= 0")})
def retain_norm_loss(b: Batch, beta: float = 0.05) -> tuple[torch.Tensor, dict]:
    """RGA's terms ii + iii without any ascent (Eq. 6 with λ ≡ 0): CE(retain) + β·Σ_i ‖θ_i − θ_base,i‖₂. Scalar.

    ``b.params`` / ``b.base`` as for RGA (backbone tensors and their pretrained values; the head
    is excluded). The forget CE is logged without gradient. What RGA does after its λ has
    decayed to ~0, from the first epoch: the difference between RGA and this control is what
    RGA's early ascent contributes.
    """
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    f = F.cross_entropy(b.forget_logits.detach(), b.forget_labels)
    dist = param_distance(b.params, b.base)
    return r + beta * dist, {"forget_ce": f.item(), "retain_ce": r.item(), "param_distance": dist.item()}
