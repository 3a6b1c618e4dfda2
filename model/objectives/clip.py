"""`--objective clip`: the single-view baseline the multi-view objectives must beat.

CLIP/ALIGN-style: query <-> title InfoNCE and title <-> primary photo InfoNCE. Only the primary
views are trained and indexed (`index_views`): auxiliary views never reach the item vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.config import IMAGE, TITLE
from model.objectives.base import Objective, ViewBatch, primary_mask
from model.objectives.contrastive import info_nce
from model.objectives.ft import pair_nce, slot_of


class ClipBaseline(Objective):
    name = "clip"
    index_views = ("title", "image")
    query_target = "title"  # its query term compares the query with the title view alone

    def __init__(self, cross_view_weight: float = 0.5):
        super().__init__()
        self.cross_view_weight = cross_view_weight

    def select_views(
        self, present: Tensor, weights: Tensor, slot_types: Tensor, uniform: Tensor
    ) -> tuple[Tensor, Tensor]:
        none = torch.full((present.shape[0],), -1, dtype=torch.long, device=present.device)
        return present & primary_mask(slot_types), none

    def forward(self, b: ViewBatch) -> tuple[Tensor, dict[str, float]]:
        t, i = slot_of(b.slot_types, TITLE), slot_of(b.slot_types, IMAGE)
        l_qt = info_nce(b.query, b.views[:, t], b.logit_scale, b.same, b.pair_weight,
                        negatives=b.negatives, negative_mask=b.negative_mask)
        l_ti = pair_nce(b.views[:, t], b.views[:, i], b.encoded[:, t] & b.encoded[:, i], b)
        loss = l_qt + self.cross_view_weight * l_ti
        return loss, {"qt": float(l_qt.detach()), "ti": float(l_ti.detach())}
