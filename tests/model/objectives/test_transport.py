"""Factored transport: the O((n+m) r) path against the dense n x m reference, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model.objectives.transport import FactoredTransport, dense_factored_cost, factored_transport


def _unit(k: int, d: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(k, d, generator=gen, dtype=dtype), dim=-1)  # (k, d)


@pytest.mark.parametrize("detach_plans", [True, False])
@pytest.mark.parametrize(("n", "m", "r"), [(7, 5, 1), (12, 20, 4), (9, 31, 16)])
def test_factored_matches_dense_values_and_gradients(n: int, m: int, r: int, detach_plans: bool) -> None:
    gen = torch.Generator().manual_seed(n * 100 + r)
    d = 6
    x0, y0, z0 = _unit(n, d, gen), _unit(m, d, gen), _unit(r, d, gen)

    def run(dense: bool):
        x, y, z = (t.clone().requires_grad_(True) for t in (x0, y0, z0))
        cost, aux = factored_transport(x, y, z, eps=0.1, n_iters=30, detach_plans=detach_plans, tol=0)
        if dense:
            g = torch.full((r,), 1.0 / r, dtype=torch.float64)
            cost = dense_factored_cost(x, y, aux["q_plan"], aux["r_plan"], g)
        (cost + aux["hub_cost"]).backward()
        return cost.detach(), x.grad, y.grad, z.grad

    fast, dense = run(False), run(True)
    torch.testing.assert_close(fast[0], dense[0], rtol=0, atol=1e-6)
    for name, got, want in zip(("x", "y", "prototypes"), fast[1:], dense[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=lambda m, name=name: f"grad {name}: {m}")
    if not detach_plans:  # the prototypes also learn through the plans
        assert float(fast[3].abs().sum()) > 0


def test_plans_are_couplings_and_mass_is_one() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y, z = _unit(10, 5, gen), _unit(14, 5, gen), _unit(4, 5, gen)
    cost, aux = factored_transport(x, y, z, eps=0.05, n_iters=200, tol=1e-10)
    q, r = aux["q_plan"], aux["r_plan"]
    torch.testing.assert_close(q.sum(1), torch.full((10,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(r.sum(0), torch.full((4,), 0.25, dtype=torch.float64))
    plan = (q / 0.25) @ r.T  # (10, 14): a coupling of the uniform marginals
    torch.testing.assert_close(plan.sum(0), torch.full((14,), 1 / 14, dtype=torch.float64))
    assert 0.0 <= float(cost) <= 2.0 and float(aux["hub_cost"]) >= 0.0


def test_identical_clouds_cost_less_than_shifted_clouds() -> None:
    gen = torch.Generator().manual_seed(1)
    x, z = _unit(32, 8, gen, torch.float32), _unit(8, 8, gen, torch.float32)
    shift = torch.zeros(8)
    shift[0] = 1.5
    shifted = F.normalize(x + shift, dim=-1)  # (32, 8)
    same, _ = factored_transport(x, x.clone(), z, eps=0.05, n_iters=100)
    moved, _ = factored_transport(x, shifted, z, eps=0.05, n_iters=100)
    assert float(same) < float(moved)


class _ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor an aten op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("detach_plans", [True, False])
def test_no_n_by_m_tensor_is_ever_built(detach_plans: bool) -> None:
    """The work is O((n + m) r d): no (n, m) tensor in forward or backward (n, m, r, d distinct)."""
    n, m, r, d = 37, 41, 4, 8
    gen = torch.Generator().manual_seed(2)
    x, y = _unit(n, d, gen, torch.float32).requires_grad_(True), _unit(m, d, gen, torch.float32)
    y.requires_grad_(True)
    module = FactoredTransport(d, n_prototypes=r, n_iters=20, detach_plans=detach_plans)
    log = _ShapeLog()
    with log:
        loss, _ = module(x, y)
        loss.backward()
    assert log.shapes, "the dispatch hook saw nothing"
    assert not [s for s in log.shapes if n in s and m in s]
    assert max(torch.Size(s).numel() for s in log.shapes) < n * m
    assert x.grad is not None and y.grad is not None and module.prototypes.grad is not None


def test_sgd_on_y_moves_it_toward_x() -> None:
    gen = torch.Generator().manual_seed(3)
    x = F.normalize(_unit(40, 4, gen, torch.float32) + torch.tensor([1.5, 0.0, 0.0, 0.0]), dim=-1)  # (40, 4)
    y0 = F.normalize(_unit(40, 4, gen, torch.float32) - torch.tensor([1.5, 0.0, 0.0, 0.0]), dim=-1)  # (40, 4)
    module = FactoredTransport(4, n_prototypes=4, eps=0.05, n_iters=50, seed=0)
    y = y0.clone().requires_grad_(True)
    opt = torch.optim.SGD([y, *module.parameters()], lr=5.0)
    losses = []
    for _ in range(30):
        loss, parts = module(x, F.normalize(y, dim=-1))
        losses.append(parts["transport_cost"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    y1 = F.normalize(y.detach(), dim=-1)
    assert losses[-1] < 0.5 * losses[0]
    assert float(x.mean(0) @ y1.mean(0)) > float(x.mean(0) @ y0.mean(0)) + 0.5


def test_module_parts_and_hub_gradient_routing() -> None:
    gen = torch.Generator().manual_seed(4)
    x, y = _unit(12, 6, gen, torch.float32), _unit(9, 6, gen, torch.float32)
    a = FactoredTransport(6, n_prototypes=3, seed=7)
    b = FactoredTransport(6, n_prototypes=3, seed=7)
    torch.testing.assert_close(a.prototypes, b.prototypes)  # seeded init
    grads = []
    for module, routed in ((a, False), (b, True)):
        module.hub_grad_to_points = routed
        xl = x.clone().requires_grad_(True)
        loss, parts = module(xl, y)
        assert set(parts) == {"transport_cost", "hub_cost"} and all(
            isinstance(v, float) for v in parts.values()
        )
        assert abs(float(loss.detach()) - parts["transport_cost"] - parts["hub_cost"]) < 1e-5
        loss.backward()
        grads.append((xl.grad.clone(), module.prototypes.grad.clone()))
    # The prototypes learn the same either way; only the points' gradient differs.
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert not torch.allclose(grads[0][0], grads[1][0])


def test_bf16_autocast_inputs_compute_in_float32() -> None:
    gen = torch.Generator().manual_seed(5)
    x, y = _unit(16, 8, gen, torch.float32), _unit(12, 8, gen, torch.float32)
    module = FactoredTransport(8, n_prototypes=4)
    reference, _ = module(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = module(x.bfloat16(), y.bfloat16())
    assert loss.dtype == torch.float32 and abs(float(loss.detach()) - float(reference.detach())) < 0.02


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="widths differ"):
        factored_transport(torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(2, 4), 0.1, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_debiased_cost_vanishes_for_identical_clouds(dtype) -> None:
    """D(X, X) = 0 (the undebiased T(X, X) was 0.69 on such a batch), through the function and
    the module, while a different cloud costs more."""
    gen = torch.Generator().manual_seed(6)
    x, y, z = _unit(48, 16, gen, dtype), _unit(48, 16, gen, dtype), _unit(8, 16, gen, dtype)
    same, _ = factored_transport(x, x.clone(), z, eps=0.05, n_iters=50)
    assert abs(float(same)) < 1e-6
    other, _ = factored_transport(x, y, z, eps=0.05, n_iters=50)
    assert float(other) > 100 * max(abs(float(same)), 1e-9)
    _, parts = FactoredTransport(16, n_prototypes=8)(x, x.clone())
    assert abs(parts["transport_cost"]) < 1e-6


@pytest.mark.parametrize("seed", range(6))
def test_debiased_cost_is_non_negative(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, m, r, d = 5 + 7 * seed, 30 - 3 * seed, 1 + seed, 4 + seed
    x, y, z = _unit(n, d, gen), _unit(m, d, gen), _unit(r, d, gen)
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0] = 0.5 * seed
    cost, _ = factored_transport(x, F.normalize(y + shift, dim=-1), z, eps=0.05 + 0.02 * seed, n_iters=40)
    assert float(cost) >= -1e-12


def _dense_module_reference(module: FactoredTransport, x: torch.Tensor, y: torch.Tensor, tol: float) -> torch.Tensor:
    """Loss of `FactoredTransport.forward` built naively: dense n x m couplings, plans unrolled
    through Sinkhorn for the points, held fixed for the prototypes' hub cost."""
    from model.objectives.sinkhorn import sinkhorn_log

    z = F.normalize(module.prototypes, dim=-1)  # (r, d)
    r = z.shape[0]
    g = torch.full((r,), 1.0 / r, dtype=x.dtype)
    unif = lambda k: torch.full((k,), 1.0 / k, dtype=x.dtype)  # noqa: E731
    q = sinkhorn_log(1.0 - x @ z.detach().T, unif(len(x)), g, module.eps, module.n_iters, tol).exp()  # (n, r)
    p = sinkhorn_log(1.0 - y @ z.detach().T, unif(len(y)), g, module.eps, module.n_iters, tol).exp()  # (m, r)
    pxy, pxx, pyy = (q / g) @ p.T, (q / g) @ q.T, (p / g) @ p.T  # (n, m), (n, n), (m, m)
    debiased = (pxy * (1 - x @ y.T)).sum() - 0.5 * (pxx * (1 - x @ x.T)).sum() - 0.5 * (pyy * (1 - y @ y.T)).sum()
    hub = (q.detach() * (1 - x.detach() @ z.T)).sum() + (p.detach() * (1 - y.detach() @ z.T)).sum()
    return debiased + hub


@pytest.mark.parametrize(("n", "m", "r"), [(6, 9, 2), (20, 13, 5)])
def test_module_matches_dense_reference_values_and_gradients(n: int, m: int, r: int) -> None:
    """Loss value and gradients w.r.t. x, y and the prototypes parameter, against the dense
    n x m construction (float64)."""
    gen = torch.Generator().manual_seed(n + m + r)
    d = 5
    x0, y0 = _unit(n, d, gen), _unit(m, d, gen)
    grads = []
    for dense in (False, True):
        module = FactoredTransport(d, n_prototypes=r, eps=0.08, n_iters=40, seed=3).double()
        x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
        loss = _dense_module_reference(module, x, y, 1e-6) if dense else module(x, y)[0]
        loss.backward()
        grads.append((loss.detach(), x.grad, y.grad, module.prototypes.grad))
    for name, got, want in zip(("loss", "x", "y", "prototypes"), grads[0], grads[1], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")
    assert float(grads[0][3].abs().sum()) > 0 and float(grads[0][1].abs().sum()) > 0


def test_unrolled_gradient_is_the_gradient_of_the_value() -> None:
    """Finite differences of D w.r.t. x and y (fixed iteration count): what the docstring calls
    exact. Holding the plans fixed instead gives a gradient that points elsewhere."""
    gen = torch.Generator().manual_seed(8)
    x, y, z = _unit(7, 4, gen).requires_grad_(True), _unit(6, 4, gen).requires_grad_(True), _unit(3, 4, gen)

    def value(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return factored_transport(x, y, z, eps=0.1, n_iters=30, tol=0)[0]

    assert torch.autograd.gradcheck(value, (x, y), eps=1e-6, atol=1e-7)
    detached = factored_transport(x, y, z, eps=0.1, n_iters=30, tol=0, detach_plans=True)[0]
    g_fixed = torch.cat([t.flatten() for t in torch.autograd.grad(detached, [x, y])])
    g_exact = torch.cat([t.flatten() for t in torch.autograd.grad(value(x, y), [x, y])])
    assert float(F.cosine_similarity(g_fixed, g_exact, dim=0)) < 0.99
