"""What a results page shows beyond the default hit, and the stored listing behind an id.

A hit is `{id, score, title, image}` by default, built from the columns the engine already reads,
so /search costs the same as ever. `fields` (GET `fields=price,attr.color`, POST `"fields": [...]`)
asks for more: `price`, `category`, `images` (every photo URL, the primary first), `attributes`
(all of them) or `attr.KEY` (just those). They are read after the search, in one lookup by id in
the listing store of the served version (index/store/listings.py), only when a request asks; a field
the listing has no value for is left out of its hit. The names are checked before the search
(422 on an unknown one; at most `max_fields`).

More like this (`like_id`, GET /listings/{id}/similar) starts here too: the listing must be in the
served version and not on the deny-list (404 otherwise, as GET /listings/{id}), and the mode it
is searched in follows from whether a query text comes with it (`like_mode`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from index.store.listings import ListingRecord
from service.api.schemas import ListingResponse, SearchHit, SearchResponse
from service.api.state import ServiceState
from service.serving.engine import Engine, LoadedVersion
from service.serving.errors import InvalidRequest, NotFound

ATTR_PREFIX = "attr."  # an attribute by name: fields=attr.KEY and GET /search?attr.KEY=v1,v2
COLUMNS = ("price", "category", "images", "attributes")
DEFAULT_FIELDS = ("id", "score", "title", "image")  # always there; naming them is allowed and changes nothing


@dataclass(frozen=True)
class Fields:
    """The extra fields a request asked for."""
    columns: frozenset[str] = frozenset()  # of COLUMNS
    attrs: tuple[str, ...] = ()  # attr.KEY names (ignored when all attributes are asked for)

    @property
    def empty(self) -> bool:
        return not self.columns and not self.attrs


NO_FIELDS = Fields()


def parse_fields(state: ServiceState, names: Sequence[str] | str | None, where: str = "fields") -> Fields:
    """`["price", "attr.color"]` or `"price,attr.color"` -> Fields; InvalidRequest naming the bad one."""
    if names is None:
        return NO_FIELDS
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [n.strip() for n in names]
    items = [n for n in items if n]
    limit = state.settings.max_fields
    if len(items) > limit:
        raise InvalidRequest(f"{where}: {len(items)} names, the limit is {limit} (max_fields)")
    columns: set[str] = set()
    attrs: list[str] = []
    for name in items:
        if name in COLUMNS:
            columns.add(name)
        elif name.startswith(ATTR_PREFIX) and len(name) > len(ATTR_PREFIX):
            attrs.append(name[len(ATTR_PREFIX):])
        elif name not in DEFAULT_FIELDS:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise InvalidRequest(f"{where}: unknown field {shown!r}; known: {', '.join(DEFAULT_FIELDS + COLUMNS)}, "
                                 "attr.KEY")
    return Fields(frozenset(columns), tuple(dict.fromkeys(attrs)))


def hit_fields(engine: Engine, rec: ListingRecord, fields: Fields) -> dict:
    """The asked-for values of one record (those it has)."""
    out: dict = {}
    if "price" in fields.columns and rec.price is not None:
        out["price"] = rec.price
    if "category" in fields.columns and rec.category is not None:
        out["category"] = rec.category
    if "images" in fields.columns:
        out["images"] = [u for u in (engine.image_url(r) for r in rec.photos()) if u]
    if "attributes" in fields.columns:
        out["attributes"] = dict(rec.attributes)
    elif fields.attrs:
        out["attributes"] = {k: rec.attributes[k] for k in fields.attrs if k in rec.attributes}
    return out


async def with_fields(state: ServiceState, answer: SearchResponse, fields: Fields) -> SearchResponse:
    """`answer` with the asked-for fields on each hit (one store lookup by id, off the event loop).
    Read from the served version: after a swap in between, the newer record of the same listing."""
    if fields.empty or not answer.results:
        return answer
    store = state.engine.current.store
    records = await asyncio.to_thread(store.by_ids, [h.id for h in answer.results])
    engine = state.engine
    results = []
    for h in answer.results:
        rec = records.get(h.id)
        extra = hit_fields(engine, rec, fields) if rec is not None else {}
        results.append(SearchHit.model_construct(id=h.id, score=h.score, title=h.title, image=h.image, **extra))
    return answer.model_copy(update={"results": results})


def find_listing(state: ServiceState, listing_id: str, where: str = "id") -> tuple[LoadedVersion, ListingRecord]:
    """The served version and its record of `listing_id`; NotFound (404) when it has none or the
    listing is on the deny-list (hidden everywhere, as from search results)."""
    engine = state.engine
    lv = engine.current
    rec = lv.store.by_ids([listing_id]).get(listing_id)
    if rec is None or engine.is_denied(listing_id):
        shown = listing_id if len(listing_id) <= 128 else listing_id[:128] + "..."
        raise NotFound(f"{where}: no listing {shown!r} in the served version")
    return lv, rec


def listing_response(state: ServiceState, lv: LoadedVersion, rec: ListingRecord) -> ListingResponse:
    engine = state.engine
    return ListingResponse(id=rec.id, title=rec.title, image=engine.image_url(rec.image),
                           images=[u for u in (engine.image_url(r) for r in rec.photos()) if u],
                           category=rec.category, price=rec.price, attributes=dict(rec.attributes),
                           index_version=lv.version)


def like_mode(state: ServiceState, query: str | None, mode: str | None, source: str = "like_id") -> str | None:
    """The mode a more-like-this search runs in. The listing's vector replaces the query's, so
    without a query text the search is dense (a lexical or hybrid one asked for is a 422); with
    one, the text is the lexical side of a hybrid search (dense or lexical would ignore one input:
    a 422 too). -> the mode to request (None: the settings' default, which must then be hybrid).
    Search by photo follows the same rule (`source="image"`: the photo's vector replaces the query's)."""
    asked, _ = state.engine.request_options(mode)
    what = "the listing's" if source == "like_id" else "the photo's"
    if query is None:
        if mode not in (None, "dense"):
            raise InvalidRequest(f"mode: {mode} needs a query text; {source} alone is a dense search")
        return "dense"
    if asked != "hybrid":
        raise InvalidRequest(f"mode: {asked} with both {source} and query would ignore one of them; use mode "
                             f"hybrid (the query's words beside {what} vector) or drop the query")
    return mode
