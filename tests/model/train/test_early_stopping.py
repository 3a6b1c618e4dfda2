"""Early stopping: the bookkeeping on a known metric sequence, the held-out split, and the
trainer's validation (the kept weights score exactly what the best epoch scored)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import make_data, make_trainer
from torch import nn

from model.data.interactions import Interaction
from model.data.views import KIND_QUERY
from model.encoders.tokenizer import Tokenizer
from model.encoders.weights import resolve_weights_dir
from model.train.trainer import Trainer
from model.train.validation import EarlyStopping, ValidationSet, holdout_queries, normalise, query_unit


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(resolve_weights_dir(None) / "tokenizer.json")


def test_stops_after_patience_epochs_without_a_new_best_and_restores_it() -> None:
    net = nn.Linear(3, 2)
    early = EarlyStopping(patience=2)
    scores = [0.10, 0.30, 0.30, 0.20, 0.50]  # a tie is not an improvement
    stopped_at, kept = None, None
    for epoch, value in enumerate(scores, start=1):
        with torch.no_grad():
            net.weight.fill_(float(epoch))  # the weights each epoch ends with
        if early.update(epoch, {"ndcg@10": value}, {"net": net}):
            stopped_at = epoch
            break
        if epoch == 2:
            kept = net.weight.detach().clone()
    assert stopped_at == 4 and early.best_epoch == 2 and early.best == 0.30
    early.restore({"net": net})
    assert torch.equal(net.weight, kept)
    assert [h["epoch"] for h in early.history] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_holdout_is_by_normalised_query_and_keeps_every_row_of_a_query_together() -> None:
    rows = [Interaction(q, f"L{i % 7}", 1.0 + i % 2) for i in range(400) for q in (f"Query {i}", f"query  {i}")]
    train, vs = holdout_queries(rows, 0.25)
    held = set(vs.queries)
    assert 0.15 < len(held) / 400 < 0.35  # about a quarter of the 400 distinct queries
    assert not {normalise(it.query) for it in train} & held  # both spellings on one side
    assert len(train) + 2 * len(held) == len(rows)
    for q, rel in zip(vs.queries, vs.relevant, strict=True):
        assert query_unit(q) < 0.25 and sum(rel.values()) > 0
    with pytest.raises(ValueError, match="fraction"):
        holdout_queries(rows, 1.0)


def test_the_kept_weights_score_exactly_the_best_epoch(tokenizer) -> None:
    data = make_data(48, 1, seed=5)
    ids = data.views.ids
    # validation: the listings' own titles' first words as queries (not training pairs)
    queries = [" ".join(data.texts.texts[int(data.slots.rows[i, 0])].split()[:2]) + " v" for i in range(0, 48, 2)]
    vs = ValidationSet(queries, [{ids[i]: 1.0} for i in range(0, 48, 2)], "test")
    rows = np.array([data.texts.add(q, KIND_QUERY) for q in vs.queries])
    base = make_trainer("ft", data, tokenizer)  # builds the trunk after the rows were added
    tr = Trainer(base.model, data, base.trunk, dataclasses.replace(base.cfg, epochs=5, patience=2), torch.device("cpu"))
    hist = tr.fit(validation=vs, validation_rows=rows)
    es = hist.early_stopping
    vals = [e["val_ndcg@10"] for e in hist.epochs]
    assert es["best"] == max(vals) and es["best_epoch"] == 1 + vals.index(max(vals))
    assert es["epochs_run"] == len(vals) <= 5
    again, _ = tr.validate(vs, rows)
    assert again["ndcg@10"] == es["best"]  # the model left behind is the best epoch's
    with pytest.raises(ValueError, match="needs validation queries"):
        tr.fit(validation=None)  # patience without anything to validate on


def test_fit_restores_the_best_epoch_not_the_last(tokenizer, monkeypatch) -> None:
    """Validation scores scripted (best at epoch 2 of 4): the weights left are epoch 2's, bit for bit."""
    data = make_data(32, 1, seed=6)
    vs = ValidationSet(["red mug"], [{data.views.ids[0]: 1.0}], "scripted")
    rows = np.array([data.texts.add("red mug", KIND_QUERY)])
    base = make_trainer("ft", data, tokenizer)
    tr = Trainer(base.model, data, base.trunk, dataclasses.replace(base.cfg, epochs=4, patience=3), torch.device("cpu"))
    script, snapshots = iter([0.1, 0.5, 0.3, 0.2]), []

    def scripted(vs_, rows_):
        snapshots.append({k: v.detach().clone() for k, v in tr.model.state_dict().items()})
        return {"ndcg@10": next(script), "recall@10": 0.0, "recall@100": 0.0, "queries": 1}, tr.catalog_vectors()

    monkeypatch.setattr(tr, "validate", scripted)
    hist = tr.fit(validation=vs, validation_rows=rows)
    assert hist.early_stopping["best_epoch"] == 2 and len(hist.epochs) == 4
    now = tr.model.state_dict()
    assert all(torch.equal(now[k], snapshots[1][k]) for k in now)
    assert any(not torch.equal(now[k], snapshots[3][k]) for k in now)  # the last epoch's were different
