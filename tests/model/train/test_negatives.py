"""Mined hard negatives: the miner against a brute-force reference, and the trainer's use of them
(never a query's own positive, a gradient through the negatives' item tower, clip's title target)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_data, make_trainer

from model.data.interactions import Interaction
from model.data.views import KIND_QUERY
from model.encoders.tokenizer import Tokenizer
from model.encoders.weights import resolve_weights_dir
from model.train.negatives import mine_hard_negatives
from model.train.validation import exact_top


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(resolve_weights_dir(None) / "tokenizer.json")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference_window(q: np.ndarray, items: np.ndarray, pos: set[int], titles: np.ndarray, skip: int,
                      depth: int) -> list[int]:
    """Every listing scored, sorted (score desc, row asc), positives and same-title listings dropped."""
    scores = items @ q
    order = sorted(range(len(items)), key=lambda r: (-scores[r], r))
    banned = {int(titles[p]) for p in pos if titles[p] >= 0}
    cands = [r for r in order if r not in pos and int(titles[r]) not in banned]
    return cands[skip:skip + depth]


def test_exact_top_is_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    q, items = _unit(rng.normal(size=(7, 8))), _unit(rng.normal(size=(50, 8)))
    items[10] = items[3]  # a tie: the lower row first
    got = exact_top(q, items, 12)
    for i in range(len(q)):
        s = items @ q[i]
        want = sorted(range(50), key=lambda r: (-s[r], r))[:12]
        assert got[i].tolist() == want


@pytest.mark.parametrize("skip", [0, 3])
def test_miner_draws_from_the_reference_window_and_never_a_positive(skip: int) -> None:
    rng = np.random.default_rng(1)
    n, d = 80, 6
    items = _unit(rng.normal(size=(n, d)))
    titles = np.arange(n)
    titles[41] = titles[7]  # listing 41 repeats listing 7's title: a duplicate of a positive
    queries = _unit(rng.normal(size=(5, d)))
    positives = [{7}, {1, 2}, set(), {int(np.argmax(items @ queries[3]))}, {5}]
    depth = 10
    got = mine_hard_negatives(queries, items, positives, titles, 4, depth, skip, np.random.default_rng(0))
    assert got.shape == (5, 4)
    for i in range(5):
        window = _reference_window(queries[i], items, positives[i], titles, skip, depth)
        assert set(got[i].tolist()) <= set(window) and len(set(got[i].tolist())) == 4
        assert not set(got[i].tolist()) & positives[i]
    assert 41 not in got[0]  # the duplicate of query 0's positive
    # depth == n draws the whole window: exactly the reference set
    full = mine_hard_negatives(queries, items, positives, titles, 3, 3, skip, np.random.default_rng(0))
    for i in range(5):
        assert set(full[i].tolist()) == set(_reference_window(queries[i], items, positives[i], titles, skip, 3))


def test_miner_pads_with_minus_one_when_the_catalog_runs_out() -> None:
    items = _unit(np.eye(4, dtype=np.float32))
    got = mine_hard_negatives(items[:1], items, [{0, 1}], np.arange(4), 3, 5, 0, np.random.default_rng(0))
    assert sorted(got[0].tolist()) == [-1, 2, 3]
    with pytest.raises(ValueError, match="hard negatives"):
        mine_hard_negatives(items[:1], items, [set()], np.arange(4), 3, 2, 0, np.random.default_rng(0))


def _trainer(objective: str, tokenizer, hard: int):
    import dataclasses

    data = make_data(48, 1, seed=2)
    tr = make_trainer(objective, data, tokenizer)
    tr.cfg = dataclasses.replace(tr.cfg, hard_negatives=hard, hard_negative_depth=8, hard_negative_skip=0)
    return tr


def test_a_query_with_several_positives_never_gets_one_as_its_negative(tokenizer) -> None:
    base = make_data(40, 1, seed=4)
    ids = base.views.ids
    # each query clicked two listings: the second is always somebody's near miss
    pairs = [Interaction(f"query {i}", ids[i]) for i in range(40)] + [Interaction(f"query {i}", ids[(i + 1) % 40])
                                                                     for i in range(40)]
    tr = make_trainer("ft", _rebuild(base, pairs), tokenizer)
    import dataclasses

    tr.cfg = dataclasses.replace(tr.cfg, hard_negatives=3, hard_negative_depth=6, hard_negative_skip=0)
    tr.mine_negatives()
    for p in range(len(tr.data.pair_item)):
        q = int(tr.pair_q[p])
        assert not set(tr.pair_negatives[p].tolist()) & tr.positives[q]
    idx = np.arange(32)
    vecs, mask = tr.batch_negatives(idx)
    items = np.unique(tr.pair_negatives[idx][tr.pair_negatives[idx] >= 0])
    assert vecs.shape == (len(items), tr.model.cfg.tower.dim)
    titles = tr.title_rows
    for r, p in enumerate(idx):  # masked exactly where a negative is a row's positive or has its title
        pos = tr.positives[int(tr.pair_q[p])]
        want = [int(m) in pos or int(titles[m]) in {int(titles[x]) for x in pos} for m in items]
        assert mask[r].tolist() == want
    assert bool(mask.any())  # the batch holds both clicks of some query: the mask is exercised


def _rebuild(base, pairs):
    import dataclasses

    texts = base.views.texts
    q = np.array([texts.add(it.query, KIND_QUERY) for it in pairs], dtype=np.int64)
    index = {lid: i for i, lid in enumerate(base.views.ids)}
    return dataclasses.replace(base, pair_query=q, pair_item=np.array([index[it.item_id] for it in pairs]),
                               pair_weight=np.ones(len(pairs), np.float32))


@pytest.mark.parametrize("objective", ["ft", "clip"])
def test_negatives_vectors_are_what_the_query_is_contrasted_with(objective: str, tokenizer) -> None:
    tr = _trainer(objective, tokenizer, 2)
    tr.mine_negatives()
    items = np.array([0, 5, 9])
    got = tr.encode_items(items)
    full = torch.from_numpy(tr.catalog_vectors()[items])  # the fused vector the index holds
    if objective == "ft":
        torch.testing.assert_close(got.detach(), full, atol=1e-5, rtol=0)
    else:  # clip contrasts the query with the title view alone
        d = tr.data
        title = d.slots.types.index(0)
        pooled = tr.encode_texts(torch.from_numpy(d.slots.rows[items, title]))
        torch.testing.assert_close(got.detach(), F.normalize(tr.model.text_proj[0](pooled), dim=-1).detach())


def test_a_step_with_negatives_trains_the_item_tower_through_them(tokenizer) -> None:
    """Same batch, same mined negatives: once differentiable, once detached. The title projection's
    gradient differs only by what flows back through the negatives' own encoding."""
    grads = {}
    idx = np.arange(16)
    for detach in (False, True):
        tr = _trainer("ft", tokenizer, 2)
        tr.mine_negatives()
        tr.model.train()
        batch, ids = tr.make_batch(idx, torch.rand(len(idx), generator=torch.Generator().manual_seed(0)))
        assert batch.negatives is not None and batch.negatives.grad_fn is not None
        if detach:
            batch.negatives = batch.negatives.detach()
        loss, _ = tr.objective(tr.dist.gather_batch(batch, ids))
        loss.backward()
        grads[detach] = tr.model.text_proj[0].weight.grad.clone()
    assert not torch.allclose(grads[False], grads[True])  # the negatives' titles got their own gradient


def test_hard_negatives_refused_under_torchrun(tokenizer) -> None:
    import dataclasses

    from model.train.distributed import DistContext
    from model.train.trainer import Trainer

    tr = _trainer("ft", tokenizer, 1)
    cfg = dataclasses.replace(tr.cfg, hard_negatives=1)
    with pytest.raises(ValueError, match="torchrun"):
        Trainer(tr.model, tr.data, tr.trunk, cfg, torch.device("cpu"), dist=DistContext(rank=0, world=2))
