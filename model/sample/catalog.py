"""The sample catalog: a deterministic, Etsy-like marketplace on which multi-view learning matters.

`generate(out_dir, n_items, seed)` writes catalog.jsonl, images/, interactions.jsonl,
judgments.jsonl and summary.json. The properties that make it a fair test bed (vague titles,
attributes that only auxiliary views carry, photos that show some attributes and not others, a
query-string train/test split) are fixed here and documented, with their reasons, in
docs/SAMPLE_CATALOG.md; they are measured from the written text, not from the sampler's flags.

Layout: vocabulary tables, the listing sampler, the view accounting, the shopper (queries,
interactions, judgments), the writers. The painting lives in `model.sample.images`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.config import DESCRIPTION, IMAGE, IMAGE_OTHER, TAGS, TITLE
from model.sample.images import paint_closeup, paint_packaging, paint_studio, save_jpeg

# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class CategorySpec:
    plural: str
    materials: tuple[str, ...]  # only materials a seller of this category would list
    patterns: tuple[str, ...]  # only patterns that make sense on it (no plain posters)
    price: tuple[float, float]  # plausible price range in the shop's currency


PATTERNS_ALL = ("plain", "striped", "polka dot", "checkered", "zigzag", "floral")
CATEGORIES: dict[str, CategorySpec] = {
    "mug": CategorySpec("mugs", ("ceramic", "glass"), PATTERNS_ALL, (16, 42)),
    "scarf": CategorySpec("scarves", ("wool", "cotton", "linen"), PATTERNS_ALL, (24, 95)),
    "t-shirt": CategorySpec("t-shirts", ("cotton", "linen"), PATTERNS_ALL, (18, 45)),
    "necklace": CategorySpec("necklaces", ("silver", "brass"), ("plain", "striped", "polka dot"), (20, 140)),
    "poster": CategorySpec("posters", ("paper", "canvas"), PATTERNS_ALL[1:], (12, 60)),
    "tote bag": CategorySpec("tote bags", ("canvas", "cotton", "linen"), PATTERNS_ALL, (15, 55)),
    "candle": CategorySpec("candles", ("soy wax", "beeswax"), ("plain", "striped", "zigzag"), (10, 38)),
    "cushion": CategorySpec("cushions", ("cotton", "linen", "wool"), PATTERNS_ALL, (22, 80)),
    "vase": CategorySpec("vases", ("ceramic", "glass"), PATTERNS_ALL, (25, 120)),
    "beanie": CategorySpec("beanies", ("wool", "cotton"), PATTERNS_ALL, (16, 48)),
    "socks": CategorySpec("socks", ("wool", "cotton"), PATTERNS_ALL, (9, 26)),
    "earrings": CategorySpec("earrings", ("silver", "brass"), ("plain", "striped", "polka dot"), (14, 90)),
}
# Ten colours far apart in RGB, so a photo's colour is unambiguous to a pixel-level encoder.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35), "orange": (240, 130, 20), "yellow": (245, 210, 40), "green": (40, 150, 60),
    "blue": (35, 85, 200), "purple": (120, 50, 160), "pink": (240, 120, 170), "brown": (120, 75, 40),
    "black": (25, 25, 25), "white": (248, 248, 248),
}
ATTRIBUTE_KEYS = ("color", "pattern", "material")  # what shoppers ask for
VISUAL_KEYS = ("color", "pattern")  # what a photo can show
STYLES = ("boho", "minimalist", "vintage", "rustic", "modern", "cottagecore", "retro", "scandi")
RECIPIENTS = ("her", "him", "mom", "dad", "a friend", "a teacher", "the host")
VAGUE_TITLES = (  # no category or attribute word in any of them (tests check it)
    "Handmade gift for {recipient}", "Cozy everyday favorite", "One of a kind find",
    "Perfect birthday present for {recipient}", "Little treasure from my studio", "Something special",
    "Made with love, just for you", "Unique {style} piece", "{Style} vibes", "Back in stock!",
    "Limited run - only a few left", "Treat yourself", "Sweet surprise for {recipient}",
    "New in the shop", "Your new favorite thing", "Small batch, big heart", "{Style} home and gift idea",
    "Ready to ship gift", "Thoughtful gift for {recipient}", "A little bit of joy",
)
TITLE_TEMPLATES = ("{adjs} {noun}", "Handmade {adjs} {noun}", "{style} {adjs} {noun}",
                   "{adjs} {noun} | Gift for {recipient}", "{adjs} {noun} - Small Batch")
OPENINGS = ("Handmade {noun}, made in small batches in my home studio.", "Meet your new favorite {noun}.",
            "{Noun} made slowly and carefully, one at a time.")
OPENINGS_VAGUE = ("Handmade in small batches in my home studio.", "Made slowly and carefully, one at a time.",
                  "Every piece is a little different, which is part of the charm.")
ATTRIBUTE_SENTENCES = {
    "color": ("It comes in a rich {v} shade.", "Color: {v}.", "The {v} tone works in every season."),
    "pattern": ("It has a {v} pattern.", "Pattern: {v}.", "Finished with a {v} design."),
    "material": ("Made from {v}.", "Material: {v}.", "Crafted in {v} by hand."),
}
PLAIN_SENTENCES = ("Plain, with no pattern.", "Pattern: plain.", "Kept plain and simple.")
FLAVOUR = ("A {style} touch for any home.", "A lovely gift for {recipient}.", "Ships in 1-3 business days.",
           "Please message me with any questions.", "Gift wrapping is available at checkout.")

# --------------------------------------------------------------------------- fixed properties
# Chosen once, before any model was trained on this data (docs/SAMPLE_CATALOG.md has the reasons).
P_VAGUE_TITLE = 0.4
P_STUDIO_PRIMARY = 0.6
P_CLOSEUP = {"studio": 0.35, "packaging": 0.6}  # sellers with a packaging shot add a close-up more
P_DESCRIPTION = 0.7
P_TAGS = 0.6
P_IN_TITLE = {"color": 0.55, "pattern": 0.35, "material": 0.45}  # given an informative title
P_IN_DESCRIPTION = 0.65
P_IN_TAGS = 0.6
ASK_COUNT_P = (0.15, 0.45, 0.32, 0.08)  # a query asks for 0, 1, 2 or 3 attributes
ASK_KEY_P = (0.45, 0.3, 0.25)  # colour is asked most, material least (ATTRIBUTE_KEYS order)
TEST_FRACTION = 0.2
MAX_TEST_QUERIES = 300  # a few hundred: judgments stay a few MB at 2,000 listings
# Every listing of a query's category is judged, so rows grow with n_items: past ~20k listings the
# number of test queries shrinks to keep judgments.jsonl under ~10 MB.
MAX_JUDGMENT_ROWS = 100_000
INTERACTIONS_PER_ITEM = 4.0
P_PURCHASE = 0.15  # a purchase counts twice (weight 2.0)


# --------------------------------------------------------------------------- listings


@dataclass(frozen=True)
class SampleListing:
    """One generated listing: its true attributes and the views the seller wrote."""

    index: int
    id: str
    category: str
    color: str
    pattern: str
    material: str
    style: str
    recipient: str
    title: str
    description: str
    tags: tuple[str, ...]
    attributes: dict[str, str]  # the structured attributes the seller filled in (a subset)
    price: float
    primary: str  # "studio" (shows colour and pattern) or "packaging" (shape only)
    closeup: bool  # a second photo showing colour and pattern

    def truth(self) -> dict[str, str]:
        return {"color": self.color, "pattern": self.pattern, "material": self.material}

    @property
    def images(self) -> list[str]:
        return [f"images/{self.index:06d}_{k}.jpg" for k in range(1 + self.closeup)]

    def row(self) -> dict[str, Any]:
        """The catalog.jsonl row (empty fields omitted)."""
        row: dict[str, Any] = {"id": self.id, "title": self.title}
        if self.description:
            row["description"] = self.description
        if self.tags:
            row["tags"] = list(self.tags)
        if self.attributes:
            row["attributes"] = dict(self.attributes)
        row.update(category=self.category, price=self.price, images=self.images)
        return row


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _word_order(pairs: list[tuple[str, str]]) -> list[str]:
    """Adjectives as people write them: colour, pattern, material ("red striped wool"), except
    that "plain" goes first ("plain white")."""
    return sorted((v for _, v in pairs), key=lambda v: v != "plain")


@dataclass(frozen=True)
class _Voice:
    """What a seller's text is about: the category and the flavour words."""

    category: str
    style: str
    recipient: str

    def fill(self, template: str, **kw: str) -> str:
        return template.format(noun=self.category, Noun=self.category.capitalize(), style=self.style,
                               Style=self.style.capitalize(), recipient=self.recipient, **kw)


def _write_title(rng: np.random.Generator, voice: _Voice, values: list[tuple[str, str]] | None) -> str:
    """A vague title (values None) or the category with the given attributes as adjectives."""
    if values is None:
        return voice.fill(_pick(rng, VAGUE_TITLES))  # these templates have no {noun}
    title = voice.fill(_pick(rng, TITLE_TEMPLATES), adjs=" ".join(_word_order(values)))
    return " ".join(title.split()).title()


def _write_description(rng: np.random.Generator, voice: _Voice, values: list[tuple[str, str]]) -> str:
    """An opening, one sentence per given attribute (shuffled), one or two flavour sentences."""
    sentences = []
    for j in rng.permutation(len(values)):
        k, v = values[j]
        pool = PLAIN_SENTENCES if (k, v) == ("pattern", "plain") else ATTRIBUTE_SENTENCES[k]
        sentences.append(_pick(rng, pool).format(v=v))
    opening = _pick(rng, OPENINGS) if rng.random() < 0.75 else _pick(rng, OPENINGS_VAGUE)
    flavour = [_pick(rng, FLAVOUR) for _ in range(int(rng.integers(1, 3)))]
    return " ".join(voice.fill(x) for x in [opening, *sentences, *dict.fromkeys(flavour)])


def _write_tags(rng: np.random.Generator, voice: _Voice,
                values: list[tuple[str, str]]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Free tags and structured attributes; each given attribute lands in one of the two."""
    tags: list[str] = []
    attributes: dict[str, str] = {}
    if rng.random() < 0.85:
        tags.append(voice.category)
    for k, v in values:
        if rng.random() < 0.5:
            attributes[k] = v
        else:
            tags.append(v if rng.random() < 0.7 else f"{v} {voice.category}")
    if rng.random() < 0.25:
        attributes["style"] = voice.style
    elif rng.random() < 0.6:
        tags.append(voice.style)
    if rng.random() < 0.5:
        tags.append(f"gift for {voice.recipient}")
    if rng.random() < 0.6 or not (tags or attributes):
        tags.append("handmade")
    return tuple(tags), attributes


def sample_listing(index: int, seed: int) -> SampleListing:
    """Listing `index` of the catalog for `seed`; its own generator, so it does not depend on n.

    First where each true attribute will be shown (title, description, tags, photos), then the
    text that shows it.
    """
    rng = np.random.default_rng([seed, 0, index])
    category = _pick(rng, list(CATEGORIES))
    spec = CATEGORIES[category]
    truth = {"color": _pick(rng, list(COLORS)), "pattern": _pick(rng, spec.patterns),
             "material": _pick(rng, spec.materials)}
    voice = _Voice(category, _pick(rng, STYLES), _pick(rng, RECIPIENTS))
    vague = rng.random() < P_VAGUE_TITLE
    primary = "studio" if rng.random() < P_STUDIO_PRIMARY else "packaging"
    closeup = bool(rng.random() < P_CLOSEUP[primary])
    has_desc, has_tags = rng.random() < P_DESCRIPTION, rng.random() < P_TAGS
    in_title = {k: not vague and rng.random() < P_IN_TITLE[k] for k in ATTRIBUTE_KEYS}
    in_desc = {k: has_desc and rng.random() < P_IN_DESCRIPTION for k in ATTRIBUTE_KEYS}
    in_tags = {k: has_tags and rng.random() < P_IN_TAGS for k in ATTRIBUTE_KEYS}
    for k in ATTRIBUTE_KEYS:  # every attribute must be visible in at least one view
        in_photo = k in VISUAL_KEYS and (primary == "studio" or closeup)
        if in_photo or in_title[k] or in_desc[k] or in_tags[k]:
            continue
        if has_desc:
            in_desc[k] = True
        elif has_tags:
            in_tags[k] = True
        elif k in VISUAL_KEYS:
            closeup = True
        elif not vague:
            in_title[k] = True
        else:
            has_tags = in_tags[k] = True

    def placed(where: dict[str, bool]) -> list[tuple[str, str]]:
        return [(k, truth[k]) for k in ATTRIBUTE_KEYS if where[k]]

    title = _write_title(rng, voice, None if vague else placed(in_title))
    description = _write_description(rng, voice, placed(in_desc)) if has_desc else ""
    tags, attributes = _write_tags(rng, voice, placed(in_tags)) if has_tags else ((), {})
    lo, hi = spec.price
    return SampleListing(
        index=index, id=f"L{index:06d}", category=category, style=voice.style, recipient=voice.recipient,
        **truth, title=title, description=description, tags=tags, attributes=attributes,
        price=round(float(rng.uniform(lo, hi)), 2), primary=primary, closeup=closeup,
    )


def sample_listings(n_items: int, seed: int = 0) -> list[SampleListing]:
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items: must be an integer >= 1, got {n_items!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    return [sample_listing(i, seed) for i in range(n_items)]


def paint_listing(listing: SampleListing, seed: int, out_dir: Path) -> None:
    """Write the listing's photos (primary, then the close-up if it has one) under out_dir."""
    rng = np.random.default_rng([seed, 3, listing.index])
    rgb = COLORS[listing.color]
    if listing.primary == "studio":
        first = paint_studio(listing.category, rgb, listing.pattern, rng)
    else:
        first = paint_packaging(listing.category, rng)
    photos = [first] + ([paint_closeup(listing.category, rgb, listing.pattern, rng)] if listing.closeup else [])
    for rel, img in zip(listing.images, photos, strict=True):
        save_jpeg(img, out_dir / rel)


# --------------------------------------------------------------------------- views


def mentions(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive: "red" is in "Red Scarf", not in "Bored"."""
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase.lower())}(?![a-z0-9])", text.lower()) is not None


def mentions_category(text: str, category: str) -> bool:
    return mentions(text, category) or mentions(text, CATEGORIES[category].plural)


def tags_view_text(listing: SampleListing) -> str:
    """The tags view as this module reads it: tags and structured attribute values."""
    return " | ".join([*listing.tags, *listing.attributes.values()])


def attribute_views(listing: SampleListing, key: str) -> set[int]:
    """The views (model.config indices) in which the listing's true `key` value can be seen."""
    value = listing.truth()[key]
    views = {v for v, text in ((TITLE, listing.title), (DESCRIPTION, listing.description),
                               (TAGS, tags_view_text(listing))) if text and mentions(text, value)}
    if key in VISUAL_KEYS:
        if listing.primary == "studio":
            views.add(IMAGE)
        if listing.closeup:
            views.add(IMAGE_OTHER)
    return views


def view_count(listing: SampleListing) -> int:
    """Title + primary photo + description + tags view (tags or attributes) + other photos."""
    return 2 + bool(listing.description) + bool(listing.tags or listing.attributes) + listing.closeup


VOCABULARY: tuple[str, ...] = tuple(sorted(
    {*CATEGORIES, *(s.plural for s in CATEGORIES.values()), *COLORS, *PATTERNS_ALL,
     *(m for s in CATEGORIES.values() for m in s.materials)}))


def is_vague(title: str) -> bool:
    """No category and no attribute word: the title alone cannot match any query's needs."""
    return not any(mentions(title, w) for w in VOCABULARY)


# --------------------------------------------------------------------------- the shopper


@dataclass(frozen=True)
class Query:
    text: str  # normalised
    category: str
    asked: tuple[tuple[str, str], ...]  # (attribute, value) in ATTRIBUTE_KEYS order


def normalize_query(text: str) -> str:
    return " ".join(text.lower().split())


def is_test_query(text: str) -> bool:
    """The split: a stable hash of the normalised string, so a string is train or test everywhere."""
    h = int.from_bytes(hashlib.sha1(normalize_query(text).encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < TEST_FRACTION


def build_query(rng: np.random.Generator, listing: SampleListing) -> Query:
    """A shopper looking for this listing types its category and some of its true attributes."""
    spec, truth = CATEGORIES[listing.category], listing.truth()
    k = int(rng.choice(len(ASK_COUNT_P), p=ASK_COUNT_P))
    keys = set(rng.choice(ATTRIBUTE_KEYS, size=k, replace=False, p=ASK_KEY_P).tolist()) if k else set()
    asked = tuple((key, truth[key]) for key in ATTRIBUTE_KEYS if key in keys)
    noun = spec.plural if rng.random() < 0.3 else listing.category
    values = _word_order(list(asked))
    roll = rng.random()
    if "color" in keys and roll < 0.25:  # "polka dot socks in blue"
        text = " ".join([*_word_order([a for a in asked if a[0] != "color"]), noun, "in", truth["color"]])
    elif asked and roll > 0.9:  # "scarf red wool"
        text = " ".join([noun, *values])
    else:  # "red striped wool scarf"
        text = " ".join([*values, noun])
    if rng.random() < 0.1:
        text = "handmade " + text
    if rng.random() < 0.15:
        text += _pick(rng, (" for her", " for him", " for mom", " gift", " for kids"))
    return Query(normalize_query(text), listing.category, asked)


def grade(query: Query, listing: SampleListing) -> int | None:
    """3 = all asked attributes match, 2 = some, 1 = none; None for another category (not judged)."""
    if listing.category != query.category:
        return None
    hits = sum(listing.truth()[k] == v for k, v in query.asked)
    return 3 if hits == len(query.asked) else (2 if hits else 1)


def title_answerable(query: Query, title: str) -> bool:
    """Every word the query needs (its category and asked values) is in the title."""
    return mentions_category(title, query.category) and all(mentions(title, v) for _, v in query.asked)


def simulate_interactions(listings: Sequence[SampleListing], seed: int) -> list[dict[str, Any]]:
    """~4 clicks per listing from shoppers whose queries (train strings only) describe it."""
    rng = np.random.default_rng([seed, 1])
    rows = []
    for listing in listings:
        for _ in range(1 + int(rng.poisson(INTERACTIONS_PER_ITEM - 1))):
            for _try in range(20):  # redraw test strings: they must stay unseen
                q = build_query(rng, listing)
                if not is_test_query(q.text):
                    weight = 2.0 if rng.random() < P_PURCHASE else 1.0
                    rows.append({"query": q.text, "item_id": listing.id, "weight": weight})
                    break
    return rows


def n_test_queries(n_items: int) -> int:
    """A fifth of n_items, at least 12, at most MAX_TEST_QUERIES and MAX_JUDGMENT_ROWS / per-category size."""
    per_category = max(1, n_items // len(CATEGORIES))
    return max(1, min(MAX_TEST_QUERIES, max(12, n_items // 5), MAX_JUDGMENT_ROWS // per_category))


def sample_test_queries(listings: Sequence[SampleListing], seed: int, n_queries: int) -> list[Query]:
    """Distinct test-split queries from shoppers looking for random listings."""
    rng = np.random.default_rng([seed, 2])
    seen: dict[str, Query] = {}
    for _ in range(200 * n_queries):
        if len(seen) >= n_queries:
            break
        q = build_query(rng, listings[int(rng.integers(len(listings)))])
        if is_test_query(q.text) and q.text not in seen:
            seen[q.text] = q
    return list(seen.values())


def judge(queries: Iterable[Query], listings: Sequence[SampleListing]) -> list[dict[str, Any]]:
    """Grade every listing of each query's category (other categories are not judged)."""
    by_category: dict[str, list[SampleListing]] = {}
    for listing in listings:
        by_category.setdefault(listing.category, []).append(listing)
    return [{"query": q.text, "item_id": item.id, "relevance": grade(q, item),
             "title_answerable": title_answerable(q, item.title)}
            for q in queries for item in by_category.get(q.category, [])]


# --------------------------------------------------------------------------- summary and writers


@dataclass(frozen=True)
class SampleSummary:
    """What `generate` measured on the files it wrote (also written as summary.json)."""

    n_items: int
    seed: int
    views_histogram: dict[str, int]  # number of views (2..5) -> listings
    vague_title_fraction: float  # titles with no category or attribute word
    studio_primary_fraction: float  # primary photos that show colour and pattern
    # Over (test query's asked attribute, listing of its category having that value) pairs: the
    # value is neither in the title nor shown by the primary photo.
    aux_only_asked_fraction: float
    aux_only_asked_by_attribute: dict[str, float]
    n_interactions: int
    n_train_queries: int
    n_test_queries: int
    n_judgments: int
    title_answerable_relevant_fraction: float  # among judgments with relevance 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fraction(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def summarize(listings: Sequence[SampleListing], seed: int, interactions: Sequence[dict[str, Any]],
              queries: Sequence[Query], judgments: Sequence[dict[str, Any]]) -> SampleSummary:
    hist = Counter(view_count(x) for x in listings)
    by_category: dict[str, list[SampleListing]] = {}
    for listing in listings:
        by_category.setdefault(listing.category, []).append(listing)
    aux: dict[str, list[bool]] = {k: [] for k in ATTRIBUTE_KEYS}
    for q in queries:
        for key, value in q.asked:
            for item in by_category.get(q.category, []):
                if item.truth()[key] == value:
                    aux[key].append(not attribute_views(item, key) & {TITLE, IMAGE})
    return SampleSummary(
        n_items=len(listings), seed=seed,
        views_histogram={str(v): hist.get(v, 0) for v in range(2, 6)},
        vague_title_fraction=_fraction([is_vague(x.title) for x in listings]),
        studio_primary_fraction=_fraction([x.primary == "studio" for x in listings]),
        aux_only_asked_fraction=_fraction([f for flags in aux.values() for f in flags]),
        aux_only_asked_by_attribute={k: _fraction(v) for k, v in aux.items()},
        n_interactions=len(interactions), n_train_queries=len({r["query"] for r in interactions}),
        n_test_queries=len(queries), n_judgments=len(judgments),
        title_answerable_relevant_fraction=_fraction(
            [j["title_answerable"] for j in judgments if j["relevance"] == 3]),
    )


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out_dir: str | Path, n_items: int = 2000, seed: int = 0) -> SampleSummary:
    """Write the sample catalog for (n_items, seed) into out_dir; same inputs, same bytes.

    Files are overwritten in place; nothing else in out_dir is touched.
    """
    out = Path(out_dir)
    listings = sample_listings(n_items, seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for listing in listings:
        paint_listing(listing, seed, out)
    interactions = simulate_interactions(listings, seed)
    queries = sample_test_queries(listings, seed, n_test_queries(n_items))
    judgments = judge(queries, listings)
    _write_jsonl(out / "catalog.jsonl", (x.row() for x in listings))
    _write_jsonl(out / "interactions.jsonl", interactions)
    _write_jsonl(out / "judgments.jsonl", judgments)
    summary = summarize(listings, seed, interactions, queries, judgments)
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    return summary
