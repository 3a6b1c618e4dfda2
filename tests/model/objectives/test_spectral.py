"""PMRL spectral kernels: safe eigh gradients, the rank-1 loss and the sign-fixed leading vector."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.objectives.spectral import leading_vector, pmrl_rank_loss, safe_eigh


def _unit(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def _spectral_probe(
    evals: torch.Tensor, evecs: torch.Tensor, w: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """A loss of eigenvalues and eigenvectors that is invariant to eigenvector signs."""
    return (w * evals).sum() + (c * evecs.pow(2)).sum()


def test_safe_eigh_matches_torch_where_gaps_are_large() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)  # (3, 5, 5)
    w, c = (
        torch.randn(3, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 5, 5, generator=gen, dtype=torch.float64),
    )
    grads = []
    for eigh in (safe_eigh, torch.linalg.eigh):
        leaf = base.clone().requires_grad_(True)
        spd = leaf @ leaf.mT + 0.1 * torch.eye(5, dtype=torch.float64)  # (3, 5, 5) random SPD
        evals, evecs = eigh(spd)
        _spectral_probe(evals, evecs, w, c).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-10)


def test_safe_eigh_gradcheck() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w, c = (
        torch.randn(4, generator=gen, dtype=torch.float64),
        torch.randn(4, 4, generator=gen, dtype=torch.float64),
    )

    def f(b: torch.Tensor) -> torch.Tensor:
        return _spectral_probe(*safe_eigh(b + b.mT), w, c)

    assert torch.autograd.gradcheck(f, (base,))


def test_safe_eigh_gradients_finite_on_repeated_eigenvalues() -> None:
    for gram in (
        torch.ones(4, 4),
        torch.eye(3),
        torch.zeros(3, 3),
        torch.diag(torch.tensor([0.0, 0.0, 2.0])),
    ):
        leaf = gram.clone().requires_grad_(True)
        evals, evecs = safe_eigh(leaf)
        (evals.sum() + evecs[..., -1].pow(2).mul(torch.arange(gram.shape[0])).sum()).backward()
        assert torch.isfinite(leaf.grad).all()
        leaf_t = gram.clone().requires_grad_(True)
        evals_t, evecs_t = torch.linalg.eigh(leaf_t)
        (evals_t.sum() + evecs_t[..., -1].pow(2).mul(torch.arange(gram.shape[0])).sum()).backward()
        if gram.shape[0] == 3 and float(gram.sum()) in (0.0, 3.0):  # what safe_eigh exists for
            assert not torch.isfinite(leaf_t.grad).all()


@pytest.mark.parametrize("m", [2, 3, 5])
def test_aligned_views_have_near_zero_loss_and_finite_gradients(m: int) -> None:
    item = (
        _unit(1, 1, 16, seed=m, dtype=torch.float32).expand(2, m, 16).clone().requires_grad_(True)
    )  # (2, m, 16)
    loss, sigma = pmrl_rank_loss(item, torch.ones(2, m, dtype=torch.bool), temperature=0.1)
    assert float(loss.detach()) < 1e-4
    torch.testing.assert_close(sigma[:, 0], torch.full((2,), math.sqrt(m)))
    loss.backward()
    assert torch.isfinite(item.grad).all()


@pytest.mark.parametrize("m", [2, 4])
def test_orthogonal_views_cost_log_m(m: int) -> None:
    views = torch.eye(8)[:m].unsqueeze(0)  # (1, m, 8)
    loss, sigma = pmrl_rank_loss(views, torch.ones(1, m, dtype=torch.bool), temperature=0.1)
    assert abs(float(loss) - math.log(m)) < 1e-4
    torch.testing.assert_close(sigma, torch.ones(1, m))


def test_padded_views_do_not_change_an_items_loss() -> None:
    views = _unit(3, 5, 12, seed=3)  # (3, 5, 12)
    full, _ = pmrl_rank_loss(views[:, :3], torch.ones(3, 3, dtype=torch.bool), temperature=0.2)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, [0, 2, 4]] = True
    padded = views.clone()
    padded[:, [0, 2, 4]] = views[:, :3]
    padded[:, 1] = float("nan")  # garbage in a padded slot must not leak
    got, sigma = pmrl_rank_loss(padded, mask, temperature=0.2)
    torch.testing.assert_close(got, full, rtol=1e-6, atol=1e-9)
    assert (sigma[:, 3:] == 0).all()


def test_items_with_fewer_than_two_views_are_excluded() -> None:
    views = _unit(3, 3, 8, seed=4, dtype=torch.float32).requires_grad_(True)  # (3, 3, 8)
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    loss, _ = pmrl_rank_loss(views, mask, temperature=0.1)
    alone, _ = pmrl_rank_loss(views[:1], mask[:1], temperature=0.1)
    torch.testing.assert_close(loss, alone)
    loss.backward()
    assert torch.isfinite(views.grad).all() and (views.grad[1:] == 0).all()
    none, _ = pmrl_rank_loss(views[1:].detach(), mask[1:], temperature=0.1)
    assert float(none) == 0.0


def test_leading_vector_of_aligned_views_is_their_mean() -> None:
    base = _unit(4, 1, 10, seed=5)  # (4, 1, 10)
    views = base + 1e-3 * _unit(4, 3, 10, seed=6)  # (4, 3, 10): nearly aligned
    torch.testing.assert_close(
        leading_vector(views, torch.ones(4, 3, dtype=torch.bool)),
        F.normalize(views.mean(1), dim=-1),
        atol=1e-6,
        rtol=0,
    )


def test_leading_vector_matches_svd_up_to_sign_and_is_sign_fixed() -> None:
    views = _unit(6, 4, 9, seed=7)  # (6, 4, 9)
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[3:, 3] = False
    u = leading_vector(views, mask)  # (6, 9)
    for i in range(6):
        z = views[i, mask[i]]  # (k, 9)
        top = torch.linalg.svd(z, full_matrices=False).Vh[0]  # (9,)
        assert abs(abs(float(u[i] @ top)) - 1.0) < 1e-9
        assert float(u[i] @ z.sum(0)) >= 0.0
    # Flipping every view flips u: the sign follows the views, not the eigen-solver.
    torch.testing.assert_close(leading_vector(-views, mask), -u)


def test_leading_vector_gradients_finite_on_degenerate_items() -> None:
    one = _unit(1, 1, 6, seed=8, dtype=torch.float32)  # (1, 1, 6)
    views = torch.cat(
        [one.expand(1, 3, 6), _unit(1, 3, 6, seed=9, dtype=torch.float32), torch.eye(6)[:3][None]]
    )  # (3, 3, 6)
    views.requires_grad_(True)
    mask = torch.tensor(
        [[True, True, True], [True, False, False], [True, True, True]]
    )  # dup, single, orthogonal
    u = leading_vector(views, mask)
    torch.testing.assert_close(u[1], F.normalize(views[1, 0].detach(), dim=-1))
    (u * torch.arange(6.0)).sum().backward()
    assert torch.isfinite(views.grad).all()
    empty = torch.zeros(1, 3, 6, requires_grad=True)
    out = leading_vector(empty, torch.zeros(1, 3, dtype=torch.bool))
    out.sum().backward()
    assert (out == 0).all() and torch.isfinite(empty.grad).all()


def test_rank_loss_gradcheck() -> None:
    views = _unit(2, 3, 5, seed=10).requires_grad_(True)  # (2, 3, 5)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    assert torch.autograd.gradcheck(lambda v: pmrl_rank_loss(v, mask, temperature=0.5)[0], (views,))
