"""`--objective oat`: RecGOAT's dual alignment, as read here (docs/METHODS.md).

Instance level (CMCL): InfoNCE between a listing's text side (mean of its text views) and image
side (mean of its photos), plus query <-> fused item InfoNCE.
Distribution level (OAT): an entropic transport plan between the batch's image cloud and text
cloud, and each image embedding is pulled toward its barycentric target in the text cloud.

RecGOAT passes the image embedding through a learnable residual adapter first. Here it does not:
an adapter that lives only inside this term is never saved nor applied at index time, and it
absorbs the alignment instead of the towers (with the embeddings frozen, the adapter alone can
drive the term toward 0 while the listing vectors stay where they were). The adapter's job, a
learned map of the image features toward the text space, is what the image heads
(model/towers.py `ImageHead`, on the served path) already are, so the term's gradient goes
straight to them.

The three pitfalls of the public code are avoided:
1. log-domain Sinkhorn on a cost normalised to [0, 1], eps 0.05 (no float32 underflow);
2. the plan's rows sum to 1/n: the barycentric map rescales them to 1 before transporting;
3. the alignment term is a cosine DISTANCE that is minimised (tests check the sign).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import TrainConfig
from model.objectives.base import Objective, ViewBatch, image_mask, masked_mean, text_mask
from model.objectives.contrastive import info_nce
from model.objectives.ft import pair_nce
from model.objectives.sinkhorn import barycentric_map, sinkhorn_log


def oat_alignment(source: Tensor, target: Tensor, eps: float, n_iters: int) -> Tensor:
    """Mean cosine distance between source points and their barycentric targets in `target`.

    source (n, d), target (m, d) unit vectors (not renormalised here). The plan and the targets
    are computed on detached embeddings and used as fixed goals (a stop-gradient, like a pseudo
    label: this loss is not the OT value, so no envelope argument applies); the gradient goes to
    `source` only, -goal_i / n for point i."""
    cost = 1.0 - source.detach() @ target.detach().T  # (n, m) in [0, 2]
    cost = cost / cost.max().clamp(min=1e-6)  # normalised to [0, 1]
    n, m = cost.shape
    a = torch.full((n,), 1.0 / n, device=cost.device, dtype=cost.dtype)
    b = torch.full((m,), 1.0 / m, device=cost.device, dtype=cost.dtype)
    log_plan = sinkhorn_log(cost, a, b, eps=eps, n_iters=n_iters)  # (n, m), rows sum to 1/n
    goal = F.normalize(barycentric_map(log_plan, target.detach()), dim=-1)  # (n, d) rows rescaled
    return (1.0 - (source * goal.to(source.dtype)).sum(-1)).mean()


class OptimalAdaptiveTransport(Objective):
    name = "oat"

    def __init__(self, dim: int, cfg: TrainConfig):
        super().__init__()
        self.cross_view_weight = cfg.cross_view_weight
        self.transport_weight = cfg.transport_weight
        self.eps = max(cfg.sinkhorn_eps, 0.05)
        self.n_iters = cfg.sinkhorn_iters

    def forward(self, b: ViewBatch) -> tuple[Tensor, dict[str, float]]:
        fused = F.normalize((b.weights.unsqueeze(-1) * b.views).sum(1), dim=-1)  # (B, d)
        l_qi = info_nce(b.query, fused, b.logit_scale, b.same, b.pair_weight,
                        negatives=b.negatives, negative_mask=b.negative_mask)
        text, has_t = masked_mean(b.views, b.encoded & text_mask(b.slot_types))  # (B, d), (B,)
        image, has_i = masked_mean(b.views, b.encoded & image_mask(b.slot_types))
        both = has_t & has_i  # (B,)
        text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
        l_cmcl = pair_nce(text, image, both, b)
        l_oat = (
            oat_alignment(image[both], text[both], self.eps, self.n_iters)
            if int(both.sum()) >= 2
            else fused.new_zeros(())
        )
        loss = l_qi + self.cross_view_weight * l_cmcl + self.transport_weight * l_oat
        parts = {"qi": l_qi, "cmcl": l_cmcl, "oat": l_oat}
        return loss, {k: float(v.detach()) for k, v in parts.items()}
