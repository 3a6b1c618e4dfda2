"""InfoNCE against a naive double loop, values and gradients, with duplicates and weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.objectives.contrastive import info_nce, same_from_ids


def _naive(a, b, scale, same=None, weights=None, symmetric=True) -> torch.Tensor:
    """Row by row, column by column: -log(exp(s_ii) / sum over j not marked same of exp(s_ij))."""
    n = a.shape[0]

    def direction(p, q, excluded):
        losses = []
        for i in range(n):
            terms = [scale * (p[i] * q[j]).sum() for j in range(n) if j == i or not excluded(i, j)]
            denom = sum(torch.exp(t) for t in terms)
            losses.append(-(scale * (p[i] * q[i]).sum() - torch.log(denom)))
        return losses

    marked = (lambda i, j: bool(same[i, j])) if same is not None else (lambda i, j: False)
    rows = direction(a, b, marked)
    if symmetric:
        cols = direction(b, a, lambda i, j: marked(j, i))
        rows = [(r + c) / 2 for r, c in zip(rows, cols, strict=True)]
    w = weights if weights is not None else torch.ones(n, dtype=a.dtype)
    return sum(w[i] * rows[i] for i in range(n)) / w.sum()


def _inputs(n: int = 6, d: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)  # (n, d)
    b = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)  # (n, d)
    return a, b, torch.tensor(7.0, dtype=torch.float64)


def test_same_from_ids_is_off_diagonal_equality() -> None:
    same = same_from_ids(torch.tensor([3, 1, 3, 2, 1]))
    want = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in ((0, 2), (2, 0), (1, 4), (4, 1)):
        want[i, j] = True
    assert torch.equal(same, want)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("use_same", [True, False])
@pytest.mark.parametrize("use_weights", [True, False])
def test_matches_naive_loop_value_and_gradient(symmetric: bool, use_same: bool, use_weights: bool) -> None:
    a0, b0, s0 = _inputs()
    same = same_from_ids(torch.tensor([0, 1, 0, 2, 3, 1])) if use_same else None
    if use_same:  # an asymmetric mark too: b_5 is also a positive of a_3 only
        same[3, 5] = True
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64) if use_weights else None
    grads = []
    for fn in (info_nce, _naive):
        a, b, s = (t.clone().requires_grad_(True) for t in (a0, b0, s0))
        loss = fn(a, b, s, same, weights, symmetric)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad, s.grad))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gradcheck_against_finite_differences() -> None:
    a, b, s = (t.requires_grad_(True) for t in _inputs(n=4, d=3, seed=1))
    same = same_from_ids(torch.tensor([0, 1, 0, 2]))
    weights = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, s: info_nce(a, b, s, same, weights), (a, b, s))


def test_duplicates_are_not_negatives() -> None:
    """Two rows of the same listing: marked in `same`, each is no longer pushed away from the
    other's positive, so the loss drops below the unmarked one (where they are negatives)."""
    a, b, s = _inputs(n=4)
    b = b.clone()
    b[2] = b[0]
    a = a.clone()
    a[2] = a[0]
    plain = info_nce(a, b, s)
    marked = info_nce(a, b, s, same_from_ids(torch.tensor([9, 1, 9, 3])))
    assert float(marked) < float(plain)


def test_perfect_pairs_and_uninformative_pairs() -> None:
    eye = torch.eye(8)
    assert float(info_nce(eye, eye, torch.tensor(100.0))) < 1e-6
    assert abs(float(info_nce(torch.zeros(8, 4), torch.zeros(8, 4), torch.tensor(10.0))) - math.log(8)) < 1e-6


def test_zero_weights_give_zero_loss_and_bf16_inputs_compute_in_float32() -> None:
    a, b, s = (t.float() for t in _inputs())
    assert float(info_nce(a, b, s, weights=torch.zeros(6))) == 0.0
    loss = info_nce(a.bfloat16(), b.bfloat16(), s)
    assert loss.dtype == torch.float32
    assert abs(float(loss) - float(info_nce(a, b, s))) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b": torch.zeros(5, 4)}, "a and b"),
        ({"logit_scale": torch.ones(2)}, "logit_scale"),
        ({"same": torch.zeros(6, 6)}, "same"),
        ({"weights": torch.ones(5)}, "weights"),
        ({"weights": -torch.ones(6)}, "must be >= 0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match) -> None:
    args = {"a": torch.zeros(6, 4), "b": torch.zeros(6, 4), "logit_scale": torch.tensor(1.0)} | kwargs
    with pytest.raises(ValueError, match=match):
        info_nce(**args)


def _naive_with_negatives(a, b, negs, scale, mask, same, weights) -> torch.Tensor:
    """The a->b softmax of row i over b_i, the unmarked b_j and the unmasked negatives, by hand;
    b->a as before (negatives have no row of their own)."""
    n = a.shape[0]
    rows, cols = [], []
    for i in range(n):
        terms = [scale * (a[i] * b[j]).sum() for j in range(n) if j == i or not bool(same[i, j])]
        terms += [scale * (a[i] * negs[m]).sum() for m in range(negs.shape[0]) if not bool(mask[i, m])]
        rows.append(-(scale * (a[i] * b[i]).sum() - torch.log(sum(torch.exp(t) for t in terms))))
        back = [scale * (b[i] * a[j]).sum() for j in range(n) if j == i or not bool(same[j, i])]
        cols.append(-(scale * (b[i] * a[i]).sum() - torch.log(sum(torch.exp(t) for t in back))))
    per = [(r + c) / 2 for r, c in zip(rows, cols, strict=True)]
    return sum(weights[i] * per[i] for i in range(n)) / weights.sum()


def test_mined_negatives_join_the_query_softmax_only_value_and_every_gradient() -> None:
    a0, b0, s0 = _inputs()
    gen = torch.Generator().manual_seed(3)
    n0 = F.normalize(torch.randn(4, a0.shape[1], generator=gen, dtype=torch.float64), dim=-1)  # (M, d)
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[0, 1] = mask[2, 1] = mask[5, 3] = True  # negative 1 is a positive of rows 0 and 2 after all
    same = same_from_ids(torch.tensor([0, 1, 0, 2, 3, 1]))
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    grads, values = [], []
    for fn in ("fast", "naive"):
        a, b, n, s = (t.clone().requires_grad_(True) for t in (a0, b0, n0, s0))
        if fn == "fast":
            loss = info_nce(a, b, s, same, weights, negatives=n, negative_mask=mask)
        else:
            loss = _naive_with_negatives(a, b, n, s, mask, same, weights)
        loss.backward()
        values.append(loss.detach())
        grads.append([t.grad for t in (a, b, n, s)])
    torch.testing.assert_close(values[0], values[1])
    for fast, naive in zip(*grads, strict=True):
        torch.testing.assert_close(fast, naive)
    assert float(grads[0][2].abs().max()) > 1e-3  # the negatives are pushed away: they get a gradient
    # without negatives the value is the plain InfoNCE's, and harder negatives raise the loss
    plain = info_nce(a0, b0, s0, same, weights)
    torch.testing.assert_close(info_nce(a0, b0, s0, same, weights, negatives=n0[:0]), plain)
    assert float(values[0]) > float(plain)


def test_negatives_shape_errors_are_clear() -> None:
    a, b, s = _inputs()
    with pytest.raises(ValueError, match="negatives: expected"):
        info_nce(a, b, s, negatives=torch.zeros(3, 2, dtype=a.dtype))
    with pytest.raises(ValueError, match="negative_mask: expected"):
        info_nce(a, b, s, negatives=torch.zeros(3, 5, dtype=a.dtype), negative_mask=torch.zeros(6, 2, dtype=torch.bool))
