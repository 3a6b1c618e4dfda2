"""`service update-index`: a fresh catalog without retraining.

A delta file (`--catalog-delta`, any catalog format) holds listings to upsert (new, or changed:
same id) and, in JSONL, deletion rows `{"id": "L7", "deleted": true}` (a `deleted` column in CSV or
parquet); `--delete-ids FILE` (one id per line) deletes too. The changed listings are embedded with
the CURRENT version's towers (so their vectors live in the same space as the others), merged with
the current vectors and metadata (unchanged listings keep their vectors; deleted and replaced rows
go), the index is rebuilt with the same key (an IVF index keeps its trained quantiser), re-tuned
on the version's held-out query vectors, and a new version is written and published.

The deny-list (index/store/denylist.py) hides deleted listings within seconds; this command makes the
deletion permanent. An id leaves the deny-list once no version in DIR holds it (after retention):
a replica still on the previous version, or a roll-back, must not bring a sold listing back.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from index.build import BuiltIndex, load_index, rebuild_index
from index.lexical import read_documents
from index.store import denylist
from index.store.artifacts import ArtifactError, ArtifactStore, gate_failures, sha256_file
from index.store.listings import ListingRecord, ListingStore
from index.store.manifest import Manifest
from index.tune import tune_and_check
from model.checkpoint import load_model
from model.data.catalog import CatalogError, Listing, iter_rows, load_catalog, parse_column_map
from model.devices import resolve_device
from model.encoders.tokenizer import Tokenizer
from model.encoders.weights import backbone_digest
from model.view_fusion import view_weights
from service.build.pipeline import (
    BuildOptions,
    BuildResult,
    lexical_documents,
    listing_records,
    record_documents,
    write_version,
)
from service.build.stages import embed_with_model

log = logging.getLogger("service.build.update")
TRUE = (True, 1, "1", "true", "True", "yes")


@dataclass(frozen=True)
class Delta:
    upserts: list[Listing]
    deletions: list[str]
    report: dict[str, Any]


def _deleted_rows(path: Path, columns: str | None = None) -> dict[int, str]:
    """line -> id of the delta's deletion rows (`deleted` true); the id read from the column that
    `--columns id=…` names, as for the upserts."""
    id_column = next((src for src, target in parse_column_map(columns).items() if target == "id"), "id")
    out = {}
    for line, row in iter_rows(path):
        if isinstance(row, dict) and row.get("deleted") in TRUE:
            if row.get(id_column) in (None, ""):
                named = f" (column {id_column!r}, from --columns)" if id_column != "id" else ""
                raise CatalogError(str(path), line, "id", f"a deletion row needs the listing id{named}")
            out[line] = str(row[id_column]).strip()
    return out


def load_delta(path: Path | None, delete_ids: Path | None = None, *, skip_bad_rows: bool = False,
               images_root: Path | None = None, columns: str | None = None) -> Delta:
    upserts: list[Listing] = []
    deletions: list[str] = denylist.read_id_file(delete_ids) if delete_ids is not None else []
    report: dict[str, Any] = {}
    if path is not None:
        deleted = _deleted_rows(path, columns)
        cat = load_catalog(path, skip_bad_rows=True, images_root=images_root, column_map=columns)
        real = [r for r in cat.report.rejected if r.line not in deleted]
        if real and not skip_bad_rows:
            raise CatalogError(str(path), real[0].line, real[0].field, real[0].reason)
        upserts = [lst for lst in cat.listings if lst.line not in deleted]
        deletions += list(deleted.values())
        both = {lst.id for lst in upserts} & set(deletions)
        if both:
            raise CatalogError(str(path), None, "id", f"both upserted and deleted: {', '.join(sorted(both)[:5])}")
        report = {"file": str(path), "sha256": cat.report.sha256, "rows": cat.report.n_rows,
                  "rejected": len(real), "rejected_examples": [f"{path}:{r.line}: {r.field}: {r.reason}" for r in real[:20]],
                  "truncated": dict(sorted(cat.report.truncated.items()))}
    if not upserts and not deletions:
        raise ValueError("update-index: the delta has nothing to upsert or delete")
    return Delta(upserts, list(dict.fromkeys(deletions)), report)


def merge(records: list[ListingRecord], vectors: np.ndarray, delta: Delta,
          new_vectors: np.ndarray) -> tuple[list[ListingRecord], np.ndarray, dict[str, int]]:
    """Unchanged listings keep their row order and vectors; upserts are appended (changed ones move)."""
    upserted = {lst.id for lst in delta.upserts}
    gone = upserted | set(delta.deletions)
    old_ids = {r.id for r in records}
    keep = np.array([r.id not in gone for r in records], dtype=bool)
    kept = [r for r, k in zip(records, keep, strict=True) if k]
    merged = [replace(r, row=i) for i, r in enumerate(kept)]  # every stored column kept (images too)
    merged += listing_records(delta.upserts, start=len(merged))
    out = np.vstack([np.asarray(vectors[keep], dtype=np.float32), new_vectors.astype(np.float32)])  # (n', d)
    counts = {"added": len(upserted - old_ids), "changed": len(upserted & old_ids),
              "deleted": len(set(delta.deletions) & old_ids), "not_found": len(set(delta.deletions) - old_ids),
              "n_items": len(merged)}
    return merged, out, counts


def update_index(artifacts: Path, delta_path: Path | None = None, delete_ids: Path | None = None, *,
                 base: str | None = None, publish: bool = True, version: str | None = None, keep_versions: int = 0,
                 device: str = "auto", skip_bad_rows: bool = False, images_root: Path | None = None,
                 columns: str | None = None, min_ann_recall: float | None = None, progress: bool = False) -> BuildResult:
    artifacts = Path(artifacts)
    t0 = time.perf_counter()
    store = ArtifactStore(artifacts)
    base, parent, folder = store.verified(base, f"{store.current_file}: no current version to update; run build-index first")
    delta = load_delta(delta_path, delete_ids, skip_bad_rows=skip_bad_rows, images_root=images_root, columns=columns)
    dev = resolve_device(device)
    model = load_model(folder / "model.safetensors", dev)
    if delta.upserts and any(lst.images for lst in delta.upserts) and parent.get("image_backbone_digest") \
            and backbone_digest(model.cfg.image) != parent["image_backbone_digest"]:
        raise ArtifactError(f"image backbone weights differ from those version {base} was built with; rebuild instead")
    new_vectors, image_report = embed_with_model(model, Tokenizer(folder / "tokenizer.json"), delta.upserts, dev,
                                                 artifacts / "cache" / "images", progress)
    embed_s = time.perf_counter() - t0
    records = list(ListingStore(folder / "listings.sqlite").records())
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    merged, x, counts = merge(records, vectors, delta, new_vectors)
    if not merged:
        raise ValueError("update-index: the update would leave an empty catalog")
    t = time.perf_counter()
    built = rebuild_index(load_index(str(folder / "index.faiss")), parent["index_key"], x)
    built.params.update(parent.get("index_params") or {})
    _retune(built, x, folder, parent)
    index_s = time.perf_counter() - t
    metrics = {f"ann_recall@{built.tuning['k']}": built.tuning["check"]["recall"],
               f"tune_ann_recall@{built.tuning['k']}": built.tuning["recall"]} if built.tuning else {}
    update = {"parent": base, "delta": delta.report, "delete_ids": str(delete_ids) if delete_ids else None,
              "images": image_report, **counts}
    timings = {"embed_s": embed_s, "index_s": index_s, "total_s": time.perf_counter() - t0}
    carried = Manifest.from_dict(parent)  # the model's facts stay the parent's
    manifest = Manifest(
        objective=carried.objective, model_config=carried.model_config, train_config=carried.train_config,
        text_base_digest=carried.text_base_digest, image_backbone_digest=carried.image_backbone_digest,
        modality_gap=carried.modality_gap,
        catalog={**carried.catalog, "updates": [*carried.catalog.get("updates", []), {"version_parent": base, **delta.report}]},
        parent_version=base, parent_metrics=carried.metrics, update=update, metrics=metrics, timings=timings,
        view_weights=view_weights(model.fusion, model.cfg.index_views))
    opts = BuildOptions(catalog=delta_path or Path(""), artifacts=artifacts, publish=publish, version=version,
                        keep_versions=keep_versions, min_ann_recall=min_ann_recall)
    tune = np.load(folder / "tune_queries.npy") if (folder / "tune_queries.npy").is_file() else None
    # The parent's model is reused unmeasured: a parent held back by its gate holds this one back
    # too (publish it with `service publish VERSION --force`, recorded), forced or not before.
    inherited = [f"parent version {base}: {f}" for f in gate_failures(parent)]
    result = write_version(store, opts, save_weights=lambda p: _copy(folder / "model.safetensors", p),
                           tokenizer=folder / "tokenizer.json", built=built, vectors=x, records=merged,
                           tune_vectors=tune, report={"update": update, "timings": timings, "metrics": metrics},
                           manifest=manifest, lexical_docs=carried_documents(folder, records, merged, delta),
                           inherited_failures=inherited)
    if result.published:
        prune_denylist(artifacts)
        relisted = denylist.read_ids(denylist.denylist_path(artifacts)) & {lst.id for lst in delta.upserts}
        if relisted:
            log.warning("the deny-list still hides %d upserted listing(s) (e.g. %s): `service deny --remove` "
                        "shows them", len(relisted), sorted(relisted)[0])
    return result


def carried_documents(folder: Path, records: list[ListingRecord], merged: list[ListingRecord],
                      delta: Delta) -> list[str]:
    """The lexical documents of the merged rows: unchanged listings keep the parent version's (its
    lexical.docs.jsonl; from metadata for a version without one), upserts get their full text views."""
    old = read_documents(folder)
    if old is None or len(old) != len(records):
        old = record_documents(records)
    docs = {r.id: d for r, d in zip(records, old, strict=True)}
    docs.update(zip([lst.id for lst in delta.upserts], lexical_documents(delta.upserts), strict=True))
    return [docs[r.id] for r in merged]


def _retune(built: BuiltIndex, x: np.ndarray, folder: Path, parent: dict[str, Any]) -> None:
    """Same held-out query vectors, same target, k and tune/check split as the parent version's
    tuning: tuned on one part, the gated recall measured on the other (index/tune.py)."""
    path = folder / "tune_queries.npy"
    prev = parent.get("index_tuning") or {}
    if not path.is_file() or not prev:
        return
    queries = np.load(path).astype(np.float32)  # (Q, d)
    checked = tune_and_check(built.index, x, queries, k=int(prev.get("k", 10)), target=float(prev.get("target", 0.95)),
                             seed=int((prev.get("check") or {}).get("seed", 0)), rerank=int(built.params.get("rerank", 0)))
    built.params.update(checked.tuned.params)
    built.tuning = {**checked.to_dict(), "queries": prev.get("queries", "")}


def prune_denylist(artifacts: Path) -> list[str]:
    """Drop deny-list ids that no version in DIR holds any more; -> the dropped ids.

    Not just the new version: a replica may still serve the previous one for a poll interval, and a
    roll-back may bring an older one back; an id leaves the list once retention (`service gc`,
    `--keep-versions`) has removed the last version that holds it."""
    path = denylist.denylist_path(artifacts)
    denied = denylist.read_ids(path)
    if not denied:
        return []
    store = ArtifactStore(artifacts)
    held: set[str] = set()
    for v in store.list_versions():
        held |= ListingStore(store.versions_dir / v / "listings.sqlite").present(denied - held)
    gone = sorted(denied - held)
    if gone:
        denylist.update(path, remove=gone)
    return gone


def _copy(src: Path, dst: Path) -> str:
    shutil.copyfile(src, dst)
    return sha256_file(dst)


def delta_summary(result: BuildResult) -> dict[str, Any]:
    m = result.manifest
    return {"version": result.version, "published": result.published, "path": str(result.path),
            "parent": m.get("parent_version"), **{k: m["update"][k] for k in ("added", "changed", "deleted", "not_found")},
            "n_items": m["n_items"], "index_key": m["index_key"], "index_params": m.get("index_params"),
            "metrics": m.get("metrics", {}), "timings": m.get("timings", {})}
