"""The sample catalog keeps the properties docs/SAMPLE_CATALOG.md fixes, byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.config import IMAGE, IMAGE_OTHER, TITLE
from model.data.catalog import load_catalog
from model.sample import catalog as S

N, SEED = 240, 0


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, S.SampleSummary]:
    out = tmp_path_factory.mktemp("sample")
    return out, S.generate(out, n_items=N, seed=SEED)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- fixed properties


def test_fixed_properties_hold(sample: tuple[Path, S.SampleSummary]) -> None:
    out, summary = sample
    assert summary.n_items == N
    assert summary.vague_title_fraction >= 0.3
    assert summary.aux_only_asked_fraction >= 0.3
    assert sum(summary.views_histogram.values()) == N
    assert set(summary.views_histogram) == {"2", "3", "4", "5"}
    assert json.loads((out / "summary.json").read_text()) == summary.to_dict()


def test_views_between_two_and_five_and_every_attribute_visible() -> None:
    for listing in S.sample_listings(N, SEED):
        assert 2 <= S.view_count(listing) <= 5
        assert listing.title
        for key in S.ATTRIBUTE_KEYS:
            assert S.attribute_views(listing, key), (listing.id, key, listing.truth())


def test_vague_titles_count_what_the_text_says() -> None:
    listings = S.sample_listings(N, SEED)
    rows = {x.id: x.row() for x in listings}
    vague = [x for x in listings if S.is_vague(x.title)]
    assert len(vague) >= 0.3 * N
    for x in vague:  # a vague title carries no category word and no attribute value
        assert not S.mentions_category(rows[x.id]["title"], x.category)
        assert not (S.attribute_views(x, "color") | S.attribute_views(x, "pattern")) & {TITLE}


def test_flavour_text_never_leaks_vocabulary() -> None:
    """Filler text must not name a category or an attribute, or the measured properties lie."""
    fillers = [*S.VAGUE_TITLES, *S.OPENINGS_VAGUE, *S.FLAVOUR, "gift for {recipient}", "handmade"]
    for template in fillers:
        for style in S.STYLES:
            for recipient in S.RECIPIENTS:
                text = S._Voice("", style, recipient).fill(template)
                assert S.is_vague(text), text


def test_aux_only_fraction_matches_a_direct_count(sample: tuple[Path, S.SampleSummary]) -> None:
    """Recount from the files: a value is primary-visible if the title says it, or the primary
    photo is a studio shot of a colour/pattern."""
    out, summary = sample
    listings = {x.id: x for x in S.sample_listings(N, SEED)}
    rows = {r["id"]: r for r in _jsonl(out / "catalog.jsonl")}
    flags = []
    for query in {j["query"] for j in _jsonl(out / "judgments.jsonl")}:
        category, asked = _parse(query)
        for item in listings.values():
            if item.category != category:
                continue
            for value in asked:
                key = _key_of(value)
                if item.truth()[key] != value:
                    continue
                in_title = re.search(rf"\b{re.escape(value)}\b", rows[item.id]["title"].lower()) is not None
                in_photo = key in S.VISUAL_KEYS and item.primary == "studio"
                flags.append(not (in_title or in_photo))
    assert summary.aux_only_asked_fraction == pytest.approx(sum(flags) / len(flags), abs=1e-4)


# --------------------------------------------------------------------------- queries and labels


def _key_of(value: str) -> str:
    for key, pool in (("color", S.COLORS), ("pattern", S.PATTERNS_ALL)):
        if value in pool:
            return key
    return "material"


def _parse(query: str) -> tuple[str, list[str]]:
    """Naive reference parser: the category noun and the attribute values a query names."""
    words = f" {query} "
    category = next(c for c, spec in S.CATEGORIES.items() if f" {c} " in words or f" {spec.plural} " in words)
    values = [v for v in S.VOCABULARY if v not in S.CATEGORIES and f" {v} " in words
              and v not in {s.plural for s in S.CATEGORIES.values()}]
    return category, values


def test_title_answerable_hand_checked() -> None:
    q = S.Query("red striped scarves", "scarf", (("color", "red"), ("pattern", "striped")))
    assert S.title_answerable(q, "Red Striped Wool Scarf")
    assert S.title_answerable(q, "Handmade Red Striped Scarves | Gift For Her")
    assert not S.title_answerable(q, "Striped Scarf - Small Batch")  # colour missing
    assert not S.title_answerable(q, "Red Striped Cushion")  # category missing
    assert not S.title_answerable(q, "Bored Striped Scarf")  # "red" only inside a word
    assert not S.title_answerable(q, "Handmade gift for her")  # vague
    assert S.title_answerable(S.Query("t-shirts", "t-shirt", ()), "Plain White T-Shirt")


def test_train_and_test_query_strings_are_disjoint(sample: tuple[Path, S.SampleSummary]) -> None:
    out, summary = sample
    train = {r["query"] for r in _jsonl(out / "interactions.jsonl")}
    test = {r["query"] for r in _jsonl(out / "judgments.jsonl")}
    assert train and test and not train & test
    assert not any(S.is_test_query(q) for q in train)
    assert all(S.is_test_query(q) for q in test)
    assert len(test) == summary.n_test_queries
    assert S.is_test_query("Red  Scarf") == S.is_test_query("red scarf")  # normalised first


def test_interactions_click_listings_that_match(sample: tuple[Path, S.SampleSummary]) -> None:
    out, summary = sample
    listings = {x.id: x for x in S.sample_listings(N, SEED)}
    rows = _jsonl(out / "interactions.jsonl")
    assert len(rows) == summary.n_interactions
    assert 3.0 <= len(rows) / N <= 5.0
    for r in rows:
        item = listings[r["item_id"]]
        category, values = _parse(r["query"])
        assert category == item.category
        assert set(values) <= set(item.truth().values())
        assert r["weight"] in (1.0, 2.0)


def test_judgments_grade_every_listing_of_the_category_by_the_rule(sample: tuple[Path, S.SampleSummary]) -> None:
    out, summary = sample
    listings = {x.id: x for x in S.sample_listings(N, SEED)}
    judged: dict[str, set[str]] = {}
    rows = _jsonl(out / "judgments.jsonl")
    assert len(rows) == summary.n_judgments
    for j in rows:
        item = listings[j["item_id"]]  # KeyError = a judgment on an unknown id
        category, values = _parse(j["query"])
        assert item.category == category
        hits = sum(v in item.truth().values() for v in values)
        assert j["relevance"] == (3 if hits == len(values) else 2 if hits else 1)
        judged.setdefault(j["query"], set()).add(item.id)
        title = item.title.lower()
        words_in_title = all(re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", title)
                             for w in values) and S.mentions_category(title, category)
        assert j["title_answerable"] == words_in_title
    for query, ids in judged.items():
        category, _ = _parse(query)
        assert ids == {i for i, x in listings.items() if x.category == category}
    # the query was built from some listing, so each has at least one fully relevant listing
    assert {j["query"] for j in rows if j["relevance"] == 3} == set(judged)


# --------------------------------------------------------------------------- files


def test_catalog_rows_follow_the_contract(sample: tuple[Path, S.SampleSummary]) -> None:
    out, _ = sample
    rows = _jsonl(out / "catalog.jsonl")
    assert len(rows) == N and len({r["id"] for r in rows}) == N
    allowed = {"id", "title", "description", "tags", "attributes", "category", "price", "images"}
    for r in rows:
        assert set(r) <= allowed and r["title"].strip()
        assert r["category"] in S.CATEGORIES
        lo, hi = S.CATEGORIES[r["category"]].price
        assert lo <= r["price"] <= hi and round(r["price"], 2) == r["price"]
        assert 1 <= len(r["images"]) <= 2
        assert all(v for v in r.get("attributes", {}).values())
    catalog = load_catalog(out / "catalog.jsonl")  # the project's own loader accepts every row
    assert len(catalog) == N and not catalog.report.rejected and not catalog.report.dropped_images


def test_images_exist_open_and_carry_the_attributes(sample: tuple[Path, S.SampleSummary]) -> None:
    out, _ = sample
    listings = S.sample_listings(N, SEED)
    for x in listings:
        for rel in x.images:
            with Image.open(out / rel) as im:
                assert im.format == "JPEG" and im.size == (128, 128) and im.mode == "RGB"
    for x in listings:  # a plain close-up is the listing's colour; a packaging shot never is
        if x.pattern == "plain" and x.closeup:
            centre = np.asarray(Image.open(out / x.images[1]), dtype=np.float32)[44:84, 44:84]
            assert np.abs(np.median(centre.reshape(-1, 3), axis=0) - S.COLORS[x.color]).max() < 40, x.id
        if x.primary == "packaging" and x.color not in ("brown", "black", "white"):
            img = np.asarray(Image.open(out / x.images[0]), dtype=np.float32)
            near = np.abs(img - np.asarray(S.COLORS[x.color], dtype=np.float32)).max(axis=-1) < 40
            assert near.mean() < 0.01, x.id


def test_views_as_measured_cover_image_only_attributes() -> None:
    """Some asked colours/patterns are visible only in the close-up photo: images carry information."""
    only_closeup = [
        (x.id, k) for x in S.sample_listings(N, SEED) for k in S.VISUAL_KEYS
        if S.attribute_views(x, k) == {IMAGE_OTHER}
    ]
    assert only_closeup
    assert any(IMAGE in S.attribute_views(x, "color") for x in S.sample_listings(20, SEED))


def test_same_inputs_give_identical_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    S.generate(a, n_items=120, seed=7)
    S.generate(b, n_items=120, seed=7)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = tmp_path / "c"
    S.generate(c, n_items=120, seed=8)
    assert (a / "catalog.jsonl").read_bytes() != (c / "catalog.jsonl").read_bytes()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_items"):
        S.generate(tmp_path, n_items=0)
    with pytest.raises(ValueError, match="seed"):
        S.generate(tmp_path, n_items=10, seed=-1)
    assert not (tmp_path / "catalog.jsonl").exists()


def test_a_larger_catalog_extends_a_smaller_one() -> None:
    small, large = S.sample_listings(30, SEED), S.sample_listings(60, SEED)
    assert [x.row() for x in small] == [x.row() for x in large[:30]]
