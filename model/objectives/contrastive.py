"""Instance-level InfoNCE on cosine logits, with in-batch duplicates removed from the negatives.

Row i of `a` is paired with row i of `b`; every other row of the batch is a negative, except the
pairs marked in `same` (the same listing twice in a batch, a query that clicked both): those are
also positives and are removed from the softmax (logit -inf) rather than pushed apart. Weights give
a weighted mean over rows; a weight of 0 excludes a row whose positive is missing (its vector still
serves as a negative for the other rows: give it a sensible value or mark it in `same`).
Mined hard negatives (model/train/negatives.py) are extra columns of the a->b softmax only: listings
that are nobody's positive in the batch, so they have no b->a row of their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def same_from_ids(ids: torch.Tensor) -> torch.Tensor:
    """(B, B) bool, True where i != j and ids[i] == ids[j]: the other positives of each row."""
    if ids.dim() != 1:
        raise ValueError(f"ids: expected (B,), got shape {tuple(ids.shape)}")
    same = ids.unsqueeze(0) == ids.unsqueeze(1)  # (B, B)
    return same & ~torch.eye(ids.shape[0], dtype=torch.bool, device=ids.device)


def _check(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    same: torch.Tensor | None,
    weights: torch.Tensor | None,
) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"info_nce: a and b must both be (B, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale: expected a scalar tensor, got shape {tuple(logit_scale.shape)}")
    n = a.shape[0]
    if same is not None and (same.shape != (n, n) or same.dtype != torch.bool):
        raise ValueError(f"same: expected a bool ({n}, {n}) tensor, got {same.dtype} {tuple(same.shape)}")
    if weights is not None:
        if weights.shape != (n,):
            raise ValueError(f"weights: expected ({n},), got {tuple(weights.shape)}")
        if bool((weights < 0).any()):
            raise ValueError(f"weights: must be >= 0, got min {weights.min().item()}")


def _check_negatives(a: torch.Tensor, negatives: torch.Tensor, mask: torch.Tensor | None) -> None:
    if negatives.dim() != 2 or negatives.shape[1] != a.shape[1]:
        raise ValueError(f"negatives: expected (M, {a.shape[1]}), got {tuple(negatives.shape)}")
    want = (a.shape[0], negatives.shape[0])
    if mask is not None and (tuple(mask.shape) != want or mask.dtype != torch.bool):
        raise ValueError(f"negative_mask: expected a bool {want} tensor, got {mask.dtype} {tuple(mask.shape)}")


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    same: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    symmetric: bool = True,
    negatives: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE between paired rows of a (B, d) and b (B, d); a scalar.

    logits = logit_scale * a b^T: `a` and `b` must already be unit vectors (the towers normalise;
    nothing is renormalised here, so a non-unit input changes the temperature instead of hiding a
    bug). `logit_scale` is the multiplier 1 / temperature (not its log). `same[i, j]` (i != j; the
    diagonal is ignored) marks b_j as another positive of a_i: that logit leaves the a->b softmax
    of row i and the b->a softmax of column j. `weights` (B,) >= 0 give a weighted mean over rows
    (both directions); if they sum to 0 the loss is 0. `symmetric` averages a->b and b->a.
    `negatives` (M, d) unit vectors join every a->b softmax as extra columns (mined hard
    negatives); `negative_mask[i, m]` True leaves negative m out of row i's softmax (it is one of
    row i's positives after all). The b->a direction is unchanged.
    Computed in float32 at least, with autocast off.
    """
    _check(a, b, logit_scale, same, weights)
    if negatives is not None:
        _check_negatives(a, negatives, negative_mask)
    n = a.shape[0]
    dtype = torch.promote_types(a.dtype, torch.float32)
    with torch.autocast(device_type=a.device.type, enabled=False):
        logits = logit_scale.to(dtype).reshape(()) * (a.to(dtype) @ b.to(dtype).T)  # (B, B)
        if same is not None:
            off_diag = same & ~torch.eye(n, dtype=torch.bool, device=same.device)  # (B, B)
            logits = logits.masked_fill(off_diag, float("-inf"))  # (B, B)
        target = torch.arange(n, device=a.device)  # (B,)
        rows = logits
        if negatives is not None and negatives.shape[0]:
            extra = logit_scale.to(dtype).reshape(()) * (a.to(dtype) @ negatives.to(dtype).T)  # (B, M)
            if negative_mask is not None:
                extra = extra.masked_fill(negative_mask, float("-inf"))  # (B, M)
            rows = torch.cat([logits, extra], dim=1)  # (B, B + M)
        per_row = F.cross_entropy(rows, target, reduction="none")  # (B,)
        if symmetric:
            per_row = 0.5 * (per_row + F.cross_entropy(logits.T, target, reduction="none"))  # (B,)
        if weights is None:
            return per_row.mean()
        w = weights.to(dtype)  # (B,)
        return (w * per_row).sum() / w.sum().clamp_min(torch.finfo(dtype).tiny)
