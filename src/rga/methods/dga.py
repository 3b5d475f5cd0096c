"""DGA: Dynamic Gradient Ascent, the paper's Table 3 ablation (RGA without the norm term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unlearning import KL_DIRECTIONS, Batch, register, rga_weight


@register("dga", display="DGA", needs_reference=True, initial_logs={"lambda": 1.0},
          checks={"alpha": (lambda v: v >= 0, ">= 0"), "kl_direction": KL_DIRECTIONS})
def dga_loss(b: Batch, alpha: float = 2.0, kl_direction: str = "poisoned_current") -> tuple[torch.Tensor, dict]:
    """RGA's terms i + ii (Eq. 6 with β = 0): −λ·CE(forget) + CE(retain), λ = exp(−α·KL) (Eq. 7). Scalar."""
    lam, kl = rga_weight(b.forget_logits, b.ref_forget_logits, alpha, kl_direction)
    f = F.cross_entropy(b.forget_logits, b.forget_labels)
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    return -lam * f + r, {"forget_ce": f.item(), "retain_ce": r.item(), "lambda": lam.item(), "kl": kl.item()}
