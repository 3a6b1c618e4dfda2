"""Fusion: masked views are ignored, weights are a softmax over present types shared by
instances, and it matches a naive per-listing computation (gradients included)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.config import IMAGE_OTHER, PRIMARY_VIEWS, VIEW_TYPES, slot_types
from model.view_fusion import Fusion


def naive(fusion: Fusion, z: torch.Tensor, present: torch.Tensor, types: tuple[int, ...]) -> torch.Tensor:
    out = []
    logits = fusion.logits + fusion.prior
    for b in range(z.shape[0]):
        have = sorted({types[s] for s in range(len(types)) if present[b, s]})
        if not have:
            out.append(torch.zeros(z.shape[-1], dtype=z.dtype))
            continue
        denom = sum(torch.exp(logits[t]) for t in have)
        m = torch.zeros(z.shape[-1], dtype=z.dtype)
        for s in range(len(types)):
            if present[b, s]:
                n_t = sum(1 for s2 in range(len(types)) if present[b, s2] and types[s2] == types[s])
                m = m + torch.exp(logits[types[s]]) / denom / n_t * z[b, s]
        out.append(F.normalize(m, dim=0))
    return torch.stack(out)


def test_matches_naive_and_ignores_masked_views() -> None:
    torch.manual_seed(0)
    types = slot_types(3)
    fusion = Fusion(primary_prior=0.7).double()
    with torch.no_grad():
        fusion.logits.copy_(torch.randn(len(VIEW_TYPES)))
    z = F.normalize(torch.randn(6, len(types), 8, dtype=torch.float64), dim=-1).requires_grad_()
    present = torch.rand(6, len(types)) > 0.4
    present[0] = False  # a listing with no views at all
    st = torch.tensor(types)
    got = fusion(z, present, st)
    want = naive(fusion, z, present, types)
    torch.testing.assert_close(got, want)
    # gradients equal too, and masked views get none
    c = torch.randn_like(got)  # a generic linear read-out, so no gradient cancels by symmetry
    g1, gl1 = torch.autograd.grad((got * c).sum(), [z, fusion.logits], retain_graph=True)
    g2, gl2 = torch.autograd.grad((want * c).sum(), [z, fusion.logits])
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(gl1, gl2)  # the learned per-type logits too
    assert gl1.abs().sum() > 0
    assert torch.all(g1[~present] == 0)
    # garbage (NaN) in a masked slot does not leak
    z2 = z.detach().clone()
    z2[~present] = float("nan")
    assert torch.isfinite(fusion(z2, present, st)[1:]).all()


def test_weights_sum_to_one_and_instances_share_their_type() -> None:
    types = slot_types(2)
    fusion = Fusion(primary_prior=0.0)
    present = torch.ones(1, len(types), dtype=torch.bool)
    w = fusion.slot_weights(present, torch.tensor(types))
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    other = [s for s, t in enumerate(types) if t == IMAGE_OTHER]
    assert torch.allclose(w[0, other], torch.full((2,), 1 / len(VIEW_TYPES) / 2))


def test_primary_prior_and_allowed_types() -> None:
    types = slot_types(0)
    fusion = Fusion(primary_prior=1.0)
    present = torch.ones(1, len(types), dtype=torch.bool)
    w = fusion.slot_weights(present, torch.tensor(types))[0]
    primary = [s for s, t in enumerate(types) if t in PRIMARY_VIEWS]
    aux = [s for s, t in enumerate(types) if t not in PRIMARY_VIEWS]
    assert torch.allclose(w[primary[0]] / w[aux[0]], torch.tensor(torch.e))
    allowed = torch.tensor([v in ("title", "image") for v in VIEW_TYPES])
    w2 = fusion.slot_weights(present, torch.tensor(types), allowed)[0]
    assert torch.all(w2[aux] == 0) and torch.isclose(w2.sum(), torch.tensor(1.0))


def test_view_weights_are_the_type_softmax_over_the_indexed_types() -> None:
    from model.view_fusion import view_weights

    fusion = Fusion(primary_prior=0.7)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.1, -0.2, 0.5, -1.0, 0.3]))
    got = view_weights(fusion)
    want = torch.softmax(fusion.logits.detach() + fusion.prior, dim=0)
    assert list(got) == list(VIEW_TYPES)
    assert all(abs(got[t] - float(want[i])) < 1e-4 for i, t in enumerate(VIEW_TYPES))
    two = view_weights(fusion, ("title", "image"))
    assert set(two) == {"title", "image"} and abs(sum(two.values()) - 1.0) < 1e-3
    assert abs(two["title"] / two["image"] - float(torch.exp(torch.tensor(0.3)))) < 1e-3
