"""Log-domain Sinkhorn against POT, in float32 at small eps, and its gradients."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from model.objectives.sinkhorn import barycentric_map, marginal_errors, sinkhorn_log


def _clouds(n: int, m: int, d: int = 8, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=gen, dtype=dtype), dim=-1)  # (n, d)
    y = F.normalize(torch.randn(m, d, generator=gen, dtype=dtype), dim=-1)  # (m, d)
    return x, y


def _uniform(k: int, dtype=torch.float64) -> torch.Tensor:
    return torch.full((k,), 1.0 / k, dtype=dtype)


@pytest.mark.parametrize(("n", "m", "eps"), [(3, 5, 0.1), (17, 9, 0.05), (40, 40, 0.1), (64, 33, 0.05)])
def test_matches_pot_log_sinkhorn(n: int, m: int, eps: float) -> None:
    x, y = _clouds(n, m, seed=n)
    cost = 1.0 - x @ y.T  # (n, m)
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5  # non-uniform marginals too
    a = a / a.sum()
    b = _uniform(m)
    ours = sinkhorn_log(cost, a, b, eps, n_iters=3000, tol=1e-12).exp()
    ref = ot.sinkhorn(
        a.numpy(), b.numpy(), cost.numpy(), eps, method="sinkhorn_log", numItermax=100_000, stopThr=1e-13
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-12)


def test_marginals_within_tolerance() -> None:
    x, y = _clouds(30, 20, dtype=torch.float32)
    a, b = _uniform(30, torch.float32), _uniform(20, torch.float32)
    log_plan = sinkhorn_log(1.0 - x @ y.T, a, b, eps=0.05, n_iters=500, tol=1e-5)
    row_err, col_err = marginal_errors(log_plan, a, b)
    assert row_err < 1e-5 and col_err < 1e-5


def test_float32_small_eps_is_finite() -> None:
    """eps = 0.01 with costs spanning [0, 2]: the kernel exp(-C/eps) would be exp(-200) = 0 here."""
    x, _ = _clouds(50, 50, dtype=torch.float32)
    cost = 1.0 - torch.cat([x, -x]) @ x.T  # (100, 50), has exact 0 and exact 2 entries
    assert float(cost.max()) > 1.99 and float(cost.min()) < 1e-5
    a, b = _uniform(100, torch.float32), _uniform(50, torch.float32)
    cost.requires_grad_(True)
    log_plan = sinkhorn_log(cost, a, b, eps=0.01, n_iters=300)
    assert log_plan.dtype == torch.float32 and torch.isfinite(log_plan).all()
    (log_plan.exp() * cost).sum().backward()
    assert torch.isfinite(cost.grad).all()
    assert marginal_errors(log_plan, a, b)[1] < 1e-5


def test_half_precision_input_is_computed_in_float32() -> None:
    x, y = _clouds(8, 6, dtype=torch.float32)
    log_plan = sinkhorn_log((1.0 - x @ y.T).to(torch.bfloat16), _uniform(8), _uniform(6), eps=0.05)
    assert log_plan.dtype == torch.float32 and torch.isfinite(log_plan).all()


def test_batched_equals_one_by_one() -> None:
    costs = torch.stack([1.0 - x @ y.T for x, y in (_clouds(6, 4, seed=s) for s in range(3))])  # (3, 6, 4)
    a, b = _uniform(6), _uniform(4)
    batched = sinkhorn_log(costs, a, b, eps=0.1, n_iters=200, tol=0)
    for k in range(3):
        torch.testing.assert_close(batched[k], sinkhorn_log(costs[k], a, b, eps=0.1, n_iters=200, tol=0))


def test_unrolled_gradient_matches_finite_differences() -> None:
    x, y = _clouds(3, 4, seed=3)
    cost = (1.0 - x @ y.T).requires_grad_(True)  # (3, 4)
    probe = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def f(c: torch.Tensor) -> torch.Tensor:  # tol=0: a fixed number of iterations, a smooth map
        return (sinkhorn_log(c, _uniform(3), _uniform(4), eps=0.1, n_iters=30, tol=0).exp() * probe).sum()

    assert torch.autograd.gradcheck(f, (cost,), eps=1e-6, atol=1e-6)


def test_detached_plan_gives_envelope_gradient() -> None:
    """d OT_eps / dC = P*: the loss sum(P.detach() * C) has the gradient of the entropic OT value."""
    x, y = _clouds(4, 5, seed=5)
    cost = 1.0 - x @ y.T  # (4, 5)
    a, b, eps = _uniform(4), _uniform(5), 0.1

    def ot_value(c: torch.Tensor) -> float:
        plan = sinkhorn_log(c, a, b, eps, n_iters=2000, tol=1e-13).exp()  # (4, 5)
        return float((plan * c).sum() + eps * (plan * (plan.log() - 1.0)).sum())

    leaf = cost.clone().requires_grad_(True)
    log_plan = sinkhorn_log(leaf, a, b, eps, n_iters=2000, tol=1e-13, detach_plan=True)
    assert not log_plan.requires_grad
    (log_plan.exp() * leaf).sum().backward()
    h = 1e-6
    numeric = torch.zeros_like(cost)
    for i in range(4):
        for j in range(5):
            bump = torch.zeros_like(cost)
            bump[i, j] = h
            numeric[i, j] = (ot_value(cost + bump) - ot_value(cost - bump)) / (2 * h)
    torch.testing.assert_close(leaf.grad, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("detach", [True, False])
def test_gradient_step_decreases_transport_cost(detach: bool) -> None:
    """The sign is right: descending the loss moves y toward x and lowers the transport cost."""
    x, y0 = _clouds(20, 20, d=4, seed=7, dtype=torch.float32)
    x = F.normalize(x + torch.tensor([2.0, 0, 0, 0]), dim=-1)  # (20, 4): two separated clouds
    a = b = _uniform(20, torch.float32)
    y = y0.clone().requires_grad_(True)
    opt = torch.optim.SGD([y], lr=10.0)  # each y_j carries 1/20 of the mass
    costs = []
    for _ in range(20):
        yn = F.normalize(y, dim=-1)  # (20, 4)
        cost = 1.0 - x @ yn.T  # (20, 20)
        loss = (sinkhorn_log(cost, a, b, eps=0.05, n_iters=50, detach_plan=detach).exp() * cost).sum()
        costs.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert costs[1] < costs[0] and costs[-1] < 0.5 * costs[0]
    assert float((x.mean(0) * F.normalize(y.detach(), dim=-1).mean(0)).sum()) > float(
        (x.mean(0) * y0.mean(0)).sum()
    )


def test_barycentric_map_rows_are_convex_combinations() -> None:
    x, y = _clouds(6, 9, seed=2)
    log_plan = sinkhorn_log(1.0 - x @ y.T, _uniform(6), _uniform(9), eps=0.05)
    mapped = barycentric_map(log_plan, y)  # (6, d)
    plan = log_plan.exp()
    torch.testing.assert_close(mapped, (plan / plan.sum(-1, keepdim=True)) @ y)
    # Not the raw plan (rows sum to 1/6): that would shrink every target by 6.
    assert float(mapped.norm(dim=-1).min()) > 2 * float((plan @ y).norm(dim=-1).max())
    # A near-deterministic plan maps each point onto its partner.
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    sharp = sinkhorn_log(1.0 - y @ y[perm].T, _uniform(9), _uniform(9), eps=0.01, n_iters=500)
    torch.testing.assert_close(barycentric_map(sharp, y[perm]), y, atol=1e-4, rtol=0)


def test_zero_mass_rows_are_allowed() -> None:
    x, y = _clouds(5, 4, seed=4)
    a = torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25], dtype=torch.float64)
    plan = sinkhorn_log(1.0 - x @ y.T, a, _uniform(4), eps=0.05, n_iters=500).exp()
    assert torch.isfinite(plan).all() and float(plan[2].sum()) == 0.0
    torch.testing.assert_close(plan.sum(-1), a, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("shape_a", "shape_b", "eps", "match"),
    [((4,), (3,), 0.1, "marginals"), ((3,), (3,), 0.0, "eps"), ((3,), (3,), 0.1, "equal masses")],
)
def test_bad_arguments_name_the_value(shape_a, shape_b, eps, match) -> None:
    a = torch.full(shape_a, 1.0 / shape_a[0])
    b = (
        torch.full(shape_b, 2.0 / shape_b[0])
        if match == "equal masses"
        else torch.full(shape_b, 1.0 / shape_b[0])
    )
    with pytest.raises(ValueError, match=match):
        sinkhorn_log(torch.rand(3, 3), a, b, eps)
