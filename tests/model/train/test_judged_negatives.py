"""Judged negatives (`--negatives`): listings judged wrong for a training query join that query's
softmax. The loader's rules, the mapping onto training queries, the per-epoch draw against a
brute-force reference, the combination with mined negatives, and what training does with them."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WORDS, make_data, make_trainer

from model.data.catalog import CatalogError, Listing
from model.data.interactions import Interaction, load_negatives
from model.data.views import KIND_QUERY
from model.embed import embed_query_rows
from model.encoders.tokenizer import Tokenizer
from model.encoders.weights import resolve_weights_dir
from model.train.pairs import build_training_set


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(resolve_weights_dir(None) / "tokenizer.json")


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_loader_takes_query_item_rows_and_names_file_line_field(tmp_path: Path) -> None:
    ok = _write(tmp_path / "n.jsonl", [{"query": "Red  Mug", "item_id": "a"}, {"query": "mug", "item_id": 7},
                                       {"query": "mug", "item_id": "gone", "weight": 3}])
    got, rep = load_negatives(ok, {"a", "7"})
    assert [(n.query, n.item_id) for n in got] == [("Red Mug", "a"), ("mug", "7")]
    assert (rep.rows, rep.loaded, rep.unknown_items) == (3, 2, 1)
    bad = _write(tmp_path / "b.jsonl", [{"query": "mug", "item_id": "a"}, {"query": "", "item_id": "a"}])
    with pytest.raises(CatalogError, match=r"b\.jsonl:2: query: is empty"):
        load_negatives(bad)
    _, rep = load_negatives(bad, skip_bad_rows=True)
    assert (rep.loaded, len(rep.rejected)) == (1, 1)
    events = _write(tmp_path / "e.jsonl", [{"query": "mug", "item_id": "a", "action": "click", "request_id": "r"}])
    with pytest.raises(CatalogError, match=r"e\.jsonl:1: action: an events log records what shoppers chose"):
        load_negatives(events)


def test_negatives_map_onto_training_queries_only() -> None:
    listings = [Listing(id=f"L{i}", title=f"listing number {i}") for i in range(12)]
    ids = [x.id for x in listings]
    pairs = [Interaction("blue lamp", ids[0]), Interaction("blue lamp", ids[1]), Interaction("oak desk", ids[2])]
    negatives = [Interaction("Blue Lamp", ids[5]), Interaction("blue lamp", ids[5]),  # a repeat (case differs)
                 Interaction("blue lamp", ids[1]),  # also a positive of the query: never a negative
                 Interaction("oak desk", ids[6]), Interaction("oak desk", ids[7]),
                 Interaction("never searched", ids[8]), Interaction("oak desk", "not-in-catalog")]
    data = build_training_set(listings, np.zeros((0, 1280), np.float32), np.zeros(0, bool), None, pairs,
                              negatives=negatives)
    lamp, desk = data.texts.find("blue lamp", KIND_QUERY), data.texts.find("oak desk", KIND_QUERY)
    assert data.negatives == {lamp: [5], desk: [6, 7]}
    assert data.negatives_report == {"rows": 7, "used": 3, "queries": 2, "unknown_items": 1,
                                     "query_not_trained": 1, "is_positive": 1, "same_title": 0, "duplicate": 1}
    assert sum(v for k, v in data.negatives_report.items() if k not in ("rows", "queries")) == 7  # every row's fate
    assert data.texts.find("never searched", KIND_QUERY) is None  # no text row (nor trunk cost) for it
    pseudo = build_training_set(listings, np.zeros((0, 1280), np.float32), np.zeros(0, bool), None, [],
                                negatives=negatives)
    assert pseudo.self_supervised and pseudo.negatives == {}
    assert pseudo.negatives_report["query_not_trained"] == 7 - 1  # (the unknown listing counted as such)
    none = build_training_set(listings, np.zeros((0, 1280), np.float32), np.zeros(0, bool), None, pairs)
    assert none.negatives == {} and none.negatives_report == {}  # no --negatives: nothing in the report


def _with_negatives(base, negatives: dict[int, list[int]]):
    """`base` with judged negatives keyed by pair index's query row."""
    return dataclasses.replace(base, negatives={int(base.pair_query[p]): v for p, v in negatives.items()})


def test_each_epoch_draws_one_judged_negative_per_pair_uniformly(tokenizer) -> None:
    base = make_data(30, 1, seed=5)
    judged = {0: [10, 11, 12], 1: [20], 2: [0]}  # pair 2's only negative is pair 0's positive: allowed
    tr = make_trainer("ft", _with_negatives(base, judged), tokenizer)
    seen: dict[int, Counter] = {p: Counter() for p in judged}
    for _ in range(300):
        col = tr.draw_judged()
        assert col.shape == (len(base.pair_item), 1)
        for p in range(len(base.pair_item)):
            q_row = int(base.pair_query[p])
            want = next((v for k, v in judged.items() if int(base.pair_query[k]) == q_row), None)
            if want is None:
                assert col[p, 0] == -1
            else:
                assert int(col[p, 0]) in want
                seen.setdefault(p, Counter())[int(col[p, 0])] += 1
    assert set(seen[0]) == {10, 11, 12} and min(seen[0].values()) > 60  # uniform: ~100 each of 300
    assert set(seen[1]) == {20}


def test_a_judged_negative_with_a_positives_title_is_dropped_and_counted() -> None:
    listings = [Listing(id="A", title="oak desk"), Listing(id="B", title="oak desk"), Listing(id="C", title="oak chair")]
    data = build_training_set(listings, np.zeros((0, 1280), np.float32), np.zeros(0, bool), None,
                              [Interaction("desk", "A")], negatives=[Interaction("desk", "B"), Interaction("desk", "C")])
    assert data.negatives == {data.texts.find("desk", KIND_QUERY): [2]}
    assert data.negatives_report["same_title"] == 1 and data.negatives_report["used"] == 1


def test_judged_and_mined_negatives_are_columns_of_one_table(tokenizer) -> None:
    base = make_data(40, 1, seed=7)
    tr = make_trainer("ft", _with_negatives(base, {0: [30], 3: [31, 32]}), tokenizer)
    tr.cfg = dataclasses.replace(tr.cfg, hard_negatives=2, hard_negative_depth=6, hard_negative_skip=0)
    info = tr.epoch_negatives(None)
    assert tr.pair_negatives.shape == (40, 3)
    assert info["judged_negatives"] == 2.0 and info["mined_negatives"] == 2 * len(tr.query_rows)
    assert tr.pair_negatives[0, 0] == 30 and tr.pair_negatives[3, 0] in (31, 32)
    assert (tr.pair_negatives[[1, 2], 0] == -1).all() and (tr.pair_negatives[:, 1:] >= 0).all()
    tr.cfg = dataclasses.replace(tr.cfg, hard_negatives=0)  # judged only
    tr.epoch_negatives(None)
    assert tr.pair_negatives.shape == (40, 1)
    none = make_trainer("ft", base, tokenizer)
    assert none.epoch_negatives(None) == {} and none.pair_negatives is None


def test_a_batch_contrasts_its_queries_with_their_judged_negatives(tokenizer) -> None:
    base = make_data(40, 1, seed=8)
    tr = make_trainer("ft", _with_negatives(base, {p: [39 - p] for p in range(16)}), tokenizer)
    tr.epoch_negatives(None)
    tr.model.train()
    idx = np.arange(16)
    batch, _ = tr.make_batch(idx, torch.rand(16, generator=torch.Generator().manual_seed(0)))
    assert batch.negatives is not None and batch.negatives.shape[0] == 16  # 39..24, one per row
    torch.testing.assert_close(batch.negatives.detach(), tr.encode_items(np.arange(24, 40)).detach())


def test_training_pushes_a_judged_negative_below_its_querys_positive(tokenizer) -> None:
    """The case judged negatives exist for: a listing that looks like the answer ("<name> adapter"
    beside "<name>") and never appears in a batch otherwise (no query of its own). Same seed, data
    and schedule with and without them: the query's margin of its positive over the judged-wrong
    listing grows, by more than chance variation."""
    rng = np.random.default_rng(0)
    names = [" ".join(rng.choice(WORDS, 3)) for _ in range(24)]
    listings = [Listing(id=f"P{i}", title=t) for i, t in enumerate(names)]
    listings += [Listing(id=f"N{i}", title=f"{t} adapter") for i, t in enumerate(names)]
    pairs = [Interaction(t, f"P{i}") for i, t in enumerate(names)]
    wrong = [Interaction(t, f"N{i}") for i, t in enumerate(names)]
    margins = {}
    for name, negatives in (("without", None), ("with", wrong)):
        data = build_training_set(listings, np.zeros((0, 1280), np.float32), np.zeros(0, bool), None, pairs,
                                  negatives=negatives)
        tr = make_trainer("ft", data, tokenizer, seed=1, epochs=6)
        tr.fit()
        items = tr.catalog_vectors()
        q = embed_query_rows(tr.model, data.texts, data.pair_query, tr.device, tr.trunk)  # (24, d)
        margins[name] = float(np.mean(np.einsum("pd,pd->p", q, items[:24] - items[24:])))
    assert margins["with"] > 1.5 * margins["without"] > 0, margins
