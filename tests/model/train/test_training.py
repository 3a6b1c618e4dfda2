"""The training loop on a tiny random encoder: FT's work per listing stays constant as views are
added while ft-allpairs grows (counted, not timed), every objective trains without NaNs, and a
resumed run continues exactly where the saved one stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_data, make_trainer

from model.encoders.text import MiniLM, Tokenizer, resolve_weights_dir


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


def test_resume_continues_exactly(tokenizer, tmp_path: Path) -> None:
    """A run killed after epoch 1 and resumed ends with the same weights as one straight run."""
    data = make_data(64, 1, texts=True)
    straight = make_trainer("ft", data, tokenizer)
    straight.fit()

    def killed(epoch: int, _model) -> dict:
        if epoch == 2:
            raise KeyboardInterrupt("killed during epoch 2")
        return {}

    first = make_trainer("ft", data, tokenizer)
    with pytest.raises(KeyboardInterrupt):
        first.fit(checkpoint=tmp_path, on_epoch=killed)
    resumed = make_trainer("ft", data, tokenizer)
    assert resumed.load_state(tmp_path) and resumed.epoch == 1
    resumed.fit(checkpoint=tmp_path)
    assert [e["epoch"] for e in resumed.history.epochs] == [1, 2]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_resume_refuses_another_config(tokenizer, tmp_path: Path) -> None:
    data = make_data(32, 0)
    tr = make_trainer("ft", data, tokenizer)
    tr.fit(checkpoint=tmp_path)
    other = make_trainer("clip", data, tokenizer)
    with pytest.raises(ValueError, match="another training config"):
        other.load_state(tmp_path)


def test_mini_lm_class_is_used(tokenizer) -> None:
    assert isinstance(make_trainer("ft", make_data(16, 0), tokenizer).model.encoder, MiniLM)
