"""The result cache: frequent queries answered without queueing, encoding or searching.

An LRU map from (normalised query, k, offset, filter key, search options, version) to the finished
hits; the options are the mode (dense, lexical, hybrid) and the fusion with its weights, so two
requests that differ only there never share an entry. It is
checked before the micro-batcher, so a hit skips the queue entirely. Keys carry the served version
and the whole cache is emptied when the version changes, so a hot reload never serves results of
the old index (and the old entries do not linger, holding memory). The query is normalised the
way the model sees it (MiniLM is uncased, whitespace is collapsed by the route), so "Red  Mug" and
"red mug" share an entry.

Only the event loop touches it (get before submit, put after the answer), so it needs no lock.
Anything that changes results without a version swap (a deny-list update) must call `clear()`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.serving.engine import Answer, Engine, SearchRequest

CacheKey = tuple[str, int, int, Hashable, Hashable]


def normalise_query(query: str) -> str:
    return " ".join(query.casefold().split())


class ResultCache:
    def __init__(self, max_entries: int, on_lookup: Callable[[bool], None] | None = None,
                 on_size: Callable[[int], None] | None = None) -> None:
        """max_entries 0 turns the cache off (every get misses, nothing is stored or counted)."""
        if max_entries < 0:
            raise ValueError(f"cache_size: must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self.on_lookup, self.on_size = on_lookup, on_size
        self._data: OrderedDict[CacheKey, Any] = OrderedDict()
        self.version: Hashable | None = None
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def key(query: str, k: int, offset: int, filter_key: Hashable, options: Hashable = None) -> CacheKey:
        return normalise_query(query), k, offset, filter_key, options

    def _follow(self, version: str | None) -> None:
        if version != self.version:
            self.clear()
            self.version = version

    def get(self, key: CacheKey, version: Hashable) -> Any | None:
        """The cached value for `key` under the served `version`, or None (a miss)."""
        if not self.enabled:
            return None
        self._follow(version)
        value = self._data.get(key)
        if value is None:
            self.misses += 1
        else:
            self._data.move_to_end(key)
            self.hits += 1
        if self.on_lookup:
            self.on_lookup(value is not None)
        return value

    def put(self, key: CacheKey, version: Hashable, value: Any) -> None:
        """Store an answer computed on `version`; dropped when that is not the version the cache
        follows (a batch that started before a swap must not refill the cache with old results)."""
        if not self.enabled:
            return
        if self.version is None:
            self.version = version
        if version != self.version:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        if self.on_size:
            self.on_size(len(self._data))

    def clear(self) -> None:
        self._data.clear()
        if self.on_size:
            self.on_size(0)


async def search_cached(cache: ResultCache, engine: Engine, submit: Callable[[SearchRequest], Awaitable[Answer]],
                        req: SearchRequest) -> tuple[Answer, bool]:
    """The answer for `req` and whether it came from the cache. The cache version is (served
    version, deny-list generation): either changing empties it. `submit` is the micro-batcher's; a
    hit never reaches it."""
    if not cache.enabled:
        return await submit(req), False
    version = (engine.current.version, engine.deny_generation)
    key = cache.key(req.query, req.k, req.offset, req.filter.key(), req.options_key())  # options: mode + fusion
    hit = cache.get(key, version)
    if hit is not None:
        return hit, True
    answer = await submit(req)
    cache.put(key, (answer.index_version, version[1]), answer)  # stored under the version that answered
    return answer, False
