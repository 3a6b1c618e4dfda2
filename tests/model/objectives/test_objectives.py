"""The objectives on plain tensors: FT's sampled estimate is unbiased, its sampling follows the
fusion weights, every objective gives a finite loss with finite gradients, and each encodes what
it says it encodes (FT: primaries + one auxiliary view; clip: primaries only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import AUX_VIEWS, PRIMARY_VIEWS, TrainConfig, slot_types
from model.objectives import ViewBatch, make_objective
from model.objectives.base import primary_mask
from model.objectives.contrastive import same_from_ids
from model.objectives.ft import FactorizedTransport
from model.view_fusion import Fusion

D = 16


def make_batch(objective, B: int = 12, n_other: int = 3, seed: int = 0, all_present: bool = False):
    gen = torch.Generator().manual_seed(seed)
    types = torch.tensor(slot_types(n_other))
    S = len(types)
    present = torch.rand(B, S, generator=gen) > 0.3
    present[:, 0] = True  # every listing has a title
    if all_present:
        present[:] = True
    fusion = Fusion(0.69)
    with torch.no_grad():
        fusion.logits.copy_(torch.randn(5, generator=gen))
    weights = fusion.slot_weights(present, types)
    encode, aux = objective.select_views(present, weights, types, torch.rand(B, generator=gen))
    views = F.normalize(torch.randn(B, S, D, generator=gen), dim=-1) * encode.unsqueeze(-1)
    views.requires_grad_()
    query = F.normalize(torch.randn(B, D, generator=gen), dim=-1).requires_grad_()
    ids = torch.arange(B) % (B - 2)  # two listings appear twice
    return ViewBatch(query, views, encode, present, weights, types, aux, same_from_ids(ids),
                     torch.ones(B), torch.tensor(10.0)), fusion


@pytest.mark.parametrize("name", ["ft", "ft-allpairs", "clip", "oat", "pmrl"])
def test_every_objective_has_finite_loss_and_gradients(name: str) -> None:
    obj = make_objective(name, D, TrainConfig(objective=name, sinkhorn_iters=20))
    batch, _ = make_batch(obj)
    loss, parts = obj(batch)
    assert torch.isfinite(loss) and loss.ndim == 0
    assert all(isinstance(v, float) for v in parts.values())
    gq, gv = torch.autograd.grad(loss, [batch.query, batch.views])
    assert torch.isfinite(gq).all() and torch.isfinite(gv).all()
    assert gq.abs().sum() > 0


def test_ft_encodes_primaries_plus_exactly_one_aux_view() -> None:
    obj = make_objective("ft", D, TrainConfig())
    batch, _ = make_batch(obj, B=64, n_other=6)
    prim = primary_mask(batch.slot_types)
    assert torch.equal(batch.encoded & prim, batch.present & prim)
    aux_counts = (batch.encoded & ~prim).sum(1)
    has_aux = (batch.present & ~prim).any(1)
    assert torch.equal(aux_counts, has_aux.long())
    assert torch.all(batch.encoded[torch.arange(64)[has_aux], batch.aux[has_aux]])


def test_clip_encodes_primaries_only_and_indexes_them_only() -> None:
    obj = make_objective("clip", D, TrainConfig(objective="clip"))
    batch, _ = make_batch(obj)
    assert not (batch.encoded & ~primary_mask(batch.slot_types)).any()
    assert set(obj.index_views) == {"title", "image"}


def test_ft_samples_aux_views_in_proportion_to_their_weight() -> None:
    obj: FactorizedTransport = make_objective("ft", D, TrainConfig())
    types = torch.tensor(slot_types(2))
    present = torch.ones(1, len(types), dtype=torch.bool).repeat(20000, 1)
    fusion = Fusion(0.69)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.0, 0.3, 1.0, -0.5, 0.2]))
    w = fusion.slot_weights(present, types)
    _, aux = obj.select_views(present, w, types, torch.rand(20000, generator=torch.Generator().manual_seed(3)))
    aux_slots = [s for s, t in enumerate(types.tolist()) if t in AUX_VIEWS]
    freq = torch.bincount(aux, minlength=len(types)).float()[aux_slots] / len(aux)
    expect = w[0, aux_slots] / w[0, aux_slots].sum()
    torch.testing.assert_close(freq, expect, atol=0.01, rtol=0)


def test_ft_estimate_is_unbiased_for_the_fused_mean() -> None:
    """E_u[m~] = sum_s w_s z_s: the Monte Carlo mean of the estimator over many draws of the
    auxiliary view converges to the exact unnormalised fused mean, for every listing."""
    obj: FactorizedTransport = make_objective("ft", D, TrainConfig())
    gen = torch.Generator().manual_seed(5)
    types = torch.tensor(slot_types(3))
    B, S, draws = 6, len(types), 4000
    present = torch.rand(B, S, generator=gen) > 0.2
    present[:, 0] = True
    fusion = Fusion(0.69)
    w = fusion.slot_weights(present, types).detach()
    z = F.normalize(torch.randn(B, S, D, generator=gen), dim=-1)
    exact = torch.einsum("bs,bsd->bd", w, z * present.unsqueeze(-1))
    rep = lambda t: t.repeat(draws, *([1] * (t.ndim - 1)))  # noqa: E731
    encode, aux = obj.select_views(rep(present), rep(w), types, torch.rand(B * draws, generator=gen))
    batch = ViewBatch(torch.zeros(B * draws, D), rep(z) * encode.unsqueeze(-1), encode, rep(present), rep(w),
                      types, aux, torch.zeros(B * draws, B * draws, dtype=torch.bool), torch.ones(B * draws),
                      torch.tensor(1.0))
    m_tilde = obj.estimate(batch)[0].view(draws, B, D).mean(0)
    torch.testing.assert_close(m_tilde, exact, atol=0.02, rtol=0)
    # normalising the estimate is biased, but only slightly (why the index uses the exact fusion)
    bias = (F.normalize(obj.estimate(batch)[0], dim=-1).view(draws, B, D).mean(0) - F.normalize(exact, dim=-1))
    assert bias.norm(dim=-1).max() < 0.5


def test_ft_cost_per_listing_is_constant_in_views_while_allpairs_grows() -> None:
    """Slots actually encoded per listing: FT = primaries + 1 whatever the number of views."""
    counts = {}
    for name in ("ft", "ft-allpairs"):
        obj = make_objective(name, D, TrainConfig(objective=name))
        for n_other in (0, 2, 4, 6):
            batch, _ = make_batch(obj, B=32, n_other=n_other, all_present=True)
            counts[(name, n_other)] = batch.encoded.sum(1).float().mean().item()
    n_primary = len(PRIMARY_VIEWS)
    assert {counts[("ft", n)] for n in (0, 2, 4, 6)} == {n_primary + 1.0}
    assert [counts[("ft-allpairs", n)] for n in (0, 2, 4, 6)] == [4.0, 6.0, 8.0, 10.0]


def test_oat_alignment_is_minimised_not_maximised() -> None:
    """One SGD step on the image side lowers the OAT term (RecGOAT's sign pitfall)."""
    from model.objectives.oat import oat_alignment

    torch.manual_seed(0)
    text = F.normalize(torch.randn(16, D), dim=-1)
    image = F.normalize(torch.randn(16, D) + 2.0, dim=-1).requires_grad_()
    before = oat_alignment(image, text, 0.05, 50)
    (g,) = torch.autograd.grad(before, image)
    after = oat_alignment(F.normalize(image - 0.5 * g, dim=-1).detach(), text, 0.05, 50)
    assert after < before


def test_oat_alignment_matches_a_pot_reference_value_and_gradient() -> None:
    """Value and gradient against POT's log-domain Sinkhorn and a hand-written barycentric map:
    the gradient w.r.t. image point i is -goal_i / n, and the text side (the goal) gets none."""
    import numpy as np
    import ot

    from model.objectives.oat import oat_alignment

    gen = torch.Generator().manual_seed(4)
    n, m = 9, 7
    image = F.normalize(torch.randn(n, D, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(m, D, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    got = oat_alignment(image, text, 0.1, 2000)  # stops at marginal error 1e-6
    cost = (1.0 - image.detach() @ text.detach().T).numpy()
    cost = cost / cost.max()
    plan = torch.from_numpy(ot.sinkhorn(np.full(n, 1 / n), np.full(m, 1 / m), cost,
                                        0.1, method="sinkhorn_log", numItermax=100_000, stopThr=1e-10))
    goal = F.normalize((plan / plan.sum(1, keepdim=True)) @ text.detach(), dim=-1)  # (n, d)
    want = (1.0 - (image.detach() * goal).sum(-1)).mean()
    torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-5)
    g_image, g_text = torch.autograd.grad(got, [image, text], allow_unused=True)
    torch.testing.assert_close(g_image, -goal / n, rtol=0, atol=1e-5)
    assert g_text is None or float(g_text.abs().sum()) == 0.0


def test_oat_term_gradient_reaches_the_item_tower() -> None:
    """The OAT term trains the served path: its gradient reaches the image head that produces the
    indexed photo embeddings, and the objective holds no parameter of its own (no adapter outside
    the towers to absorb the alignment, unsaved at index time)."""
    obj = make_objective("oat", D, TrainConfig(objective="oat", cross_view_weight=0.0, sinkhorn_iters=50))
    assert list(obj.parameters()) == []
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(9)
    head = torch.nn.Linear(12, D)  # a stand-in image tower: features -> photo embedding
    feats = torch.randn(16, 12, generator=gen)
    base, _ = make_batch(obj, B=16, all_present=True)
    photo_slots = [s for s, t in enumerate(base.slot_types.tolist()) if t in (1, 4)]  # image views
    views = base.views.detach().clone()
    views[:, photo_slots] = F.normalize(head(feats), dim=-1).unsqueeze(1).expand(-1, len(photo_slots), -1)

    def grads(transport_weight: float) -> list[torch.Tensor]:
        obj.transport_weight = transport_weight
        batch = ViewBatch(base.query.detach(), views, base.encoded, base.present, base.weights.detach(),
                          base.slot_types, base.aux, base.same, base.pair_weight, base.logit_scale)
        loss, parts = obj(batch)
        assert parts["oat"] > 0
        return torch.autograd.grad(loss, list(head.parameters()), retain_graph=True)

    with_oat, without = grads(1.0), grads(0.0)
    oat_grad = sum(float((a - b).abs().sum()) for a, b in zip(with_oat, without, strict=True))
    assert oat_grad > 1e-4


def _enumerated_ft(fusion: Fusion, z: torch.Tensor, present: torch.Tensor, types: torch.Tensor):
    """One row per (listing, auxiliary slot u it has), with the draw's probability p_u: a batch
    that enumerates the estimator's distribution exactly instead of sampling it."""
    obj: FactorizedTransport = make_objective("ft", D, TrainConfig())
    w = fusion.slot_weights(present, types)  # (B, S) differentiable in the logits
    aux_slots = (present & ~primary_mask(types)).nonzero().tolist()  # [(b, u)]
    rows = torch.tensor([b for b, _ in aux_slots])
    aux = torch.tensor([u for _, u in aux_slots])
    w_rows, z_rows, pres = w[rows], z[rows], present[rows]
    p_u = (w_rows[torch.arange(len(rows)), aux] / (w_rows * (pres & ~primary_mask(types))).sum(-1)).detach()
    encode = pres & primary_mask(types)
    encode[torch.arange(len(rows)), aux] = True
    n = len(rows)
    batch = ViewBatch(torch.zeros(n, D), z_rows * encode.unsqueeze(-1), encode, pres, w_rows, types, aux,
                      torch.zeros(n, n, dtype=torch.bool), torch.ones(n), torch.tensor(1.0))
    return obj.estimate(batch)[0], rows, p_u, w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ft_estimate_is_unbiased_in_value_and_in_gradient_wrt_fusion_logits(seed: int) -> None:
    """Enumerating every auxiliary draw u with its probability p_u: E_u[m~] = m, and for a fixed
    read-out c, E_u[d <c, m~> / d logits] = d <c, m> / d logits (and likewise for the views). With
    m~ = m_prim + A z_u (the old estimator) every auxiliary weight got the same upstream gradient
    and the logit gradient was biased (two signs wrong on a 3-auxiliary example)."""
    gen = torch.Generator().manual_seed(seed)
    types = torch.tensor(slot_types(2))  # title, image, description, tags, 2 other photos
    B, S = 4, len(types)
    present = torch.rand(B, S, generator=gen) > 0.25
    present[:, 0] = True
    present[0, :] = True  # one listing with every view
    present[1, 2:] = False
    present[1, 2] = True  # one with a single auxiliary view (p_u = 1)
    fusion = Fusion(0.69)
    with torch.no_grad():
        fusion.logits.copy_(torch.randn(5, generator=gen))
    z = F.normalize(torch.randn(B, S, D, generator=gen), dim=-1).requires_grad_()
    c = torch.randn(B, D, generator=gen)  # (B, d) a fixed linear read-out
    has_aux = (present & ~primary_mask(types)).any(1)  # (B,)

    m_tilde, rows, p_u, w = _enumerated_ft(fusion, z, present, types)
    expected_m = torch.zeros(B, D).index_add(0, rows, p_u.unsqueeze(-1) * m_tilde)
    exact_m = torch.einsum("bs,bsd->bd", w, z * present.unsqueeze(-1))  # (B, d)
    torch.testing.assert_close(expected_m[has_aux], exact_m[has_aux])
    g_est = torch.autograd.grad((p_u.unsqueeze(-1) * m_tilde * c[rows]).sum(), [fusion.logits, z], retain_graph=True)
    g_exact = torch.autograd.grad((exact_m[has_aux] * c[has_aux]).sum(), [fusion.logits, z])
    assert g_exact[0].abs().max() > 1e-3
    torch.testing.assert_close(g_est[0], g_exact[0], msg=lambda m: f"grad wrt fusion logits: {m}")
    torch.testing.assert_close(g_est[1], g_exact[1], msg=lambda m: f"grad wrt views: {m}")


def test_ft_sampled_logit_gradient_converges_to_the_exact_one() -> None:
    """The same through the sampler the trainer uses (`select_views`), by Monte Carlo."""
    obj: FactorizedTransport = make_objective("ft", D, TrainConfig())
    gen = torch.Generator().manual_seed(11)
    types = torch.tensor(slot_types(1))  # description, tags, one other photo: 3 auxiliary views
    S, draws = len(types), 20000
    present = torch.ones(1, S, dtype=torch.bool)
    fusion = Fusion(0.69)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([0.0, 0.2, 0.5, -0.4, 0.1]))
    z = F.normalize(torch.randn(1, S, D, generator=gen), dim=-1)
    c = torch.randn(D, generator=gen)
    w = fusion.slot_weights(present.repeat(draws, 1), types)  # (draws, S)
    encode, aux = obj.select_views(present.repeat(draws, 1), w, types, torch.rand(draws, generator=gen))
    batch = ViewBatch(torch.zeros(draws, D), z.repeat(draws, 1, 1) * encode.unsqueeze(-1), encode,
                      present.repeat(draws, 1), w, types, aux, torch.zeros(draws, draws, dtype=torch.bool),
                      torch.ones(draws), torch.tensor(1.0))
    (g_mc,) = torch.autograd.grad((obj.estimate(batch)[0] @ c).mean(), fusion.logits)
    exact = torch.einsum("bs,bsd->bd", fusion.slot_weights(present, types), z)[0]  # (d,)
    (g_exact,) = torch.autograd.grad(exact @ c, fusion.logits)
    torch.testing.assert_close(g_mc, g_exact, atol=0.02 * float(g_exact.abs().max()), rtol=0)
    assert torch.equal(torch.sign(g_mc[2:]), torch.sign(g_exact[2:]))  # the auxiliary types' signs
