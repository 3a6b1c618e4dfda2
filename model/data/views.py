"""A listing's views, laid out as arrays for the towers.

Views (model.config.VIEW_TYPES): title, primary image, description, tags (tags + attributes +
category as one text), other images (the mean feature of the listing's other photos: one view,
however many photos). Texts are deduplicated across listings and queries so each is encoded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.config import DESCRIPTION, IMAGE, IMAGE_OTHER, TAGS, TITLE, VIEW_TYPES, TextConfig
from model.data.catalog import Listing

# Text kinds choose the token budget (TextConfig): queries, titles, long texts.
KIND_QUERY, KIND_TITLE, KIND_TEXT = 0, 1, 2


def tags_text(listing: Listing) -> str:
    """Category, tags and attributes as one short text ("mug | gift, coffee | color: red")."""
    parts = []
    if listing.category:
        parts.append(listing.category)
    if listing.tags:
        parts.append(", ".join(listing.tags))
    if listing.attributes:
        parts.append("; ".join(f"{k}: {v}" for k, v in listing.attributes.items()))
    return " | ".join(parts)


class TextTable:
    """Unique texts with their kind; `add` returns the text's row (deduplicated)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.kinds: list[int] = []
        self._index: dict[tuple[str, int], int] = {}

    def add(self, text: str, kind: int) -> int:
        key = (text, kind)
        row = self._index.get(key)
        if row is None:
            row = self._index[key] = len(self.texts)
            self.texts.append(text)
            self.kinds.append(kind)
        return row

    def find(self, text: str, kind: int) -> int | None:
        """The row of a text already added, or None."""
        return self._index.get((text, kind))

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class ViewTable:
    """Views of n listings. Missing views are -1 / empty."""

    ids: list[str]
    texts: TextTable
    text_rows: np.ndarray  # (n, 3) int64 rows into `texts` for title, description, tags
    image_paths: list[str]  # unique image files
    primary_image: np.ndarray  # (n,) int64 row into image_paths, -1 when missing
    other_images: list[list[int]]  # per listing, rows into image_paths

    def __len__(self) -> int:
        return len(self.ids)

    def present(self, image_ok: np.ndarray | None = None) -> np.ndarray:
        """(n, V) bool: which views each listing has (images must also have featurised, if known)."""
        n = len(self.ids)
        out = np.zeros((n, len(VIEW_TYPES)), dtype=bool)
        out[:, TITLE] = self.text_rows[:, 0] >= 0
        out[:, DESCRIPTION] = self.text_rows[:, 1] >= 0
        out[:, TAGS] = self.text_rows[:, 2] >= 0
        ok = image_ok if image_ok is not None else np.ones(len(self.image_paths), dtype=bool)
        prim = self.primary_image
        out[:, IMAGE] = (prim >= 0) & ok[np.maximum(prim, 0)] if len(ok) else False
        out[:, IMAGE_OTHER] = [any(ok[j] for j in rows) for rows in self.other_images]
        return out


def build_view_table(listings: Sequence[Listing], texts: TextTable | None = None) -> ViewTable:
    """Lay out the views of `listings`; pass a shared TextTable to deduplicate with queries."""
    texts = texts if texts is not None else TextTable()
    n = len(listings)
    text_rows = np.full((n, 3), -1, dtype=np.int64)
    image_rows: dict[str, int] = {}
    image_paths: list[str] = []
    primary = np.full(n, -1, dtype=np.int64)
    others: list[list[int]] = []

    def image_row(path: str) -> int:
        if path not in image_rows:
            image_rows[path] = len(image_paths)
            image_paths.append(path)
        return image_rows[path]

    for i, listing in enumerate(listings):
        text_rows[i, 0] = texts.add(listing.title, KIND_TITLE)
        if listing.description:
            text_rows[i, 1] = texts.add(listing.description, KIND_TEXT)
        tag_text = tags_text(listing)
        if tag_text:
            text_rows[i, 2] = texts.add(tag_text, KIND_TEXT)
        if listing.primary_image is not None:
            primary[i] = image_row(listing.primary_image)
        others.append([image_row(p) for p in listing.other_images])
    return ViewTable([lst.id for lst in listings], texts, text_rows, image_paths, primary, others)


def encoder_cuts(views: ViewTable, tokenizer: Any, cfg: TextConfig) -> dict[str, dict[str, int]]:
    """Per text view: its token budget, how many listings have that view, and how many of them hold
    more tokens than the budget (the encoder sees the first tokens only; BM25 and the stored
    record keep the whole text). `tokenizer` is a model.encoders.tokenizer.Tokenizer."""
    out: dict[str, dict[str, int]] = {}
    for col, name, budget in ((0, "title", cfg.max_title_tokens), (1, "description", cfg.max_text_tokens),
                              (2, "tags", cfg.max_text_tokens)):
        rows = views.text_rows[:, col]  # (n,)
        rows = rows[rows >= 0]
        unique = np.unique(rows)
        over = np.asarray(tokenizer.over_budget([views.texts.texts[r] for r in unique], budget), dtype=bool)
        n_over = int(np.isin(rows, unique[over]).sum()) if len(unique) else 0
        out[name] = {"budget_tokens": int(budget), "listings": int(len(rows)), "truncated": n_over}
    return out
