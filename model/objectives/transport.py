"""Factored optimal transport between two embedding clouds, through r learnable prototypes.

Our reading of the Factorized Transport term (docs/METHODS.md, `ft`), after Forrow et al. 2019 ("factored
OT") and Scetbon et al. (low-rank Sinkhorn): instead of one n x m plan between the clouds X (n, d)
and Y (m, d), each cloud is transported onto r hubs (prototypes) Z (r, d) with hub marginal g:

    Q = plan(X -> Z)  (n, r), marginals (1/n, g)        R = plan(Y -> Z)  (m, r), marginals (1/m, g)
    P = Q diag(1/g) R^T  (n, m), a coupling of (1/n, 1/m) that is never built.

With the cosine cost c(x, y) = 1 - <x, y> of unit vectors the cost of such a plan is linear in
the hub sums x_k = X^T Q[:, k], y_k = Y^T R[:, k] (each O((n + m) r d)):

    T(X, Y) = sum_ij P_ij c(x_i, y_j) = sum_k q_k r_k / g_k  -  sum_k <x_k, y_k> / g_k

(q_k, r_k the plans' column masses). T alone does not vanish when the clouds agree: two identical
clouds cost 1 - sum_k |x_k|^2 / g_k > 0 (0.97 for 128 random unit vectors in 256-d, 16 hubs).
So the term used is DEBIASED, as Sinkhorn divergences are, T(X, Y) - T(X, X) / 2 - T(Y, Y) / 2, where T(X, X) transports X to the
hubs with its own plan Q on both sides (the plan of a cloud to the hubs does not depend on the
other cloud). That reduces to

    D(X, Y) = 0.5 sum_k |x_k - y_k|^2 / g_k  -  0.5 sum_k (q_k - r_k)^2 / g_k

= 0.5 sum_k g_k |mean of X at hub k - mean of Y at hub k|^2 once q = r = g, and every Sinkhorn
iteration ends on the column update, so q_k = r_k = g_k to rounding: D >= 0, and D = 0 exactly for
identical clouds (same plan). `dense_factored_cost` checks it against the n x m construction.

Gradients: the plans are unrolled through Sinkhorn by default (`detach_plans=False`). Holding the
plans fixed is NOT the exact gradient here: the plans minimise the hub costs C_xz and C_yz, not the
x-y cost, so no envelope theorem applies. Measured against the unrolled gradient (w.r.t. x and y;
n = m = 128, d = 256, r = 16, eps 0.05, 50 iterations, float64, random / shifted / nearby clouds;
`.venv/bin/python -m bench.transport_grad`, 2-core container, 2026-12-03),
the detached-plan gradient has cosine 0.69 / 0.73 / 0.53 for D (0.90 / 0.91 / 0.72 for T). The
unrolled graph is n_iters (n + m) r values: small next to the towers. The prototypes do not learn
from D (they enter it detached: minimising D over the hubs would blur them until every hub sees
the global means); `hub_cost` = <Q, C_xz> + <R, C_yz> places them (Forrow's objective), and
its detached-plan gradient w.r.t. the hubs IS exact for the entropic OT value (envelope theorem).

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
    detach_plans: bool = False,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Debiased factored transport cost D(x, y) between x (n, d) and y (m, d) through
    prototypes (r, d); >= 0, 0 for identical clouds (module docstring).

    Returns (cost, aux) with aux = {"q_plan" (n, r), "r_plan" (m, r), "hub_cost" scalar}; the
    plans are probabilities (not logs). By default gradients unroll through the Sinkhorn
    iterations (exact for the value computed); `detach_plans` holds the plans fixed, which is
    cheaper but only an approximation here (see the module docstring for its measured cosine).
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
        x_hub = x.T @ q_plan  # (d, r): X^T Q[:, k]
        y_hub = y.T @ r_plan  # (d, r): Y^T R[:, k]
        mass_gap = q_plan.sum(0) - r_plan.sum(0)  # (r,) q_k - r_k, 0 up to rounding
        cost = 0.5 * ((x_hub - y_hub).square().sum(0) / g).sum() - 0.5 * (mass_gap.square() / g).sum()
        hub_cost = (q_plan * cost_xz).sum() + (r_plan * cost_yz).sum()
    return cost, {"q_plan": q_plan, "r_plan": r_plan, "hub_cost": hub_cost}


def dense_factored_cost(
    x: torch.Tensor, y: torch.Tensor, q_plan: torch.Tensor, r_plan: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """Naive reference: builds the three couplings P_xy = Q diag(1/g) R^T, P_xx = Q diag(1/g) Q^T,
    P_yy = R diag(1/g) R^T and the full cosine costs, and returns the debiased
    <P_xy, C_xy> - <P_xx, C_xx> / 2 - <P_yy, C_yy> / 2.

    O((n + m)^2 (r + d)); for tests and diagnostics only, never for training.
    """

    def t(u: torch.Tensor, p: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        plan = (p / g) @ s.T  # (n_u, n_v)
        return (plan * (1.0 - u @ v.T)).sum()

    return t(x, q_plan, y, r_plan) - 0.5 * t(x, q_plan, x, q_plan) - 0.5 * t(y, r_plan, y, r_plan)


class FactoredTransport(nn.Module):
    """Distribution-level alignment of two batches through r learnable unit prototypes.

    `forward(x, y)` returns (loss, parts) with loss = debiased transport cost D + hub cost and
    parts the two terms as floats (for logging). D's gradient goes to the points only (the
    prototypes enter it detached); the hub cost, with the plans held fixed, moves the prototypes,
    and reaches the embeddings only with `hub_grad_to_points`: that would pull every item onto one
    of r prototypes (a clustering force that fights in-batch uniformity), while aligning the two
    clouds is already D's job. The loss value is the same either way.
    """

    def __init__(
        self,
        dim: int,
        n_prototypes: int = 16,
        eps: float = 0.05,
        n_iters: int = 50,
        detach_plans: bool = False,
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
        cost, aux = factored_transport(x, y, z.detach(), self.eps, self.n_iters, self.detach_plans)
        q_plan, r_plan = aux["q_plan"].detach(), aux["r_plan"].detach()  # (n, r), (m, r)
        dtype = q_plan.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            xs, ys = (x, y) if self.hub_grad_to_points else (x.detach(), y.detach())
            zd = z.to(dtype)  # (r, d)
            hub_cost = (q_plan * _cosine_cost(xs.to(dtype), zd)).sum() + (
                r_plan * _cosine_cost(ys.to(dtype), zd)
            ).sum()
        loss = cost + hub_cost
        return loss, {"transport_cost": float(cost.detach()), "hub_cost": float(hub_cost.detach())}
