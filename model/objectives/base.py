"""What every training objective sees: plain tensors for one batch, and a view-selection policy.

The trainer asks the objective which slots to encode (`select_views`), encodes only those, and
hands the result back as a `ViewBatch`. So an objective decides its own cost per listing: `ft`
encodes the primary views plus ONE sampled auxiliary view, `ft-allpairs`, `oat` and `pmrl` encode
every view, `clip` only the title and the primary photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.config import AUX_VIEWS, IMAGE_VIEWS, PRIMARY_VIEWS, TEXT_VIEWS, VIEW_TYPES


@dataclass
class ViewBatch:
    """One batch of B (query, listing) pairs with the listing's slots (S = len(slot_types))."""

    query: Tensor  # (B, d) unit query embeddings
    views: Tensor  # (B, S, d) unit slot embeddings; zeros where not encoded
    encoded: Tensor  # (B, S) bool: slots encoded this step
    present: Tensor  # (B, S) bool: slots the listing has
    weights: Tensor  # (B, S) fusion weights w_s over ALL present slots (differentiable)
    slot_types: Tensor  # (S,) long view type of each slot
    aux: Tensor  # (B,) long: the sampled auxiliary slot per listing, -1 when none
    same: Tensor  # (B, B) bool: off-diagonal pairs that are the same listing (not negatives)
    pair_weight: Tensor  # (B,) weight of each pair (interaction weight), mean 1
    logit_scale: Tensor  # () learned 1 / temperature
    # Mined hard negatives (model/train/negatives.py): (M, d) unit vectors of listings that join the
    # query -> listing softmax, and (B, M) True where negative m is a positive of row i after all.
    negatives: Tensor | None = None
    negative_mask: Tensor | None = None


def type_mask(slot_types: Tensor, types: tuple[int, ...]) -> Tensor:
    """(S,) long -> (S,) bool: slots whose view type is in `types`."""
    return torch.isin(slot_types, torch.tensor(types, device=slot_types.device))


def primary_mask(slot_types: Tensor) -> Tensor:
    return type_mask(slot_types, PRIMARY_VIEWS)


def aux_mask(slot_types: Tensor) -> Tensor:
    return type_mask(slot_types, AUX_VIEWS)


def text_mask(slot_types: Tensor) -> Tensor:
    return type_mask(slot_types, TEXT_VIEWS)


def image_mask(slot_types: Tensor) -> Tensor:
    return type_mask(slot_types, IMAGE_VIEWS)


def masked_mean(views: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, S, d), (B, S) bool -> (mean (B, d), has-any (B,) bool)."""
    m = mask.unsqueeze(-1).to(views.dtype)  # (B, S, 1)
    total = (views * m).sum(1)  # (B, d)
    count = m.sum(1)  # (B, 1)
    return total / count.clamp(min=1.0), count.squeeze(-1) > 0


class Objective(nn.Module):
    """Base class: encode every present slot; subclasses narrow it down."""

    name: str = ""
    # View types this objective trains, hence the ones fused into the index.
    index_views: tuple[str, ...] = VIEW_TYPES
    # What the query is contrasted with: the listing's fused vector, or (clip) its title view;
    # mined hard negatives are encoded the same way.
    query_target: str = "fused"

    def select_views(
        self, present: Tensor, weights: Tensor, slot_types: Tensor, uniform: Tensor
    ) -> tuple[Tensor, Tensor]:
        """-> (encode (B, S) bool, aux (B,) long, -1 where none).

        `uniform` (B,) holds one U[0, 1) draw per pair, made by the trainer from the run's seed for
        the GLOBAL batch: sampling depends on the pair, not on which process encodes it."""
        return present.clone(), torch.full((present.shape[0],), -1, dtype=torch.long, device=present.device)

    def forward(self, batch: ViewBatch) -> tuple[Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError
