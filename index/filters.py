"""Structured filters over the indexed listings: category, attribute equality, price range.

`FilterColumns` keeps one compact column per filterable field in memory (category codes, prices,
an inverted index of attribute (key, value) pairs) and turns a `Filter` into a boolean mask over
index rows. Matching is case-insensitive and ignores surrounding white space.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


def norm(value: str) -> str:
    return " ".join(value.split()).casefold()


@dataclass(frozen=True)
class Filter:
    categories: frozenset[str] = frozenset()  # any of these (empty = no constraint)
    attributes: tuple[tuple[str, frozenset[str]], ...] = ()  # each key must take one of its values ([] = none)
    price_min: float | None = None
    price_max: float | None = None

    @classmethod
    def build(
        cls,
        categories: Iterable[str] | None = None,
        attributes: Mapping[str, str | Sequence[str]] | None = None,
        price_min: float | None = None,
        price_max: float | None = None,
    ) -> Filter:
        attrs = []
        for key, values in sorted((attributes or {}).items()):
            vals = [values] if isinstance(values, str) else list(values)
            if vals:  # [] is no constraint, as for categories (not "match nothing")
                attrs.append((norm(key), frozenset(norm(v) for v in vals)))
        if price_min is not None and price_max is not None and price_min > price_max:
            raise ValueError(f"price: min {price_min} is greater than max {price_max}")
        return cls(frozenset(norm(c) for c in categories or ()), tuple(attrs), price_min, price_max)

    @property
    def empty(self) -> bool:
        return not self.categories and not self.attributes and self.price_min is None and self.price_max is None

    def key(self) -> tuple:
        """Hashable identity, for caches."""
        return (tuple(sorted(self.categories)), tuple((k, tuple(sorted(v))) for k, v in self.attributes),
                self.price_min, self.price_max)


@dataclass
class FilterColumns:
    n: int
    category_codes: np.ndarray  # (n,) int32, -1 = none
    category_vocab: dict[str, int]
    prices: np.ndarray  # (n,) float32, NaN = unknown (never matches a price filter)
    attribute_rows: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (key, value) -> rows

    @classmethod
    def from_rows(
        cls,
        categories: Sequence[str | None],
        prices: Sequence[float | None],
        attributes: Sequence[Mapping[str, str]],
    ) -> FilterColumns:
        n = len(categories)
        vocab: dict[str, int] = {}
        codes = np.full(n, -1, dtype=np.int32)
        for i, c in enumerate(categories):
            if c:
                codes[i] = vocab.setdefault(norm(c), len(vocab))
        price = np.array([np.nan if p is None else p for p in prices], dtype=np.float32)
        inverted: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, attrs in enumerate(attributes):
            for k, v in attrs.items():
                inverted[(norm(k), norm(v))].append(i)
        rows = {kv: np.asarray(r, dtype=np.int64) for kv, r in inverted.items()}
        return cls(n, codes, vocab, price, rows)

    def mask(self, f: Filter) -> np.ndarray | None:
        """(n,) bool of the rows that pass `f`, or None when `f` constrains nothing."""
        if f.empty:
            return None
        m = np.ones(self.n, dtype=bool)
        if f.categories:
            codes = [self.category_vocab[c] for c in f.categories if c in self.category_vocab]
            m &= np.isin(self.category_codes, np.asarray(codes, dtype=np.int32))
        for key, values in f.attributes:
            ok = np.zeros(self.n, dtype=bool)
            for v in values:
                rows = self.attribute_rows.get((key, v))
                if rows is not None:
                    ok[rows] = True
            m &= ok
        # Bounds past float32's range (1e39) compare as its largest value: the prices column is float32
        # and a larger scalar would overflow in the cast (nothing finite lies beyond it either way).
        top = float(np.finfo(np.float32).max)
        if f.price_min is not None:
            m &= self.prices >= min(f.price_min, top)  # NaN compares False: unknown prices never match
        if f.price_max is not None:
            m &= self.prices <= min(f.price_max, top)
        return m
