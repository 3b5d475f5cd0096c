"""FT: fine-tuning on the retain set only, the simplest backdoor-defence baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unlearning import Batch, register


@register("ft", display="FT")
def ft_loss(b: Batch) -> tuple[torch.Tensor, dict]:
    """Retain-only fine-tuning: CE(retain). Scalar.

    The forget rows get no gradient; their CE is logged (``forget_ce``) so FT's poison loss can
    be compared with the other methods'. FT runs the same steps, retain batches and learning
    rate as every method (one step per forget batch), so it is the lower bound of what the
    retain term alone does: the "fine-tuning" defence of the backdoor-defence literature
    (e.g. Liu et al., 2018, "Fine-Pruning"), here without pruning.
    """
    r = F.cross_entropy(b.retain_logits, b.retain_labels)
    f = F.cross_entropy(b.forget_logits.detach(), b.forget_labels)
    return r, {"forget_ce": f.item(), "retain_ce": r.item()}
