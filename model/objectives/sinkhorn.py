"""Balanced entropic optimal transport in the log domain (Sinkhorn on dual potentials).

Why the log domain: the textbook kernel form iterates on K = exp(-C / eps). With costs in [0, 2]
(cosine cost of unit vectors) and eps = 0.01, K reaches exp(-200), which is 0 in float32, and the
scaling vectors then divide by zero: this is the RecGOAT public code's underflow (docs/METHODS.md, `oat`). Here
the scaled dual potentials u = f / eps, v = g / eps are updated with logsumexp, so nothing is ever
exponentiated before it is normalised:

    u_i = log a_i - logsumexp_j (v_j - C_ij / eps)
    v_j = log b_j - logsumexp_i (u_i - C_ij / eps)
    log P_ij = u_i + v_j - C_ij / eps

Every iteration ends with the v update, so the columns of the returned plan sum to `b` exactly
and the rows sum to `a` up to the stopping tolerance. The plan is a *joint* distribution: its rows
sum to a_i (e.g. 1/n), not to 1 (the other RecGOAT pitfall); `barycentric_map` rescales rows when a
per-source-point target is wanted.

Gradients. By default the iterations are unrolled and autograd differentiates through them (exact
gradient of the returned plan as computed). With `detach_plan=True` the iterations run without a
graph and the plan comes back detached. By the envelope theorem the gradient of the entropic OT
value OT_eps(C) = min_P <P, C> - eps H(P) with respect to C is the optimal plan P*, so the loss
`(log_plan.exp() * cost).sum()` with a detached plan has exactly the gradient of OT_eps with
respect to THIS cost, at the memory cost of one plan instead of n_iters of them. That holds only
for the cost the plan was solved for: a plan solved for one cost and used to weight another (the
factored transport's hub plans weighting the x-y cost, transport.py) or used as a fixed target
(`oat`'s barycentric map) gets no such guarantee. The factored transport's hub cost uses it; its
x-y cost unrolls.
"""

from __future__ import annotations

import torch

# How often (in iterations) the marginal error is measured for early stopping. Each check costs a
# pass over the plan and, on a GPU, one host sync: every 10 iterations keeps both negligible.
CHECK_EVERY = 10


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs (autocast may hand us bf16), float64 kept."""
    return torch.promote_types(t.dtype, torch.float32)


def _check_problem(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, n_iters: int) -> None:
    if cost.dim() < 2:
        raise ValueError(f"cost: expected (..., n, m), got shape {tuple(cost.shape)}")
    n, m = cost.shape[-2:]
    if a.shape[-1:] != (n,) or b.shape[-1:] != (m,):
        raise ValueError(
            f"marginals: cost is {tuple(cost.shape)}, so a must end in ({n},) and b in ({m},); "
            f"got a {tuple(a.shape)}, b {tuple(b.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"eps: must be > 0, got {eps}")
    if n_iters < 1:
        raise ValueError(f"n_iters: must be >= 1, got {n_iters}")
    mass_a, mass_b = a.detach().sum(-1), b.detach().sum(-1)
    if not torch.allclose(mass_a, mass_b, rtol=1e-4, atol=1e-6):
        raise ValueError(
            f"marginals: balanced OT needs equal masses, got sum(a)={mass_a.flatten()[:4].tolist()} "
            f"and sum(b)={mass_b.flatten()[:4].tolist()}"
        )


def sinkhorn_log(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    n_iters: int = 100,
    tol: float = 1e-6,
    detach_plan: bool = False,
) -> torch.Tensor:
    """Log of the entropic OT plan between marginals `a` (..., n) and `b` (..., m) for `cost`
    (..., n, m); leading batch dimensions broadcast.

    Stops after `n_iters` iterations or earlier once the L1 row-marginal error is below `tol`
    (checked every `CHECK_EVERY` iterations; `tol=0` always runs `n_iters`, which keeps the
    unrolled graph a fixed function of the input). Zero entries of a or b are allowed (their rows
    or columns come back as -inf). Computed in float32 at least, with autocast off.
    """
    _check_problem(cost, a, b, eps, n_iters)
    track = torch.is_grad_enabled() and not detach_plan
    with torch.autocast(device_type=cost.device.type, enabled=False), torch.set_grad_enabled(track):
        dtype = _compute_dtype(cost)
        scaled = cost.to(dtype) / eps  # (..., n, m)
        log_a = torch.log(a.to(dtype))  # (..., n)
        log_b = torch.log(b.to(dtype))  # (..., m)
        u = torch.zeros_like(log_a)  # (..., n)
        v = torch.zeros_like(log_b)  # (..., m)
        for it in range(n_iters):
            u = log_a - torch.logsumexp(v.unsqueeze(-2) - scaled, dim=-1)  # (..., n)
            v = log_b - torch.logsumexp(u.unsqueeze(-1) - scaled, dim=-2)  # (..., m)
            if tol > 0 and (it + 1) % CHECK_EVERY == 0 and it + 1 < n_iters:
                with torch.no_grad():
                    rows = torch.logsumexp(u.unsqueeze(-1) + v.unsqueeze(-2) - scaled, dim=-1)  # (..., n)
                    err = (rows.exp() - a.to(dtype)).abs().sum(-1).max()
                if err.item() < tol:
                    break
        log_plan = u.unsqueeze(-1) + v.unsqueeze(-2) - scaled  # (..., n, m)
    return log_plan.detach() if detach_plan else log_plan


def marginal_errors(log_plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """L1 errors (rows vs a, columns vs b) of a plan, worst over any batch: a convergence gauge."""
    plan = log_plan.detach().exp()  # (..., n, m)
    row_err = (plan.sum(-1) - a).abs().sum(-1).max().item()
    col_err = (plan.sum(-2) - b).abs().sum(-1).max().item()
    return row_err, col_err


def barycentric_map(log_plan: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Transported target of every source point: sum_j P_ij y_j / sum_j P_ij, (..., n, d).

    The plan's row i sums to a_i (1/n for uniform marginals), not 1; using the raw plan as
    weights would shrink every target by n. The row normalisation is a softmax over the log plan,
    so it stays exact when the row masses are tiny. A zero-mass row (all -inf) maps to NaN: give
    such points no weight downstream.
    """
    if y.dim() < 2 or y.shape[-2] != log_plan.shape[-1]:
        raise ValueError(
            f"y: expected (..., {log_plan.shape[-1]}, d) to match log_plan {tuple(log_plan.shape)}, "
            f"got {tuple(y.shape)}"
        )
    dtype = _compute_dtype(log_plan)
    with torch.autocast(device_type=log_plan.device.type, enabled=False):
        weights = torch.softmax(log_plan.to(dtype), dim=-1)  # (..., n, m), rows sum to 1
        return weights @ y.to(dtype)  # (..., n, d)
