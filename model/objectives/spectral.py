"""Spectral kernels of PMRL (docs/METHODS.md, `pmrl`): anchor-free alignment of the M views of an item.

An item's M unit view embeddings, stacked as Z (M, d), are fully aligned exactly when Z has rank 1:
one singular value, sqrt(M), and the others 0. The singular values come from the M x M Gram
G = Z Z^T (eigenvalues lambda = sigma^2), never from a d x d SVD: M is at most a handful, d is the
embedding width. Missing views are masked to zero rows, which only adds zero eigenvalues.

Two numerical traps, both handled here:
- eigenvalues repeat exactly when views are perfectly aligned (all but one are 0) or padded, and
  the textbook eigenvector gradient divides by their gap: `safe_eigh` drops those terms, so
  gradients stay finite;
- d sigma / d lambda = 1 / (2 sqrt(lambda)) is infinite at 0: sigma = sqrt(max(lambda, 0) +
  SIGMA_FLOOR) caps the slope (see SIGMA_FLOOR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Added to the eigenvalue under the square root. 1e-6 is the float32 noise level of the
# eigenvalues of a Gram of unit vectors (~1e-7 * M): below it an eigenvalue is indistinguishable
# from 0, so it gets sigma ~ 1e-3 and a slope of at most 500 instead of infinity. It shifts the
# logit of a zero singular value by 1e-3 / temperature: negligible.
SIGMA_FLOOR = 1e-6
# Relative eigen-gap under which the eigenvector terms of the eigh gradient are dropped: float32
# eigenvalues of a matrix with spectral norm s carry errors ~1e-7 * s, so a gap below 1e-4 * s is
# treated as a tie (its eigenvectors are not determined by the matrix anyway).
GAP_EPS = 1e-4


class _SafeEigh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gram: torch.Tensor, gap_eps: float) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        evals, evecs = torch.linalg.eigh(gram)  # (..., M), (..., M, M)
        ctx.save_for_backward(evals, evecs)
        ctx.gap_eps = gap_eps
        return evals, evecs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_evals: torch.Tensor, g_evecs: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        evals, evecs = ctx.saved_tensors
        gap = evals.unsqueeze(-2) - evals.unsqueeze(-1)  # (..., M, M): gap[i, j] = lambda_j - lambda_i
        scale = evals.abs().amax(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
        distinct = gap.abs() > ctx.gap_eps * scale  # (..., M, M), False on the diagonal
        inv_gap = torch.where(distinct, 1.0 / torch.where(distinct, gap, 1.0), 0.0)  # (..., M, M)
        inner = torch.diag_embed(g_evals) + inv_gap * (evecs.mT @ g_evecs)  # (..., M, M)
        grad = evecs @ inner @ evecs.mT  # (..., M, M)
        return 0.5 * (grad + grad.mT), None  # symmetric: G is symmetric, so is its gradient


def safe_eigh(gram: torch.Tensor, gap_eps: float = GAP_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of symmetric (..., M, M) matrices: (eigenvalues ascending, eigenvectors
    as columns), like `torch.linalg.eigh`, with a backward that stays finite on repeated eigenvalues.

    Backward: dG = V (diag(d lambda) + F o (V^T dV)) V^T with F_ij = 1 / (lambda_j - lambda_i) only
    where |lambda_j - lambda_i| > gap_eps * max|lambda| and 0 elsewhere (torch's own backward returns
    inf/NaN there). Where gaps are large this is torch's gradient (symmetrised); inside a degenerate
    eigenspace the dropped terms would rotate the basis within the space, which a loss that depends
    on the space (or on eigenvalues only, like `pmrl_rank_loss`) does not see.
    """
    if gram.dim() < 2 or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"gram: expected square (..., M, M), got {tuple(gram.shape)}")
    return _SafeEigh.apply(gram, gap_eps)


def _masked_gram(views: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if views.dim() != 3 or mask.shape != views.shape[:2]:
        raise ValueError(
            f"views (B, M, d) and mask (B, M) expected, got {tuple(views.shape)} and {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(views.dtype, torch.float32)
    # where, not multiply: a padded slot may hold garbage (even NaN), which must not leak.
    z = torch.where(mask.bool().unsqueeze(-1), views.to(dtype), 0.0)  # (B, M, d)
    return z, z @ z.mT  # (B, M, d), (B, M, M)


def pmrl_rank_loss(
    views: torch.Tensor, mask: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 loss of each item's views: cross-entropy of softmax(sigma / temperature) over its
    valid views toward the largest singular value; mean over items with >= 2 valid views.

    views (B, M, d) are unit vectors (not renormalised here), mask (B, M) marks the present ones.
    Returns (loss, sigma) with sigma (B, M) the singular values in descending order, 0 past each
    item's number of valid views. Aligned views give loss ~ 0; orthogonal views give log(k) for k
    valid views. Items with fewer than 2 valid views contribute nothing (0 if there are none).
    """
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    with torch.autocast(device_type=views.device.type, enabled=False):
        _, gram = _masked_gram(views, mask)  # (B, M, M)
        evals, _ = safe_eigh(gram)  # (B, M) ascending
        lam = evals.flip(-1)  # (B, M) descending
        n_valid = mask.bool().sum(-1)  # (B,)
        used = n_valid >= 2  # (B,)
        # The Gram of k valid views has k eigenvalues >= 0, the masked slots add M - k zeros: the
        # top k of the full Gram are the valid block's, whatever slots are masked.
        ranks = torch.arange(lam.shape[-1], device=lam.device)  # (M,)
        valid = ranks < n_valid.unsqueeze(-1)  # (B, M)
        sigma = torch.sqrt(lam.clamp_min(0.0) + SIGMA_FLOOR)  # (B, M)
        # Unused items get every slot, so their (discarded) loss stays finite and NaN-free in backward.
        in_softmax = valid | ~used.unsqueeze(-1)  # (B, M)
        logits = (sigma / temperature).masked_fill(~in_softmax, float("-inf"))  # (B, M)
        per_item = torch.logsumexp(logits, dim=-1) - logits[:, 0]  # (B,)
        per_item = torch.where(used, per_item, 0.0)  # (B,)
        loss = per_item.sum() / used.sum().clamp_min(1)
    return loss, torch.where(valid, sigma, 0.0)


def leading_vector(views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The leading right singular vector of each item's valid views, (B, d), unit, sign-fixed.

    u = Z^T v1 / sigma1 with v1 the top eigenvector of the Gram; computed as normalize(Z^T v1),
    which is the same vector and stays finite when an item has no valid view (then u = 0). Its
    sign is chosen so that <u, sum of valid views> >= 0 (eigenvectors have no sign of their own;
    an unfixed sign would flip the InfoNCE positives at random). For aligned views u is their
    normalised mean. When the top singular value is repeated, u is one vector of that space.
    """
    with torch.autocast(device_type=views.device.type, enabled=False):
        z, gram = _masked_gram(views, mask)  # (B, M, d), (B, M, M)
        _, evecs = safe_eigh(gram)  # (B, M, M)
        top = evecs[..., -1]  # (B, M)
        u = F.normalize((z * top.unsqueeze(-1)).sum(-2), dim=-1)  # (B, d)
        total = z.sum(-2)  # (B, d)
        sign = torch.where((u * total).sum(-1, keepdim=True) >= 0, 1.0, -1.0)  # (B, 1)
    return u * sign
