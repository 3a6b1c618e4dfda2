"""Factorized Transport alignment (`--objective ft`): this project's reading of WSDM'26 2512.18117.

Each listing is a distribution over its view embeddings with marginal weights w_s (model/view_fusion.py).
Per step a listing contributes its primary views (title, primary photo) plus ONE auxiliary view u
sampled with probability p_u = w_u / A, A = total auxiliary weight (`select_views`). Then

    m~ = sum_{s primary} w_s z_s + (w_u / p_u) z_u,   E_u[m~] = sum_s w_s z_s = m   (unbiased)

with p_u detached, so w_u / p_u = A in value and the GRADIENT is unbiased as well, including the
gradient with respect to the fusion logits (see `estimate`). The cost per listing is constant in
its number of views. Normalising m~ inside the cosine adds a
small bias (E[normalize(m~)] != normalize(m)); that is why the estimate is only used inside the
training cosine, and the exact normalize(m) over all views is what gets indexed.

Loss terms (weights in TrainConfig):
- query <-> fused item InfoNCE on normalize(m~)                            (retrieval)
- primary anchor normalize(sum_primary w_s z_s) <-> sampled aux z_u InfoNCE (cross-view)
- title <-> primary photo InfoNCE                                           (cross-modal)
- factored transport between batch distributions through r prototypes: queries vs fused items,
  primary anchors vs sampled auxiliary views (model/objectives/transport.py), O(B r).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import IMAGE, TITLE, TrainConfig
from model.objectives.base import Objective, ViewBatch, aux_mask, primary_mask
from model.objectives.contrastive import info_nce
from model.objectives.transport import FactoredTransport


def slot_of(slot_types: Tensor, view_type: int) -> int:
    """Index of the first slot of `view_type`."""
    return int((slot_types == view_type).nonzero()[0, 0])


def pair_nce(a: Tensor, b: Tensor, rows: Tensor, batch: ViewBatch) -> Tensor:
    """InfoNCE between a[rows] and b[rows] (needs >= 2 rows, else 0)."""
    if int(rows.sum()) < 2:
        return a.new_zeros(())
    return info_nce(a[rows], b[rows], batch.logit_scale, batch.same[rows][:, rows])


class FactorizedTransport(Objective):
    name = "ft"

    def __init__(self, dim: int, cfg: TrainConfig):
        super().__init__()
        self.cross_view_weight = cfg.cross_view_weight
        self.transport_weight = cfg.transport_weight
        kw = dict(n_prototypes=cfg.n_prototypes, eps=cfg.sinkhorn_eps, n_iters=cfg.sinkhorn_iters)
        self.items_ot = FactoredTransport(dim, seed=cfg.seed, **kw)
        self.views_ot = FactoredTransport(dim, seed=cfg.seed + 1, **kw)

    def select_views(
        self, present: Tensor, weights: Tensor, slot_types: Tensor, uniform: Tensor
    ) -> tuple[Tensor, Tensor]:
        encode = present & primary_mask(slot_types)  # (B, S)
        w_aux = (weights.detach().float() * (present & aux_mask(slot_types)))  # (B, S)
        total = w_aux.sum(-1)  # (B,) A
        has = total > 0  # (B,)
        # Inverse-CDF draw with p_u = w_u / A: the first slot whose cumulative share exceeds u.
        cdf = w_aux.cumsum(-1) / total.clamp(min=1e-12).unsqueeze(-1)  # (B, S)
        u = uniform.to(cdf.device, cdf.dtype).unsqueeze(-1)  # (B, 1)
        pick = (cdf <= u).sum(-1)  # (B,) zero-weight slots never start a new step of the cdf
        last = w_aux.shape[1] - 1 - (w_aux.flip(-1) > 0).int().argmax(-1)  # (B,) last weighted slot
        pick = torch.minimum(pick, last)  # u at the top of the cdf after rounding
        aux = torch.where(has, pick, torch.full_like(pick, -1))  # (B,)
        rows = has.nonzero().squeeze(1)
        encode[rows, aux[rows]] = True
        return encode, aux

    def estimate(self, b: ViewBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (m~ (B, d) unbiased estimate of m, primary mean (B, d), z_u (B, d), has-aux (B,)).

        m~ = m_prim + (w_u / p_u) z_u with p_u = w_u / A DETACHED: the value is m_prim + A z_u, and
        the gradient reaches w_u alone, scaled by 1 / p_u, so E_u[d m~] = sum_s z_s dw_s = dm too
        (for the fusion logits as for the views). Writing A z_u instead is unbiased in value only:
        every auxiliary weight then gets the same upstream gradient, through A, whichever view
        was drawn, and the model cannot learn which auxiliary view type is worth more."""
        prim = b.present & primary_mask(b.slot_types)  # (B, S)
        m_prim = torch.einsum("bs,bsd->bd", b.weights * prim, b.views)  # (B, d)
        total_aux = (b.weights * (b.present & aux_mask(b.slot_types))).sum(-1)  # (B,) A
        has = b.aux >= 0  # (B,)
        rows = torch.arange(b.views.shape[0], device=b.views.device)
        u = b.aux.clamp(min=0)  # (B,)
        z_u = b.views[rows, u] * has.unsqueeze(-1)  # (B, d)
        w_u = b.weights[rows, u] * has  # (B,)
        p_u = (w_u / total_aux.clamp(min=1e-12)).detach()  # (B,) the draw's probability
        scale = w_u / torch.where(has, p_u, torch.ones_like(p_u))  # (B,) = A in value
        return m_prim + scale.unsqueeze(-1) * z_u, m_prim, z_u, has

    def forward(self, b: ViewBatch) -> tuple[Tensor, dict[str, float]]:
        m_tilde, m_prim, z_u, has = self.estimate(b)
        fused = F.normalize(m_tilde, dim=-1)  # (B, d)
        anchor = F.normalize(m_prim, dim=-1)  # (B, d)
        l_qi = info_nce(b.query, fused, b.logit_scale, b.same, b.pair_weight,
                        negatives=b.negatives, negative_mask=b.negative_mask)
        l_cv = pair_nce(anchor, z_u, has, b)
        t, i = slot_of(b.slot_types, TITLE), slot_of(b.slot_types, IMAGE)
        both = b.encoded[:, t] & b.encoded[:, i]  # (B,)
        l_ti = pair_nce(b.views[:, t], b.views[:, i], both, b)
        l_ot_items, _ = self.items_ot(b.query, fused)
        l_ot_views = self.views_ot(anchor[has], z_u[has])[0] if int(has.sum()) >= 2 else fused.new_zeros(())
        loss = (
            l_qi
            + self.cross_view_weight * (l_cv + l_ti)
            + self.transport_weight * (l_ot_items + l_ot_views)
        )
        parts = {"qi": l_qi, "cv": l_cv, "ti": l_ti, "ot": l_ot_items + l_ot_views}
        return loss, {k: float(v.detach()) for k, v in parts.items()}
