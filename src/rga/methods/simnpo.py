"""SimNPO: simple, reference-free NPO (Fan et al., 2024, "Simplicity Prevails: Rethinking
Negative Preference Optimization for LLM Unlearning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unlearning import Batch, register


@register("simnpo", display="SimNPO", checks={"beta": (lambda v: v > 0, "> 0"), "gamma": (lambda v: v >= 0, ">= 0")})
def simnpo_loss(b: Batch, beta: float = 2.5, gamma: float = 0.0) -> tuple[torch.Tensor, dict]:
    """SimNPO with a retain term. Scalar.

    loss = CE(retain) + mean_i [ −(2/β) · log σ(−(β/|y_i|) · log p_θ(y_i|x_i) − γ) ]

    SimNPO replaces NPO's reference model by a length-normalised reward (β/|y|)·log p_θ(y|x)
    and a reward margin γ. For classification the response y is one label, so |y| = 1: the
    reward is β·log p_θ(y|x), i.e. NPO with log p_ref ≡ −γ/β, and the margin γ shifts the point
    where the forget term saturates (at γ = 0 the term is (2/β)·log(1 + p_θ(y|x)^β)). Defaults:
    β = 2.5, γ = 0 (the margin-free form); tune them per model with ``-S simnpo.beta=…``. No
    reference logits are needed.

    Args:
        b: forget logits [B_f, C] and labels [B_f], retain logits [B_r, C] and labels [B_r].

    Returns:
        ``(loss, logs)`` with ``forget_ce``, ``retain_ce`` and ``simnpo_forget`` in nats.
    """
    logp = F.log_softmax(b.forget_logits, -1).gather(1, b.forget_labels[:, None]).squeeze(1)
    forget = (-(2.0 / beta) * F.logsigmoid(-beta * logp - gamma)).mean()
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    return r + forget, {"forget_ce": float(-logp.mean().item()), "retain_ce": r.item(),
                        "simnpo_forget": forget.item()}
