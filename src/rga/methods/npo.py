"""NPO: negative preference optimisation (Zhang et al., 2024) with a retain term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unlearning import Batch, register


@register("npo", display="NPO", needs_reference=True, checks={"beta": (lambda v: v > 0, "> 0")})
def npo_loss(b: Batch, beta: float = 1.0) -> tuple[torch.Tensor, dict]:
    """NPO with a retain term. Scalar.

    loss = CE(retain) + mean_i [ −(2/β) · log σ(−β · (log p_θ(y_i|x_i) − log p_ref(y_i|x_i))) ]

    with p_ref the frozen poisoned model (``b.ref_forget_logits`` [B_f, C]). At p_θ = p_ref the
    forget term is (2/β)·log 2. Source: Zhang et al., "Negative Preference Optimization", 2024.
    """
    logp = F.log_softmax(b.forget_logits, -1).gather(1, b.forget_labels[:, None]).squeeze(1)
    logp_ref = F.log_softmax(b.ref_forget_logits, -1).gather(1, b.forget_labels[:, None]).squeeze(1)
    forget = (-(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref))).mean()
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    f_ce = F.cross_entropy(b.forget_logits.detach(), b.forget_labels)
    return r + forget, {"forget_ce": f_ce.item(), "retain_ce": r.item(), "npo_forget": forget.item()}
