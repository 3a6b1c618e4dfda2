"""Fusion of a listing's views into one vector: normalize(sum_s w_s z_s).

Views come as slots (model.config.slot_types): one slot per view instance, several for the other
photos. Each view TYPE t has a weight a_t: a learned logit plus a fixed log-prior that favours the
primary views (title, primary photo), soft-maxed over the types the listing HAS (a missing view gets
weight 0 and takes nothing from the others); a type's weight is shared equally by its instances,
w_s = a_t(s) / n_t(s). The unnormalised mean `m = sum_s w_s z_s` is what Factorized Transport
estimates during training (model/objectives/ft.py); the index stores normalize(m) computed with
all views. The same module serves training and indexing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import PRIMARY_VIEWS, VIEW_TYPES


def type_onehot(slot_types: Tensor, n_types: int = len(VIEW_TYPES)) -> Tensor:
    """(S,) long -> (S, T) float one-hot."""
    return F.one_hot(slot_types, n_types).float()


class Fusion(nn.Module):
    def __init__(self, primary_prior: float, n_types: int = len(VIEW_TYPES)):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_types))  # learned per view type
        prior = torch.zeros(n_types)
        prior[list(PRIMARY_VIEWS)] = primary_prior
        self.register_buffer("prior", prior, persistent=True)

    def type_weights(self, type_present: Tensor) -> Tensor:
        """(B, T) bool -> (B, T) softmax weights over the present types (all-zero rows stay 0)."""
        logits = (self.logits + self.prior).float().expand(type_present.shape)  # (B, T)
        a = torch.softmax(logits.masked_fill(~type_present, float("-inf")), dim=-1)  # (B, T)
        return torch.nan_to_num(a, nan=0.0)  # a row with no view: softmax of all -inf is NaN

    def slot_weights(self, present: Tensor, slot_types: Tensor, allowed: Tensor | None = None) -> Tensor:
        """present (B, S) bool, slot_types (S,) long -> (B, S) weights w_s, summing to 1 per row
        over the present slots of allowed types (0 for a listing with none)."""
        onehot = type_onehot(slot_types.to(present.device), self.logits.numel())  # (S, T)
        if allowed is not None:
            present = present & allowed.to(present.device)[slot_types.to(present.device)]  # (B, S)
        counts = present.float() @ onehot  # (B, T) instances per type
        a = self.type_weights(counts > 0)  # (B, T)
        per_slot = (a / counts.clamp(min=1.0)) @ onehot.T  # (B, S)
        return per_slot * present

    def forward(
        self, z: Tensor, present: Tensor, slot_types: Tensor, allowed: Tensor | None = None
    ) -> Tensor:
        """z (B, S, d) unit view embeddings (anything where missing) -> (B, d) unit fused vector."""
        w = self.slot_weights(present, slot_types, allowed)  # (B, S)
        z = torch.where(present.unsqueeze(-1), z, torch.zeros_like(z))  # (B, S, d): no NaN leaks
        m = torch.einsum("bs,bsd->bd", w.to(z.dtype), z)  # (B, d) unnormalised mean
        return F.normalize(m, dim=-1)


@torch.no_grad()
def view_weights(fusion: Fusion, index_views: tuple[str, ...] = VIEW_TYPES) -> dict[str, float]:
    """The learned weight a_t of each indexed view type, {view type: weight}, for a listing that
    has every one of them (prior included; they sum to 1; a listing missing some types renormalises
    over the rest). Written to the version manifest (`view_weights`) and shown by `service versions`."""
    present = torch.tensor([[t in index_views for t in VIEW_TYPES]], device=fusion.logits.device)  # (1, T)
    a = fusion.type_weights(present)[0]  # (T,)
    return {t: round(float(a[i]), 4) for i, t in enumerate(VIEW_TYPES) if t in index_views}
