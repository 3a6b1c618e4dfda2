"""The search engine: a loaded artifact version and a batch search over it.

`LoadedVersion` is everything one version needs to answer (query encoder, placed index, listing
metadata, filter columns), loaded and checked as a unit. `Engine` holds the served version behind a
single reference: a reload builds and warms the new one beside the old and swaps the reference, so
a batch that started on the old version finishes on it and every response names its version.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from index import denylist
from index.artifacts import ArtifactError, ArtifactStore
from index.build import load_index
from index.denylist import DenyRows
from index.filters import Filter, FilterColumns
from index.metadata import ListingStore
from index.search import Searcher, make_searcher
from model.query_encoder import EncoderOptions, QueryEncoder
from service.errors import NotReady
from service.settings import Settings

log = logging.getLogger("service.engine")


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int = 10
    offset: int = 0
    filter: Filter = field(default_factory=Filter)


@dataclass
class Hit:
    id: str
    score: float
    title: str
    image: str | None


@dataclass
class BatchResult:
    hits: list[list[Hit]]
    model_version: str
    index_version: str
    stages: dict[str, float]


def resolve_encoder_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"encoder_device: {requested!r} asked for, but torch sees no CUDA device")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise ValueError(f"encoder_device: {requested!r} is not auto, cpu or cuda")
    return requested


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
    folder = store.version_dir(version)
    if manifest.get("version") != version:
        raise ArtifactError(f"{folder}: the manifest names version {manifest.get('version')!r}")
    files = manifest.get("files") or {}
    if "model.safetensors" in files and files["model.safetensors"] != manifest.get("model_digest"):
        raise ArtifactError(f"{folder}: model.safetensors is not the model the manifest's model_digest names")
    try:  # a truncated or foreign file is an artifact problem, named with its path
        encoder = QueryEncoder(folder / "model.safetensors", folder / "tokenizer.json",
                               resolve_encoder_device(settings.encoder_device), encoder_options(settings))
        index = load_index(str(folder / "index.faiss"))
        vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        listings = ListingStore(folder / "listings.sqlite")
    except (ValueError, OSError, sqlite3.DatabaseError) as e:
        raise ArtifactError(f"{folder}: unreadable artifact ({type(e).__name__}: {e})") from e
    n, dim = manifest["n_items"], manifest["dim"]
    checks = {
        "index vectors": (index.ntotal, n), "index dim": (index.d, dim), "encoder dim": (encoder.dim, dim),
        "vectors.npy rows": (vectors.shape[0], n), "vectors.npy dim": (vectors.shape[1], dim),
        "listings": (listings.count, n),
    }
    for what, (got, want) in checks.items():
        if got != want:
            raise ArtifactError(f"{folder}: {what} is {got}, the manifest says {want}")
    searcher = make_searcher(index, vectors, manifest.get("index_params"), settings.index_device)
    return LoadedVersion(version, manifest, encoder, searcher, listings, listings.filter_columns())


def warm(lv: LoadedVersion, n_queries: int) -> None:
    """Run a few batches through every stage so the first real request pays no first-call costs."""
    probes = ["gift", "red ceramic mug for coffee", "handmade wool scarf in blue with stripes"] * 8
    for size in sorted({1, min(n_queries, len(probes)), max(1, n_queries // 2)}):
        q = lv.encoder.encode(probes[:size])
        res = lv.searcher.search(q, 10)
        lv.store.get([int(r) for r in res.rows.ravel() if r >= 0])


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._current: LoadedVersion | None = None
        self._reload_lock = threading.Lock()
        self.last_reload_error: str | None = None
        # Deny-list (index/denylist.py): (generation, ids) replaced as one reference, the file's stamp,
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

    def search_batch(self, requests: Sequence[SearchRequest]) -> BatchResult:
        """Encode every query once, search unfiltered ones together, filtered ones per filter."""
        lv = self.current  # one snapshot for the whole batch
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        with lv.encoder.lock:  # static token/output buffers: one batch at a time
            ids, mask = lv.encoder.tokenize([r.query for r in requests])  # (B, T) static buffers
            t_tok = time.perf_counter()
            qvecs = lv.encoder.encode_tokens(ids, mask).copy()  # (B, d) out of the reused buffer
        stages["tokenize"] = t_tok - t0
        t1 = time.perf_counter()
        stages["encode"] = t1 - t_tok
        rows = [np.empty(0, np.int64)] * len(requests)
        scores = [np.empty(0, np.float32)] * len(requests)
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(None if r.filter.empty else r.filter.key(), []).append(i)
        deny = self.deny_rows(lv)
        for key, members in groups.items():
            depth = max(requests[i].k + requests[i].offset for i in members)
            mask = None if key is None else lv.filters.mask(requests[members[0]].filter)
            mask, extra = deny.plan(mask)  # denied listings: a row mask, or oversample and drop
            res = lv.searcher.search(qvecs[members], depth + extra, mask)
            if extra:
                res = deny.drop(res, depth)
            for j, i in enumerate(members):
                lo, hi = requests[i].offset, requests[i].offset + requests[i].k
                keep = res.rows[j, lo:hi] >= 0
                rows[i], scores[i] = res.rows[j, lo:hi][keep], res.scores[j, lo:hi][keep]
        t2 = time.perf_counter()
        stages["search"] = t2 - t1
        meta = lv.store.get([int(r) for rr in rows for r in rr])
        hits = [
            [Hit(meta[int(r)]["id"], float(s), meta[int(r)]["title"], self.image_url(meta[int(r)]["image"]))
             for r, s in zip(rr, ss, strict=True)]
            for rr, ss in zip(rows, scores, strict=True)
        ]
        stages["metadata"] = time.perf_counter() - t2
        return BatchResult(hits, lv.model_version, lv.version, stages)


def artifacts_current(settings: Settings) -> str | None:
    return ArtifactStore(Path(settings.artifacts)).current_version()
