"""Factored optimal transport between two embedding clouds, through r learnable prototypes.

Our reading of the Factorized Transport term (DESIGN 2.1), after Forrow et al. 2019 ("factored
OT") and Scetbon et al. (low-rank Sinkhorn): instead of one n x m plan between the clouds X (n, d)
and Y (m, d), each cloud is transported onto r hubs (prototypes) Z (r, d) with hub marginal g:

    Q = plan(X -> Z)  (n, r), marginals (1/n, g)        R = plan(Y -> Z)  (m, r), marginals (1/m, g)
    P = Q diag(1/g) R^T  (n, m), a coupling of (1/n, 1/m) that is never built.

With the cosine cost c(x, y) = 1 - <x, y> of unit vectors, its cost is linear in the hub means:

    sum_ij P_ij c(x_i, y_j) = sum_k Q_.k R_.k / g_k  -  sum_k (1/g_k) <X^T Q[:, k], Y^T R[:, k]>

(the first sum is the plan's mass, 1 once the columns are balanced; it is computed, not assumed, so
the value is exactly the dense one). Everything is O((n + m) r d): a batch's transport term costs
O(B r), not O(B^2). `hub_cost` = <Q, C_xz> + <R, C_yz> is what places the prototypes between the
two clouds (Forrow's objective, minimised over the prototypes).

Inputs are unit vectors and are NOT renormalised here (the caller's towers already normalise;
silently renormalising would hide a bug upstream). Costs then lie in [0, 2], which is what the
Sinkhorn defaults (eps 0.05-0.1) assume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.objectives.sinkhorn import sinkhorn_log


def _cosine_cost(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return 1.0 - x @ z.T  # (n, r)


def factored_transport(
    x: torch.Tensor,
    y: torch.Tensor,
    prototypes: torch.Tensor,
    eps: float,
    n_iters: int,
    detach_plans: bool = True,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Factored transport cost between x (n, d) and y (m, d) through prototypes (r, d).

    Returns (cost, aux) with aux = {"q_plan" (n, r), "r_plan" (m, r), "hub_cost" scalar}; the
    plans are probabilities (not logs). With `detach_plans` (default) the Sinkhorn iterations carry
    no graph: `cost` then moves x and y along fixed plans (envelope theorem, see sinkhorn.py) and
    the prototypes learn through `hub_cost` only; without it, gradients unroll through Sinkhorn.
    """
    if x.dim() != 2 or y.dim() != 2 or prototypes.dim() != 2:
        raise ValueError(
            f"factored_transport: expected x (n, d), y (m, d), prototypes (r, d); got "
            f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(prototypes.shape)}"
        )
    if not x.shape[1] == y.shape[1] == prototypes.shape[1]:
        raise ValueError(
            f"factored_transport: widths differ: x {x.shape[1]}, y {y.shape[1]}, prototypes {prototypes.shape[1]}"
        )
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y, z = x.to(dtype), y.to(dtype), prototypes.to(dtype)
        n, m, r = x.shape[0], y.shape[0], z.shape[0]
        g = torch.full((r,), 1.0 / r, dtype=dtype, device=x.device)  # (r,) hub marginal
        a = torch.full((n,), 1.0 / n, dtype=dtype, device=x.device)  # (n,)
        b = torch.full((m,), 1.0 / m, dtype=dtype, device=x.device)  # (m,)
        cost_xz = _cosine_cost(x, z)  # (n, r)
        cost_yz = _cosine_cost(y, z)  # (m, r)
        q_plan = sinkhorn_log(cost_xz, a, g, eps, n_iters, tol, detach_plans).exp()  # (n, r)
        r_plan = sinkhorn_log(cost_yz, b, g, eps, n_iters, tol, detach_plans).exp()  # (m, r)
        mass = (q_plan.sum(0) * r_plan.sum(0) / g).sum()  # sum_ij P_ij, = 1 up to tolerance
        x_hub = x.T @ q_plan  # (d, r): X^T Q[:, k]
        y_hub = y.T @ r_plan  # (d, r): Y^T R[:, k]
        cost = mass - ((x_hub * y_hub).sum(0) / g).sum()
        hub_cost = (q_plan * cost_xz).sum() + (r_plan * cost_yz).sum()
    return cost, {"q_plan": q_plan, "r_plan": r_plan, "hub_cost": hub_cost}


def dense_factored_cost(
    x: torch.Tensor, y: torch.Tensor, q_plan: torch.Tensor, r_plan: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """Naive reference: builds P = Q diag(1/g) R^T (n, m) and the full cost, sums P * C.

    O(n m (r + d)); for tests and diagnostics only, never for training.
    """
    plan = (q_plan / g) @ r_plan.T  # (n, m)
    cost = 1.0 - x @ y.T  # (n, m)
    return (plan * cost).sum()


class FactoredTransport(nn.Module):
    """Distribution-level alignment of two batches through r learnable unit prototypes.

    `forward(x, y)` returns (loss, parts) with loss = transport cost + hub cost and parts the two
    terms as floats (for logging). The hub cost's gradient goes to the prototypes only unless
    `hub_grad_to_points`: letting it reach the embeddings would pull every item onto one of r
    prototypes (a clustering force that fights in-batch uniformity), while aligning the two clouds
    is already the transport cost's job. The loss value is the same either way.
    """

    def __init__(
        self,
        dim: int,
        n_prototypes: int = 16,
        eps: float = 0.05,
        n_iters: int = 50,
        detach_plans: bool = True,
        hub_grad_to_points: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if dim < 1 or n_prototypes < 1:
            raise ValueError(
                f"FactoredTransport: dim and n_prototypes must be >= 1, got {dim}, {n_prototypes}"
            )
        self.eps, self.n_iters = eps, n_iters
        self.detach_plans, self.hub_grad_to_points = detach_plans, hub_grad_to_points
        gen = torch.Generator().manual_seed(seed)
        # A seeded isotropic normal, normalised in forward: r directions spread over the sphere.
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, dim, generator=gen))  # (r, d)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        z = F.normalize(self.prototypes, dim=-1)  # (r, d)
        cost, aux = factored_transport(x, y, z, self.eps, self.n_iters, self.detach_plans)
        hub_cost = aux["hub_cost"]
        if not self.hub_grad_to_points:
            q_plan, r_plan = aux["q_plan"].detach(), aux["r_plan"].detach()  # (n, r), (m, r)
            dtype = q_plan.dtype
            with torch.autocast(device_type=x.device.type, enabled=False):
                zd = z.to(dtype)  # (r, d)
                hub_cost = (q_plan * _cosine_cost(x.detach().to(dtype), zd)).sum() + (
                    r_plan * _cosine_cost(y.detach().to(dtype), zd)
                ).sum()
        loss = cost + hub_cost
        return loss, {"transport_cost": float(cost.detach()), "hub_cost": float(hub_cost.detach())}
