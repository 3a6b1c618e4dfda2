"""The search engine: a loaded artifact version and a batch search over it.

`LoadedVersion` is everything one version needs to answer (query encoder, placed index, lexical
index when the version has one, listing metadata, filter columns), loaded and checked as a unit.
`Engine` holds the served version behind a single reference: a reload builds and warms the new one
beside the old and swaps the reference, so a batch that started on the old version finishes on it
and every response names its version.

Modes (index/rank_fusion.py): `dense` (query tower + FAISS), `lexical` (BM25, index/lexical.py) and
`hybrid` (both lists fused). A version built before the lexical index existed answers `lexical`
and `hybrid` requests densely, and says so (`BatchResult.modes`, /readyz).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from index.build import load_index
from index.filters import Filter, FilterColumns
from index.lexical import META as LEXICAL_META
from index.lexical import LexicalIndex, top_k
from index.placed_recall import recall_report
from index.rank_fusion import FusionSpec, hybrid_one
from index.search import Searcher, exact_scores, make_searcher
from index.store import denylist
from index.store.artifacts import ArtifactError, ArtifactStore, GateRefused, admissible, gate_failures
from index.store.denylist import DenyRows
from index.store.listings import ListingStore
from model.devices import resolve_device
from model.runtime.image_query import PhotoEncoder, PhotoUnavailable, probe_png
from model.runtime.query_encoder import EncoderOptions, QueryEncoder
from service.serving.errors import NotReady
from service.serving.settings import Settings

log = logging.getLogger("service.serving.engine")


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int = 10
    offset: int = 0
    filter: Filter = field(default_factory=Filter)
    mode: str | None = None  # dense | lexical | hybrid; None: the settings' search_mode
    fusion: FusionSpec | None = None  # None: the settings' fusion
    # More like this: the listing's stored fused vector (vectors.npy) replaces the query's; the query
    # text, if any, is then only the lexical side of a hybrid search. The listing itself is never a hit.
    like_id: str | None = None
    # Search by photo (service/api/photo.py): the photo's (d,) unit vector, encoded before the batch by the
    # photo encoder of `vector_version`, replaces the query's as like_id's does (the text, if any, is the
    # lexical side). Not part of equality or hashing; such requests bypass the result cache.
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    vector_version: str | None = None

    def options_key(self) -> tuple:
        """The search options as a hashable (part of the result cache key)."""
        key = (self.mode, self.fusion.key() if self.fusion is not None else None)
        return key if self.like_id is None else (*key, ("like", self.like_id))


@dataclass
class Hit:
    id: str
    score: float
    title: str
    image: str | None


@dataclass(frozen=True)
class Answer:
    """One request's part of a BatchResult: what the micro-batcher hands back to the route (and the
    result cache keeps)."""
    hits: list[Hit]
    model_version: str
    index_version: str
    mode: str | None = None  # the mode that answered (dense on a fallback)


@dataclass
class BatchResult:
    hits: list[list[Hit]]
    model_version: str
    index_version: str
    stages: dict[str, float]
    modes: list[str] = field(default_factory=list)  # the mode each request was answered in

    def answers(self) -> list[Answer]:
        """Per request, in order."""
        modes = self.modes or [None] * len(self.hits)
        return [Answer(hits, self.model_version, self.index_version, mode)
                for hits, mode in zip(self.hits, modes, strict=True)]


def fusion_spec(settings: Settings) -> FusionSpec:
    """The default fusion of /search from the settings."""
    return FusionSpec(settings.fusion, settings.rrf_k, settings.dense_weight, settings.lexical_weight,
                      settings.fusion_candidates, settings.identifier_boost)


def encoder_options(settings: Settings) -> EncoderOptions:
    """The query encoder's runtime from the settings (backend, CUDA graphs, batch buckets)."""
    return EncoderOptions(backend=settings.encoder_backend, cuda_graphs=settings.cuda_graphs,
                          max_batch=settings.max_batch, threads=settings.torch_threads)


@dataclass
class LoadedVersion:
    version: str
    manifest: dict[str, Any]
    encoder: QueryEncoder
    searcher: Searcher
    store: ListingStore
    filters: FilterColumns
    lexical: LexicalIndex | None = None  # None: a version built without one (hybrid -> dense)
    ann_recall: dict[str, Any] = field(default_factory=dict)  # tuned vs as placed (index/placed_recall.py)
    # Per-view vectors (n, S, d) and slot weights (n, S), memory-mapped, read only by explain
    # (service/api/explain.py); None for a version built without them.
    view_vectors: np.ndarray | None = None
    slot_weights: np.ndarray | None = None
    # Search by photo: the backbone + this version's photo heads, on the query encoder's device; None
    # with the reason in photo_error (built without photos, image_search off, no backbone weights).
    photo: PhotoEncoder | None = None
    photo_error: str | None = None

    @property
    def model_version(self) -> str:
        return f"{self.manifest.get('objective', 'model')}-{self.manifest['model_digest'][:12]}"

    @property
    def n_items(self) -> int:
        return self.searcher.ntotal


def load_version(settings: Settings, version: str | None = None) -> LoadedVersion:
    """Load, verify and cross-check one version (ArtifactError on any mismatch)."""
    store = ArtifactStore(settings.artifacts)
    version = version or settings.version or store.current_version()
    if version is None:
        raise ArtifactError(f"{store.current_file}: no current version has been published")
    manifest = store.verify(version) if settings.verify_checksums else store.manifest(version)
    if not admissible(manifest):  # DIR/current written by hand, or a pinned version: the gate still holds
        raise GateRefused(version, gate_failures(manifest))
    folder = store.version_dir(version)
    if manifest.get("version") != version:
        raise ArtifactError(f"{folder}: the manifest names version {manifest.get('version')!r}")
    files = manifest.get("files") or {}
    if "model.safetensors" in files and files["model.safetensors"] != manifest.get("model_digest"):
        raise ArtifactError(f"{folder}: model.safetensors is not the model the manifest's model_digest names")
    try:  # a truncated or foreign file is an artifact problem, named with its path
        encoder = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json",
                               str(resolve_device(settings.encoder_device, "encoder_device")), encoder_options(settings))
        index = load_index(str(folder / "index.faiss"))
        vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        listings = ListingStore(folder / "listings.sqlite")
        lexical = load_lexical(folder, manifest)
        view_vectors, slot_weights = load_view_vectors(folder, manifest)
    except (ValueError, OSError, sqlite3.DatabaseError) as e:
        raise ArtifactError(f"{folder}: unreadable artifact ({type(e).__name__}: {e})") from e
    n, dim = manifest["n_items"], manifest["dim"]
    checks = {
        "index vectors": (index.ntotal, n), "index dim": (index.d, dim), "encoder dim": (encoder.dim, dim),
        "vectors.npy rows": (vectors.shape[0], n), "vectors.npy dim": (vectors.shape[1], dim),
        "listings": (listings.count, n),
    }
    if lexical is not None:
        checks["lexical documents"] = (lexical.n_docs, n)
    if view_vectors is not None and slot_weights is not None:
        slots = len((manifest.get("view_vectors") or {}).get("slots") or ())
        checks.update({"view_vectors.npy shape": (view_vectors.shape, (n, slots, dim)),
                       "slot_weights.npy shape": (slot_weights.shape, (n, slots))})
    for what, (got, want) in checks.items():
        if got != want:
            raise ArtifactError(f"{folder}: {what} is {got}, the manifest says {want}")
    searcher = make_searcher(index, vectors, manifest.get("index_params"), settings.index_device,
                             gpu_shard=settings.index_gpu_shard, torch_scratch_mb=settings.torch_search_scratch_mb,
                             torch_mask_cache=settings.torch_mask_cache)
    ann = recall_report(manifest, searcher, vectors, settings.placed_recall_queries, cpu_index=index)
    photo, photo_error = load_photo(settings, folder, manifest, encoder.device)
    return LoadedVersion(version, manifest, encoder, searcher, listings, listings.filter_columns(), lexical, ann,
                         view_vectors, slot_weights, photo, photo_error)


def load_photo(settings: Settings, folder: Path, manifest: dict[str, Any],
               device: torch.device) -> tuple[PhotoEncoder | None, str | None]:
    """The version's photo encoder on the query encoder's device, or (None, why not). Text search
    never depends on it: a version that cannot encode photos still loads and serves /search."""
    if not settings.image_search:
        return None, "photo search is off on this deployment (SERVICE_IMAGE_SEARCH=false)"
    digest = manifest.get("image_backbone_digest")
    if not digest:
        return None, "this version was built without photos"
    try:
        return PhotoEncoder(folder / "model.safetensors", device, batch_size=settings.image_max_batch,
                            max_pixels=settings.max_image_pixels, expect_backbone=digest), None
    except PhotoUnavailable as e:
        log.warning("%s: photo search unavailable: %s", folder, e)
        return None, f"photo search unavailable: {e}"
    except Exception as e:  # noqa: BLE001 - an image-side failure must not take text search down
        log.exception("%s: loading the photo encoder failed", folder)
        return None, f"photo search unavailable: the photo encoder did not load ({type(e).__name__})"


def load_view_vectors(folder: Path, manifest: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The version's per-view vectors and slot weights, memory-mapped; (None, None) for a version
    whose manifest names none (built before explain, or with --view-vectors off)."""
    meta = manifest.get("view_vectors")
    if not meta:
        return None, None
    vectors_file, weights_file = meta["files"]
    return np.load(folder / vectors_file, mmap_mode="r"), np.load(folder / weights_file, mmap_mode="r")


def load_lexical(folder: Path, manifest: dict[str, Any]) -> LexicalIndex | None:
    """The version's lexical index; None for a version built without one (a version whose manifest
    names one that is missing is an error, not a silent fallback)."""
    if not (folder / LEXICAL_META).is_file():
        if manifest.get("lexical"):
            raise ArtifactError(f"{folder / LEXICAL_META}: missing, but the manifest lists a lexical index")
        log.warning("%s: no lexical index (built before hybrid search): lexical and hybrid requests are "
                    "answered by the dense index", folder)
        return None
    return LexicalIndex.load(folder)


def warm(lv: LoadedVersion, n_queries: int) -> None:
    """Run a few batches through every stage so the first real request pays no first-call costs."""
    probes = ["gift", "red ceramic mug for coffee", "handmade wool scarf in blue with stripes"] * 8
    for size in sorted({1, min(n_queries, len(probes)), max(1, n_queries // 2)}):
        q = lv.encoder.encode(probes[:size])
        res = lv.searcher.search(q, 10)
        lv.store.get([int(r) for r in res.rows.ravel() if r >= 0])
    if lv.lexical is not None:
        lv.lexical.search(probes[:3], 10)
    if lv.photo is not None:  # the backbone's first call and each head's
        for head in ("primary", "other"):
            lv.photo.encode([probe_png()], [head])


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._current: LoadedVersion | None = None
        self.fusion = fusion_spec(settings)  # the default fusion; a request may bring its own
        self._reload_lock = threading.Lock()
        self.last_reload_error: str | None = None
        # Deny-list (index/store/denylist.py): (generation, ids) replaced as one reference, the file's stamp,
        # and its rows in the served version, cached per (version, generation).
        self._deny: tuple[int, frozenset[str]] = (0, frozenset())
        self._deny_stamp: tuple[int, int, int] | None = None
        self._deny_rows: tuple[tuple[str, int], DenyRows] | None = None

    @property
    def current(self) -> LoadedVersion:
        lv = self._current
        if lv is None:
            raise NotReady("the index is not loaded yet")
        return lv

    @property
    def ready(self) -> bool:
        return self._current is not None

    def load(self, version: str | None = None) -> LoadedVersion:
        """Load + warm `version` beside the served one, then swap. On failure the old one stays."""
        with self._reload_lock:
            t0 = time.perf_counter()
            try:
                lv = load_version(self.settings, version)
                warm(lv, self.settings.warmup_queries)
                self.refresh_denylist()
                self.deny_rows(lv)  # resolved before the swap: the first batch pays no lookup
            except Exception as e:
                self.last_reload_error = f"{type(e).__name__}: {e}"
                raise
            self._current = lv
            self.last_reload_error = None
            log.info("serving version %s (%d items) after %.2fs", lv.version, lv.n_items, time.perf_counter() - t0)
            return lv

    @property
    def deny_generation(self) -> int:
        """Bumped whenever the deny-list changes (part of any cache key over search results)."""
        return self._deny[0]

    def is_denied(self, listing_id: str) -> bool:
        """Whether the deny-list hides `listing_id` now."""
        return listing_id in self._deny[1]

    def refresh_denylist(self) -> bool:
        """Re-read DIR/denylist.txt when its stamp changed; -> whether it changed."""
        path = denylist.denylist_path(self.settings.artifacts)
        st = denylist.stamp(path)
        if st == self._deny_stamp:
            return False
        ids = denylist.read_ids(path)
        self._deny = (self._deny[0] + 1, ids)
        self._deny_stamp = st
        log.info("deny-list: %d listing(s) hidden (generation %d)", len(ids), self._deny[0])
        return True

    def deny_rows(self, lv: LoadedVersion) -> DenyRows:
        """The deny-list resolved to rows of `lv` (cached until the version or the list changes)."""
        generation, ids = self._deny
        cached = self._deny_rows
        if cached is not None and cached[0] == (lv.version, generation):
            return cached[1]
        rows = DenyRows(lv.store.rows_of(ids), lv.n_items) if ids else DenyRows.none(lv.n_items)
        self._deny_rows = ((lv.version, generation), rows)
        return rows

    def image_url(self, ref: str | None) -> str | None:
        if not ref:
            return None
        if ref.startswith(("http://", "https://")):
            return ref
        return self.settings.image_base_url + quote(ref.lstrip("/"))

    def request_options(self, mode: str | None, **fusion_changes: Any) -> tuple[str, FusionSpec | None]:
        """THE place the defaults apply: a request's mode (None: settings.search_mode) and, for a
        hybrid one, its fusion (the settings' fusion with the request's changes; ValueError on a
        bad combination). Only a hybrid request carries a fusion, so dense requests share cache
        entries whatever the weights."""
        mode = mode or self.settings.search_mode
        if mode != "hybrid":
            return mode, None
        return mode, replace(self.fusion, **fusion_changes)

    def resolve(self, r: SearchRequest, lv: LoadedVersion) -> tuple[str, FusionSpec]:
        """The mode and fusion `r` is answered with on `lv` (no lexical index: dense)."""
        mode, _ = self.request_options(r.mode)
        if mode != "dense" and lv.lexical is None:
            mode = "dense"
        return mode, r.fusion or self.fusion

    @staticmethod
    def depth(r: SearchRequest, mode: str, spec: FusionSpec) -> int:
        """Rows each list is searched to for `r`: its page, or the last fusion tier the page reads.
        Every list is one ranking per (query, filter) at any depth (index/search.py, fusion tiers),
        so a batch searched at its deepest member's depth answers each member as if it were alone."""
        k = r.k + (r.like_id is not None)  # one more: the listing itself is dropped from its own list
        return spec.depth(k, r.offset) if mode == "hybrid" else r.offset + k

    def search_batch(self, requests: Sequence[SearchRequest]) -> BatchResult:
        """Encode the dense and hybrid queries once, search unfiltered ones together and filtered ones
        per filter; score lexical and hybrid queries with BM25 under the same filter; fuse hybrid."""
        lv = self.current  # one snapshot for the whole batch
        plans = [self.resolve(r, lv) for r in requests]
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        qvecs = np.zeros((len(requests), lv.encoder.dim), np.float32)  # (B, d); zeros for lexical-only
        t_tok = t0
        need = [i for i, (mode, _) in enumerate(plans) if mode != "lexical"]
        like = {i: lv.store.rows_of([requests[i].like_id]) for i in need if requests[i].like_id is not None}
        like_row = {i: int(rows[0]) if len(rows) else -1 for i, rows in like.items()}  # -1: not in this version
        for i, row in like_row.items():
            if row >= 0:
                qvecs[i] = np.asarray(lv.searcher.vectors[row], dtype=np.float32)  # (d,) the stored fused vector
        given = {i for i in need if requests[i].vector is not None}  # a photo's vector, encoded before the batch
        for i in given:
            vector = requests[i].vector
            if vector is not None and vector.shape == (lv.encoder.dim,):
                qvecs[i] = vector
            # else: made by another version's heads (a swap in between, another dim): zeros here, never the
            # batch's failure; the route sees the answer's version differ from the vector's and encodes again
        need = [i for i in need if i not in like_row and i not in given]
        if need:
            with lv.encoder.lock:  # static token/output buffers: one batch at a time
                ids, mask = lv.encoder.tokenize([requests[i].query for i in need])  # (b, T) static buffers
                t_tok = time.perf_counter()
                qvecs[need] = lv.encoder.encode_tokens(ids, mask)  # (b, d) copied out of the reused buffer
        stages["tokenize"] = t_tok - t0
        t1 = time.perf_counter()
        stages["encode"] = t1 - t_tok
        dense: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        lexical: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        exact: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # hybrid: listings holding the query's identifiers
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(None if r.filter.empty else r.filter.key(), []).append(i)
        deny = self.deny_rows(lv)
        t_lex = 0.0
        for key, members in groups.items():
            fmask = None if key is None else lv.filters.mask(requests[members[0]].filter)
            dm = [i for i in members if plans[i][0] != "lexical"]
            if dm:
                depth = max(self.depth(requests[i], *plans[i]) for i in dm)
                mask, extra = deny.plan(fmask)  # denied listings: a row mask, or oversample and drop
                res = lv.searcher.search(qvecs[dm], depth + extra, mask)
                if extra:
                    res = deny.drop(res, depth)
                for j, i in enumerate(dm):
                    dense[i] = (res.rows[j], res.scores[j])
            lm = [i for i in members if plans[i][0] != "dense"]
            if lm and lv.lexical is not None:
                tl = time.perf_counter()
                allowed = fmask
                if len(deny):
                    allowed = np.ones(lv.n_items, dtype=bool) if fmask is None else fmask.copy()
                    allowed[deny.rows] = False
                for i in lm:
                    full = lv.lexical.scores(requests[i].query)  # (n,)
                    rows_i, scores_i = top_k(full, self.depth(requests[i], *plans[i]), allowed)
                    lexical[i] = (rows_i, scores_i, full)
                    if plans[i][0] == "hybrid" and plans[i][1].identifier_boost:
                        exact[i] = lv.lexical.identifier_matches(requests[i].query, allowed)
                t_lex += time.perf_counter() - tl
        t2 = time.perf_counter()
        stages["search"] = t2 - t1 - t_lex
        if lexical:
            stages["lexical"] = t_lex
        rows: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for i, r in enumerate(requests):
            mode, spec = plans[i]
            if mode == "dense":
                rr, ss = dense[i]
            elif mode == "lexical":
                rr, ss = lexical[i][0], lexical[i][1]
            else:
                q, full = qvecs[i], lexical[i][2]
                rr, ss = hybrid_one(dense[i][0], lexical[i][0], spec, spec.candidates,
                                    lambda rs, q=q: exact_scores(lv.searcher.vectors, q[None], rs[None])[0],
                                    lambda rs, full=full: full[rs], need=r.offset + r.k + (i in like_row),
                                    exact=exact.get(i))
            if i in like_row:  # never the listing itself (a listing gone from this version finds nothing)
                own = rr != like_row[i] if like_row[i] >= 0 else np.zeros(len(rr), dtype=bool)
                rr, ss = rr[own], ss[own]
            rr, ss = rr[r.offset:r.offset + r.k], ss[r.offset:r.offset + r.k]
            keep = rr >= 0
            rows.append(rr[keep])
            scores.append(ss[keep])
        t3 = time.perf_counter()
        if any(mode == "hybrid" for mode, _ in plans):
            stages["fuse"] = t3 - t2
        meta = lv.store.get([int(r) for rr in rows for r in rr])
        hits = [
            [Hit(meta[int(r)]["id"], float(s), meta[int(r)]["title"], self.image_url(meta[int(r)]["image"]))
             for r, s in zip(rr, ss, strict=True)]
            for rr, ss in zip(rows, scores, strict=True)
        ]
        stages["metadata"] = time.perf_counter() - t3
        return BatchResult(hits, lv.model_version, lv.version, stages, [mode for mode, _ in plans])


def artifacts_current(settings: Settings) -> str | None:
    return ArtifactStore(Path(settings.artifacts)).current_version()
