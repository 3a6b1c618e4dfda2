"""`--objective ft-allpairs`: Factorized Transport without view sampling, to measure what sampling
saves. Every view of every listing is encoded each step (cost linear in views) and every PAIR of
views gets a cross-view InfoNCE term (quadratic in views); the fused vector is the exact
normalize(m). Not meant for production builds."""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from torch import Tensor

from model.objectives.base import Objective, ViewBatch, aux_mask, primary_mask
from model.objectives.contrastive import info_nce
from model.objectives.ft import FactorizedTransport, pair_nce


class FactorizedTransportAllPairs(FactorizedTransport):
    """ft's parameters (its two factored transports, same names and seeds), every present view
    encoded (no sampling: the base Objective's policy) and every pair of views aligned."""

    name = "ft-allpairs"
    select_views = Objective.select_views

    def forward(self, b: ViewBatch) -> tuple[Tensor, dict[str, float]]:
        fused = F.normalize(torch_einsum(b.weights, b.views), dim=-1)  # (B, d) exact m
        l_qi = info_nce(b.query, fused, b.logit_scale, b.same, b.pair_weight,
                        negatives=b.negatives, negative_mask=b.negative_mask)
        terms = []
        for s, t in itertools.combinations(range(b.views.shape[1]), 2):  # quadratic in views
            rows = b.encoded[:, s] & b.encoded[:, t]  # (B,)
            if int(rows.sum()) >= 2:
                terms.append(pair_nce(b.views[:, s], b.views[:, t], rows, b))
        l_cv = sum(terms) / len(terms) if terms else fused.new_zeros(())
        prim = b.present & primary_mask(b.slot_types)  # (B, S)
        anchor = F.normalize(torch_einsum(b.weights * prim, b.views), dim=-1)  # (B, d)
        l_ot = self.items_ot(b.query, fused)[0]
        aux_slots = aux_mask(b.slot_types).nonzero().squeeze(1).tolist()
        for s in aux_slots:
            rows = b.encoded[:, s]
            if int(rows.sum()) >= 2:
                l_ot = l_ot + self.views_ot(anchor[rows], b.views[rows, s])[0] / len(aux_slots)
        loss = l_qi + self.cross_view_weight * l_cv + self.transport_weight * l_ot
        parts = {"qi": l_qi, "cv": l_cv, "ot": l_ot}
        return loss, {k: float(v.detach()) for k, v in parts.items()}


def torch_einsum(weights: Tensor, views: Tensor) -> Tensor:
    """(B, S) weights, (B, S, d) views -> (B, d) weighted sum."""
    return (weights.unsqueeze(-1) * views).sum(1)
