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
