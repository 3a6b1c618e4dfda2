"""`--objective pmrl`: anchor-free alignment of all of a listing's views (PMRL, 2025).

Stack a listing's M unit view embeddings; its singular values (from the M x M Gram matrix, `eigh`,
model/objectives/spectral.py) are treated as logits and soft-maxed toward the largest: a rank-1
stack means all views agree. An InfoNCE across listings on the sign-fixed leading singular vector
keeps listings apart: each view's positive is its own listing's leading vector. Plus query <->
fused item InfoNCE for retrieval.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from model.config import TrainConfig
from model.objectives.base import Objective, ViewBatch
from model.objectives.contrastive import info_nce
from model.objectives.ft import pair_nce
from model.objectives.spectral import leading_vector, pmrl_rank_loss


class PMRL(Objective):
    name = "pmrl"

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cross_view_weight = cfg.cross_view_weight
        self.temperature = cfg.pmrl_temperature

    def forward(self, b: ViewBatch) -> tuple[Tensor, dict[str, float]]:
        fused = F.normalize((b.weights.unsqueeze(-1) * b.views).sum(1), dim=-1)  # (B, d)
        l_qi = info_nce(b.query, fused, b.logit_scale, b.same, b.pair_weight,
                        negatives=b.negatives, negative_mask=b.negative_mask)
        l_rank, _ = pmrl_rank_loss(b.views, b.encoded, self.temperature)
        lead = leading_vector(b.views, b.encoded)  # (B, d) sign-fixed
        terms = [pair_nce(b.views[:, s], lead, b.encoded[:, s], b) for s in range(b.views.shape[1])]
        l_inst = sum(terms) / len(terms)
        loss = l_qi + self.cross_view_weight * (l_rank + l_inst)
        parts = {"qi": l_qi, "rank": l_rank, "inst": l_inst}
        return loss, {k: float(v.detach()) for k, v in parts.items()}
