"""GA stopped early: a control that attributes RGA's effect (README "Inside RGA")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unlearning import Batch, register


@register("ga_stop", display="GA-stop", checks={"stop_epoch": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")})
def ga_stop_loss(b: Batch, stop_epoch: int = 5) -> tuple[torch.Tensor, dict]:
    """GA (Eq. 3) in epochs 1 .. ``stop_epoch`` − 1, retain-only fine-tuning from epoch ``stop_epoch`` on. Scalar.

    Before ``stop_epoch``: CE(retain) − CE(forget); from it on: CE(retain) (the forget CE is
    logged without gradient, as in FT). Set ``stop_epoch`` to the epoch whose mean λ first
    falls below 0.05 in RGA's run of the same cell: from there on RGA is, to within 5%, its
    retain and norm terms alone, so GA-stop tells whether RGA's outcome is "a short ascent,
    then fine-tuning on the retain set" (default 5: SST-2 BadNets seed 0, where RGA's λ is
    0.050 in epoch 4 and 0.011 in epoch 5). ``stop_epoch`` 1 is FT.

    Raises:
        ValueError: ``stop_epoch`` is not an integer ≥ 1 (at params validation), or ``b.epoch``
            is None (a batch built outside :func:`rga.unlearning.unlearn`, which sets it).
    """
    if b.epoch is None:
        raise ValueError("ga_stop needs the current epoch (Batch.epoch, 1-based), which rga.unlearning.unlearn sets")
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    if b.epoch < stop_epoch:
        f = F.cross_entropy(b.forget_logits, b.forget_labels)
        return r - f, {"forget_ce": f.item(), "retain_ce": r.item()}
    f = F.cross_entropy(b.forget_logits.detach(), b.forget_labels)
    return r, {"forget_ce": f.item(), "retain_ce": r.item()}
