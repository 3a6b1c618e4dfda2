"""The ikea tasks, for a trained version and for the untrained baselines, on the same queries.

Tasks (all over the full catalog of 2,187 listings):
- cross-view, leave-one-view-out (model/eval/crossview.py): each view of a listing is a query; the
  targets are every listing fused WITHOUT that view type; R@1 / R@10 of the listing itself. Here on
  ALL listings having the view (the build report samples 2,000). Baselines on the text views:
  title -> listing through its other text views (description + tags text), description -> listing
  through title + tags text. BM25 over the concatenated texts; frozen MiniLM: the query's unit
  vector against normalize(sum of the unit vectors of the target's texts).
- room photo -> the listings shown in it (rooms.jsonl; Recall@10/@50, nDCG@10): the photo through
  the model's `image_other` head (and, for comparison, its primary-image head). Room photos ARE
  auxiliary photos of the listings they show, so "as indexed" lets a listing match the very photo
  used as the query; "photo left out" removes that photo from every listing's fused vector first
  (the honest number). Baseline: frozen EfficientNet-Lite0 features, room photo vs each listing's
  catalogue photo, cosine.
- category -> listings of that category (categories with >= 2 listings): the query tower on the
  category text vs the indexed vectors; BM25 and frozen MiniLM over the listing's texts
  (title + description + tags text, which holds the category: the lexical task is easy on purpose).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.realdata.scoring import rank_recalls, score_sets, self_ranks
from model.config import VIEW_TYPES, ImageConfig, TextConfig
from model.data.catalog import Listing, load_catalog
from model.data.views import ViewTable, build_view_table, tags_text

ROOM_KS = (10, 50)
CATEGORY_KS = (10, 100)


@dataclass
class IkeaData:
    listings: list[Listing]
    views: ViewTable
    features: np.ndarray  # (n_images, 1280) frozen photo features (views.image_paths order)
    ok: np.ndarray  # (n_images,) bool
    rooms: list[dict[str, Any]]  # {"image": abs path, "room_type", "item_rows": [listing rows]}
    room_features: np.ndarray  # (R, 1280)

    @property
    def ids(self) -> list[str]:
        return [x.id for x in self.listings]

    def categories(self) -> dict[str, list[int]]:
        """Category -> listing rows, for categories with >= 2 listings."""
        out: dict[str, list[int]] = defaultdict(list)
        for i, x in enumerate(self.listings):
            if x.category:
                out[x.category].append(i)
        return {c: rows for c, rows in sorted(out.items()) if len(rows) >= 2}

    def image_row(self, path: str) -> int:
        try:
            return self.views.image_paths.index(path)
        except ValueError:
            return -1


def load_ikea(folder: Path, image_cache: Path) -> IkeaData:
    from model.encoders.image_features import ImageFeaturizer

    listings = load_catalog(folder / "catalog.jsonl").listings
    views = build_view_table(listings)
    index = {x.id: i for i, x in enumerate(listings)}
    rooms = []
    for line in (folder / "rooms.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows = sorted({index[i] for i in r["item_ids"] if i in index})
            if rows:
                rooms.append({"image": str((folder / r["image"]).resolve()), "room_type": r.get("room_type"),
                              "item_rows": rows})
    feat = ImageFeaturizer(ImageConfig(), device="cpu", cache_dir=image_cache)
    res = feat.featurize(views.image_paths)
    room_res = feat.featurize([r["image"] for r in rooms])
    keep = [i for i, ok in enumerate(room_res.ok) if ok]
    return IkeaData(listings, views, res.features, res.ok, [rooms[i] for i in keep], room_res.features[keep])


# ---------------------------------------------------------------------------------- texts


def texts_of(data: IkeaData) -> dict[str, list[str]]:
    """Per listing: title, description ('' when none), tags text (category | attributes)."""
    return {"title": [x.title for x in data.listings], "description": [x.description for x in data.listings],
            "tags": [tags_text(x) for x in data.listings]}


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def text_crossview_baselines(data: IkeaData, minilm: Any) -> dict[str, Any]:
    """BM25 and frozen MiniLM on title -> listing and description -> listing (leave-one-view-out)."""
    from bench.realdata.lexical import Bm25

    t = texts_of(data)
    budget = {"title": TextConfig.max_title_tokens, "description": TextConfig.max_text_tokens,
              "tags": TextConfig.max_text_tokens}
    vec = {k: unit_rows(minilm.encode(v, budget[k], f"ikea-{k}")) * np.array([[bool(s)] for s in v])
           for k, v in t.items()}  # (n, 384), zero rows where the listing lacks the text
    out: dict[str, Any] = {"bm25": {}, "minilm": {}}
    for view, others in (("title", ("description", "tags")), ("description", ("title", "tags"))):
        q_rows = np.array([i for i, s in enumerate(t[view]) if s])
        docs = [" ".join(t[o][i] for o in others) for i in range(len(data.listings))]
        bm25 = Bm25(docs)
        scores = np.stack([bm25.scores(t[view][i]) for i in q_rows])  # (q, n)
        out["bm25"][view] = rank_recalls(self_ranks(scores, q_rows))
        target = unit_rows(sum(vec[o] for o in others))  # (n, 384)
        out["minilm"][view] = rank_recalls(self_ranks(vec[view][q_rows] @ target.T, q_rows))
    return out


def rank_sets(scores: np.ndarray, relevant_rows: list[list[int]], ids: list[str], ks: tuple[int, ...]) -> dict[str, Any]:
    """scores (q, n) -> set-retrieval metrics (+ CIs), ties broken by row."""
    k = max(ks)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (q, k)
    ranked = [[ids[r] for r in row] for row in order]
    relevant = [{ids[r]: 1.0 for r in rows} for rows in relevant_rows]
    return score_sets(ranked, relevant, ks)


def category_baselines(data: IkeaData, minilm: Any) -> dict[str, Any]:
    from bench.realdata.lexical import Bm25

    cats = data.categories()
    t = texts_of(data)
    docs = [" ".join(s for s in (t["title"][i], t["description"][i], t["tags"][i]) if s) for i in range(len(t["title"]))]
    bm25 = Bm25(docs)
    names = list(cats)
    rel = [cats[c] for c in names]
    out = {"bm25": rank_sets(np.stack([bm25.scores(c) for c in names]), rel, data.ids, CATEGORY_KS)}
    vec = {k: unit_rows(minilm.encode(v, TextConfig.max_title_tokens if k == "title" else TextConfig.max_text_tokens,
                                  f"ikea-{k}")) * np.array([[bool(s)] for s in v]) for k, v in t.items()}
    target = unit_rows(vec["title"] + vec["description"] + vec["tags"])  # (n, 384)
    q = unit_rows(minilm.encode(names, TextConfig.max_query_tokens, "ikea-categories"))  # (c, 384)
    out["minilm"] = rank_sets(q @ target.T, rel, data.ids, CATEGORY_KS)
    out["n_categories"] = len(names)
    out["n_listings"] = sum(len(r) for r in rel)
    return out


def room_baseline(data: IkeaData) -> dict[str, Any]:
    """Frozen EfficientNet-Lite0: room photo feature vs each listing's catalogue-photo feature."""
    prim = data.views.primary_image
    has = (prim >= 0) & data.ok[np.maximum(prim, 0)]
    target = np.zeros((len(prim), data.features.shape[1]), np.float32)
    target[has] = data.features[prim[has]]
    scores = unit_rows(data.room_features) @ unit_rows(target).T  # (R, n)
    scores[:, ~has] = -np.inf
    return rank_sets(scores, [r["item_rows"] for r in data.rooms], data.ids, ROOM_KS)


# ---------------------------------------------------------------------------------- a trained version


@torch.inference_mode()
def crossview_ranks(mv: Any) -> dict[str, np.ndarray]:
    """Per view type: the rank of each listing's own entry when its first instance of that view is
    the query and every listing is fused without that view type (model/eval/crossview.py's protocol,
    kept per query here for the confidence intervals)."""
    st = torch.tensor(mv.slot_types)
    pres = torch.from_numpy(mv.present)  # (n, S)
    out = {}
    for t, name in enumerate(VIEW_TYPES):
        cols = [s for s, ty in enumerate(mv.slot_types) if ty == t]
        has = np.flatnonzero(mv.present[:, cols[0]]) if cols else np.zeros(0, int)
        if len(has) < 2:
            continue
        targets = mv.model.fuse(mv.z, pres & (st != t).unsqueeze(0), st, index_only=True)  # (n, d)
        out[name] = self_ranks((mv.z[has, cols[0]] @ targets.T).numpy(), has)  # (q,)
    return out


def model_tasks(folder: Path, data: IkeaData) -> dict[str, Any]:
    from bench.realdata.modeleval import model_views
    from model.eval.crossview import leave_one_view_out
    from model.runtime.query_encoder import QueryEncoder

    mv = model_views(folder, data.views, data.features, data.ok)
    out: dict[str, Any] = {"cross_view": {name: rank_recalls(r) for name, r in crossview_ranks(mv).items()}}
    # The same numbers as the build report's function (model/eval/crossview.py) on all queries: a check.
    check = leave_one_view_out(mv.model, mv.z, mv.present, mv.slot_types, max_queries=10**9)
    for name, res in check.items():
        for key in ("recall@1", "recall@10"):
            if abs(res[key] - out["cross_view"][name][key]) > 1e-6:  # float32 means there
                raise AssertionError(f"cross-view {name} {key}: {out['cross_view'][name][key]} != {res[key]}")
    rel = [r["item_rows"] for r in data.rooms]
    rooms: dict[str, Any] = {}
    for head in ("image_other", "image"):
        q = mv.photo_queries(data.room_features, head)  # (R, d)
        rooms[f"{head}/as_indexed"] = rank_sets(q @ mv.fused.T, rel, data.ids, ROOM_KS)
        rows = [data.image_row(r["image"]) for r in data.rooms]
        held = np.stack([q[j] @ mv.without_image(rows[j]).T if rows[j] >= 0 else q[j] @ mv.fused.T
                         for j in range(len(rows))])  # (R, n)
        rooms[f"{head}/photo_left_out"] = rank_sets(held, rel, data.ids, ROOM_KS)
    out["rooms"] = rooms
    cats = data.categories()
    encoder = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json", "cpu")
    q = encoder.encode(list(cats))  # (c, d)
    out["category"] = rank_sets(q @ mv.fused.T, list(cats.values()), data.ids, CATEGORY_KS)
    with torch.inference_mode():
        out["fusion_weights"] = dict(zip(("title", "image", "description", "tags", "image_other"),
                                         torch.softmax(mv.model.fusion.logits + mv.model.fusion.prior, 0).tolist(),
                                         strict=True))
    return out
