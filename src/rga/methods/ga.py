"""GA: vanilla gradient ascent on the forget set with a retain term (paper §3.2, Eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unlearning import Batch, register


@register("ga", display="GA", checks={"objective": ("eq3",)})
def ga_loss(b: Batch, objective: str = "eq3") -> tuple[torch.Tensor, dict]:
    """Vanilla gradient ascent, Eq. 3: CE(retain) − CE(forget). Scalar.

    Args:
        b: forget logits [B_f, C] and labels [B_f], retain logits [B_r, C] and labels [B_r].
        objective: ``eq3`` (the only form; kept as a param so a variant can be added by name).

    Returns:
        ``(loss, logs)`` with ``forget_ce`` and ``retain_ce`` in nats.
    """
    f = F.cross_entropy(b.forget_logits, b.forget_labels)
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    return r - f, {"forget_ce": f.item(), "retain_ce": r.item()}
