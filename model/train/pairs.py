"""Training pairs and per-listing slot tables, as arrays.

A training example is a (query, listing, weight) pair: from `interactions.jsonl` when given, else
self-supervised pseudo-queries cut from the listing's own views (short word spans of its title,
tags and description), so a catalog without any log still trains cross-view alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.config import DESCRIPTION, IMAGE, IMAGE_OTHER, TAGS, TITLE, slot_types
from model.data.catalog import Listing
from model.data.interactions import Interaction
from model.data.views import KIND_QUERY, TextTable, ViewTable, build_view_table, tags_text


@dataclass
class SlotTable:
    """Per listing, per slot: the row of its text (text slots) or image feature (image slots)."""

    types: tuple[int, ...]  # (S,) view type per slot
    rows: np.ndarray  # (n, S) int64, -1 where the listing lacks that slot
    present: np.ndarray  # (n, S) bool


def build_slots(views: ViewTable, image_ok: np.ndarray, max_other_images: int) -> SlotTable:
    types = slot_types(max_other_images)
    n = len(views)
    rows = np.full((n, len(types)), -1, dtype=np.int64)
    rows[:, types.index(TITLE)] = views.text_rows[:, 0]
    rows[:, types.index(DESCRIPTION)] = views.text_rows[:, 1]
    rows[:, types.index(TAGS)] = views.text_rows[:, 2]
    first_other = types.index(IMAGE_OTHER) if max_other_images else len(types)
    for i in range(n):
        p = views.primary_image[i]
        if p >= 0 and image_ok[p]:
            rows[i, types.index(IMAGE)] = p
        others = [j for j in views.other_images[i] if image_ok[j]][:max_other_images]
        rows[i, first_other:first_other + len(others)] = others
    return SlotTable(types, rows, rows >= 0)


@dataclass
class TrainingSet:
    views: ViewTable
    slots: SlotTable
    image_features: np.ndarray  # (n_images, F) float32 (zeros where the image failed)
    pair_query: np.ndarray  # (P,) int64 rows into views.texts
    pair_item: np.ndarray  # (P,) int64 listing index
    pair_weight: np.ndarray  # (P,) float32
    self_supervised: bool
    # Judged negatives (`--negatives`): query text row -> listing indices shown for it and judged
    # wrong. Only queries that have training pairs are kept (a negative without a positive to
    # contrast it with teaches nothing), never a listing the query is paired with nor one with a
    # positive's exact title; `negatives_report` counts each row's fate ({} without negatives).
    negatives: dict[int, list[int]] = field(default_factory=dict)
    negatives_report: dict[str, int] = field(default_factory=dict)

    @property
    def texts(self) -> TextTable:
        return self.views.texts


def pseudo_queries(listing: Listing, n: int, rng: np.random.Generator) -> list[str]:
    """Short word spans (1-4 words) from the listing's title, tags text and description."""
    sources = [s for s in (listing.title, tags_text(listing).replace("|", " "), listing.description) if s]
    out = []
    for _ in range(n):
        words = sources[int(rng.integers(len(sources)))].split()
        if not words:
            continue
        length = int(rng.integers(1, min(4, len(words)) + 1))
        start = int(rng.integers(0, len(words) - length + 1))
        out.append(" ".join(words[start:start + length]))
    return out


def build_training_set(
    listings: Sequence[Listing],
    image_features: np.ndarray,
    image_ok: np.ndarray,
    views: ViewTable | None = None,
    interactions: Sequence[Interaction] | None = None,
    *,
    negatives: Sequence[Interaction] | None = None,
    max_other_images: int = 4,
    pseudo_per_item: int = 4,
    seed: int = 0,
) -> TrainingSet:
    """Pairs from interactions (when any match the catalog) or pseudo-queries; `views` may be
    passed when the image features were computed for its `image_paths`. `negatives`: judged
    negatives of the interaction queries (TrainingSet.negatives)."""
    texts = views.texts if views is not None else TextTable()
    views = views if views is not None else build_view_table(listings, texts)
    if len(image_features) != len(views.image_paths):
        raise ValueError(f"{len(image_features)} image features for {len(views.image_paths)} images")
    index = {lid: i for i, lid in enumerate(views.ids)}
    q_rows, items, weights = [], [], []
    for it in interactions or ():
        i = index.get(it.item_id)
        if i is not None:
            q_rows.append(texts.add(it.query.lower(), KIND_QUERY))
            items.append(i)
            weights.append(it.weight)
    self_supervised = not items
    if self_supervised:
        rng = np.random.default_rng(seed)
        for i, listing in enumerate(listings):
            for q in pseudo_queries(listing, pseudo_per_item, rng):
                q_rows.append(texts.add(q.lower(), KIND_QUERY))
                items.append(i)
                weights.append(1.0)
    if not items:
        raise ValueError("no training pairs: the catalog has no listing text to learn from")
    judged, judged_report = _judged_negatives(negatives or (), index, views, q_rows, items, self_supervised)
    return TrainingSet(
        views=views,
        slots=build_slots(views, image_ok, max_other_images),
        image_features=np.asarray(image_features, dtype=np.float32),
        pair_query=np.asarray(q_rows, dtype=np.int64),
        pair_item=np.asarray(items, dtype=np.int64),
        pair_weight=np.asarray(weights, dtype=np.float32),
        self_supervised=self_supervised,
        negatives=judged,
        negatives_report=judged_report,
    )


def _judged_negatives(negatives: Sequence[Interaction], index: dict[str, int], views: ViewTable,
                      q_rows: list[int], items: list[int], self_supervised: bool,
                      ) -> tuple[dict[int, list[int]], dict[str, int]]:
    """-> (query text row -> judged-wrong listing indices, counts for the build report: every row
    is `used` or counted under the one reason it was not)."""
    if not negatives:
        return {}, {}
    report = {"rows": len(negatives), "used": 0, "queries": 0, "unknown_items": 0, "query_not_trained": 0,
              "is_positive": 0, "same_title": 0, "duplicate": 0}
    positives: dict[int, set[int]] = {}
    for q, i in zip(q_rows, items, strict=True):
        positives.setdefault(q, set()).add(i)
    titles = views.text_rows[:, 0]  # (n,) title text row (identical titles share one)
    out: dict[int, dict[int, None]] = {}  # insertion-ordered sets
    for neg in negatives:
        i = index.get(neg.item_id)
        q = views.texts.find(neg.query.lower(), KIND_QUERY)
        if i is None:
            report["unknown_items"] += 1
        elif self_supervised or q is None or q not in positives:
            report["query_not_trained"] += 1
        elif i in positives[q]:
            report["is_positive"] += 1
        elif titles[i] >= 0 and any(titles[i] == titles[p] for p in positives[q]):
            # a duplicate listing judged wrong beside one judged right: raters disagree, no signal
            report["same_title"] += 1
        elif i in out.setdefault(q, {}):
            report["duplicate"] += 1
        else:
            out[q][i] = None
            report["used"] += 1
    judged = {q: list(v) for q, v in out.items() if v}
    report["queries"] = len(judged)
    return judged, report
