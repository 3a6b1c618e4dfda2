"""The build as separate commands, so a big catalog is embedded by several workers with ONE model.

  service train  --catalog ... --artifacts DIR [--run RUN]   -> DIR/runs/<run>/
  service embed  --artifacts DIR --run RUN --shard i/n       -> DIR/runs/<run>/shards/<i>-of-<n>.npy (+ .json)
  service index  --artifacts DIR --run RUN [--publish]       -> DIR/versions/<version>/

A run folder holds the trained towers (model.safetensors, tokenizer.json), the resolved build
options with the catalog's path and sha256 (options.json) and the training report (train.json).
Shard i of n covers the contiguous rows [i*N//n, (i+1)*N//n) of the catalog in file order; its
.json (written last: a shard without it is unfinished) names the rows, ids, model digest and
catalog digest, which `index` checks before merging: all n shards of one n, one model, one catalog.
Image features are cached by content under DIR/cache/images, so workers share what is computed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.store.artifacts import VERSION_RE, ArtifactStore, new_version_name, sha256_file, write_atomic
from index.store.manifest import Manifest
from model.checkpoint import load_model, save_model
from model.config import ImageConfig
from model.data.catalog import Listing, load_catalog
from model.data.views import build_view_table, encoder_cuts
from model.devices import resolve_device
from model.embed import embed_listings
from model.encoders.tokenizer import Tokenizer
from model.encoders.weights import backbone_digest, resolve_weights_dir, text_weights_digest
from model.towers import TwoTower
from model.train.distributed import DistContext, device_for, dist_backend
from model.train.pairs import build_slots
from model.train.trainer import NEGATIVES_UNDER_TORCHRUN
from model.view_fusion import view_weights
from service.build.pipeline import (
    BuildOptions,
    BuildResult,
    build_options,
    catalog_summary,
    featurize_images,
    image_cache_dir,
    index_and_evaluate,
    listing_records,
    load_inputs,
    options_to_dict,
    train_stage,
    write_version,
)

log = logging.getLogger("service.build.stages")
SHARD_RE = re.compile(r"^(\d+)-of-(\d+)\.json$")


class StageError(ValueError):
    """A run or its shards are missing, unfinished or do not belong together."""


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    options: BuildOptions
    info: dict[str, Any]  # options.json: catalog summary, model digest, base digests

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"


def runs_dir(artifacts: Path) -> Path:
    return Path(artifacts) / "runs"


def shard_range(n_rows: int, shard: int, n_shards: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard `shard` of `n_shards` (contiguous, sizes differ by at most one)."""
    if not 0 <= shard < n_shards:
        raise StageError(f"shard: {shard}/{n_shards} is not one of 0/{n_shards} .. {n_shards - 1}/{n_shards}")
    return shard * n_rows // n_shards, (shard + 1) * n_rows // n_shards


def parse_shard(spec: str) -> tuple[int, int]:
    """'i/n' -> (i, n)."""
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise StageError(f"--shard: {spec!r} is not i/n with 0 <= i < n")
    return int(m.group(1)), int(m.group(2))


def open_run(artifacts: Path, run: str) -> Run:
    if not VERSION_RE.match(run):
        raise StageError(f"run: {run!r} is not a valid run name")
    path = runs_dir(artifacts) / run
    try:
        info = json.loads((path / "options.json").read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: no such run (no options.json; run `service train` first)") from None
    known = {f.name for f in dataclasses.fields(BuildOptions)}  # a run written by an older release
    opts = build_options(**{k: v for k, v in info["options"].items() if k in known})
    digest = sha256_file(path / "model.safetensors")
    if digest != info["model_digest"]:
        raise StageError(f"{path / 'model.safetensors'}: sha256 {digest[:12]}… is not the run's {info['model_digest'][:12]}…")
    return Run(run, path, replace(opts, artifacts=Path(artifacts)), info)


# ---------------------------------------------------------------------------------- train


def train_run(opts: BuildOptions, run: str | None = None, dist: DistContext | None = None) -> Run:
    """Train once and write DIR/runs/<run>/ (atomically: a temp folder renamed into place).

    Under torchrun (`dist` from `init_distributed`) every rank trains on GPU LOCAL_RANK (or CPU,
    gloo) with the same seed and one shared run name; rank 0 alone writes the run, the others wait
    at a barrier, then every rank returns the finished run."""
    dist = dist or DistContext()
    if dist.enabled and opts.negatives is not None:  # before any rank spends minutes on the photos
        raise ValueError(NEGATIVES_UNDER_TORCHRUN)
    run = dist.broadcast(run or new_version_name())  # a timestamp name could differ per rank
    if not VERSION_RE.match(run):
        raise StageError(f"run: {run!r} is not a valid run name")
    final = runs_dir(opts.artifacts) / run
    if final.exists():
        raise StageError(f"{final}: run exists already")
    device = device_for(dist, opts.device)
    t0 = time.perf_counter()
    inputs = load_inputs(opts)
    icfg = ImageConfig(weights_path=opts.image_weights)
    progress = opts.progress and dist.is_main
    # Every rank needs every photo's features; the cache is shared and written atomically.
    features, ok, image_report = featurize_images(inputs.views, icfg, device, image_cache_dir(opts), progress)
    inputs.reports["images"] = image_report
    model, tokenizer, _, _, train_info = train_stage(inputs, features, ok, replace(opts, progress=progress),
                                                     device, dist)
    inputs.reports["encoder_truncated"] = encoder_cuts(inputs.views, tokenizer, model.cfg.text)
    timings = {"train_s": train_info.pop("train_seconds"), "trunk_s": train_info.pop("trunk_seconds"),
               "total_s": time.perf_counter() - t0}
    if dist.is_main:
        _write_run(opts, run, model, inputs, train_info, timings, icfg, dist)
    dist.barrier()  # the run is complete on disk before any rank returns
    return open_run(opts.artifacts, run)


def _write_run(opts: BuildOptions, run: str, model: TwoTower, inputs: Any, train_info: dict[str, Any],
               timings: dict[str, float], icfg: ImageConfig, dist: DistContext) -> None:
    """Rank 0's part of `train_run`: the run folder, staged under a temp name, renamed into place."""
    final = runs_dir(opts.artifacts) / run
    tmp = runs_dir(opts.artifacts) / f".{run}.{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        digest = save_model(model, tmp / "model.safetensors")
        shutil.copyfile(resolve_weights_dir(opts.text_weights or None) / "tokenizer.json", tmp / "tokenizer.json")
        info = {
            "options": options_to_dict(opts),
            "catalog": catalog_summary(opts, inputs.catalog) | {"listings": len(inputs.catalog)},
            "model_digest": digest,
            "text_base_digest": text_weights_digest(opts.text_weights or None),
            "image_backbone_digest": backbone_digest(icfg) if inputs.views.image_paths else None,
            "distributed": {"world_size": dist.world, "backend": dist_backend()},
        }
        (tmp / "train.json").write_text(json.dumps({"inputs": inputs.reports, "training": train_info,
                                                    "timings": timings}, indent=2, default=float))
        write_atomic(tmp / "options.json", json.dumps(info, indent=2).encode())
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------- embed


def embed_with_model(model: TwoTower, tokenizer: Any, listings: list[Listing], device: torch.device,
                     cache: Path | None, progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Fused vectors (n, d) of `listings` with a trained model (full encoder, every view exact)."""
    if not listings:
        return np.zeros((0, model.cfg.tower.dim), np.float32), {"images": 0, "unreadable": 0}
    views = build_view_table(listings)
    features, ok, report = featurize_images(views, model.cfg.image, device, cache, progress)
    slots = build_slots(views, ok, model.cfg.tower.max_other_images)
    vectors = embed_listings(model, tokenizer, views, slots, features, device, progress=progress)  # (n, d)
    return vectors, report


def embed_shard(artifacts: Path, run: str, shard: int, n_shards: int, *, device: str | None = None,
                progress: bool = False) -> Path:
    """Embed shard `shard` of `n_shards` with the run's model -> the shard's .npy path."""
    r = open_run(artifacts, run)
    opts = r.options
    catalog = load_catalog(opts.catalog, skip_bad_rows=opts.skip_bad_rows, images_root=opts.images_root,
                           column_map=opts.columns)
    if catalog.report.sha256 != r.info["catalog"]["sha256"]:
        raise StageError(f"{opts.catalog}: changed since the run was trained (sha256 differs); train again")
    listings = catalog.listings
    lo, hi = shard_range(len(listings), shard, n_shards)
    dev = resolve_device(device or opts.device)
    model = load_model(r.model_path, dev)
    tokenizer = Tokenizer(r.path / "tokenizer.json")
    t0 = time.perf_counter()
    vectors, image_report = embed_with_model(model, tokenizer, listings[lo:hi], dev,
                                             image_cache_dir(opts), progress)
    out = r.path / "shards"
    out.mkdir(exist_ok=True)
    name = f"{shard}-of-{n_shards}"
    tmp = out / f".{name}.{secrets.token_hex(4)}.npy"
    np.save(tmp, vectors.astype(np.float32))
    os.replace(tmp, out / f"{name}.npy")
    meta = {"shard": shard, "of": n_shards, "rows": [lo, hi], "ids": [lst.id for lst in listings[lo:hi]],
            "model_digest": r.info["model_digest"], "catalog_sha256": r.info["catalog"]["sha256"],
            "vectors_sha256": sha256_file(out / f"{name}.npy"), "images": image_report,
            "seconds": time.perf_counter() - t0}
    write_atomic(out / f"{name}.json", json.dumps(meta).encode())  # last: marks the shard finished
    return out / f"{name}.npy"


def merge_shards(r: Run) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """All finished shards of the run -> (vectors (N, d) in catalog order, ids, shard metas)."""
    folder = r.path / "shards"
    metas = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if SHARD_RE.match(p.name):
            metas.append(json.loads(p.read_text()))
    if not metas:
        raise StageError(f"{folder}: no finished shards (run `service embed --shard i/n`)")
    counts = sorted({m["of"] for m in metas})
    if len(counts) > 1:
        raise StageError(f"{folder}: shards of different splits ({', '.join(f'n={c}' for c in counts)}); "
                         "remove the stale ones")
    n = counts[0]
    metas.sort(key=lambda m: m["shard"])
    missing = sorted(set(range(n)) - {m["shard"] for m in metas})
    if missing:
        raise StageError(f"{folder}: shards {', '.join(f'{i}-of-{n}' for i in missing)} are missing or unfinished")
    n_rows = r.info["catalog"]["listings"]
    parts, ids = [], []
    for m in metas:
        name = f"{m['shard']}-of-{n}"
        if m["model_digest"] != r.info["model_digest"]:
            raise StageError(f"{folder / name}: embedded with model {m['model_digest'][:12]}…, not the run's")
        if m["catalog_sha256"] != r.info["catalog"]["sha256"]:
            raise StageError(f"{folder / name}: embedded from another catalog")
        if list(m["rows"]) != list(shard_range(n_rows, m["shard"], n)):
            raise StageError(f"{folder / name}: rows {m['rows']} are not shard {m['shard']} of {n} over {n_rows} rows")
        if sha256_file(folder / f"{name}.npy") != m["vectors_sha256"]:
            raise StageError(f"{folder / name}.npy: checksum mismatch (rewritten or corrupt)")
        part = np.load(folder / f"{name}.npy")
        if part.shape[0] != m["rows"][1] - m["rows"][0]:
            raise StageError(f"{folder / name}.npy: {part.shape[0]} vectors for rows {m['rows']}")
        parts.append(part)
        ids.extend(m["ids"])
    return np.vstack(parts), ids, metas


# ---------------------------------------------------------------------------------- index


def index_run(artifacts: Path, run: str, **overrides: Any) -> BuildResult:
    """Merge the run's shards, build + tune the index, evaluate, gate, write a version.

    `overrides` replace build options for this step (publish, version, index_key, memory_budget_gb,
    target_ann_recall, served_k, min_recall_at_100, min_ann_recall, keep_versions, device)."""
    r = open_run(artifacts, run)
    opts = replace(r.options, **{k: v for k, v in overrides.items() if v is not None})
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    vectors, ids, metas = merge_shards(r)
    # the negatives trained already (train.json reports them); indexing never reads them again
    inputs = load_inputs(replace(opts, negatives=None), validation=False)
    if inputs.catalog.report.sha256 != r.info["catalog"]["sha256"]:
        raise StageError(f"{opts.catalog}: changed since the run was trained (sha256 differs)")
    if ids != [lst.id for lst in inputs.catalog.listings]:
        raise StageError(f"{r.path / 'shards'}: shard ids are not the catalog's listings in order")
    timings["merge_s"] = time.perf_counter() - t0
    device = resolve_device(opts.device)
    model = load_model(r.model_path, device)
    tokenizer = Tokenizer(r.path / "tokenizer.json")
    done = index_and_evaluate(vectors, ids, inputs, model, tokenizer, device, opts, timings)
    metrics = done.metrics
    trained = json.loads((r.path / "train.json").read_text())
    timings = {**trained["timings"], "embed_s": sum(m["seconds"] for m in metas), **timings}
    timings["total_s"] = time.perf_counter() - t0
    train_info = trained["training"]
    manifest = Manifest(
        objective=opts.objective, model_config=dataclasses.asdict(model.cfg),
        view_weights=view_weights(model.fusion, model.cfg.index_views), train_config=train_info["train_config"],
        text_base_digest=r.info["text_base_digest"], image_backbone_digest=r.info["image_backbone_digest"],
        catalog=catalog_summary(opts, inputs.catalog),
        run={"name": run, "shards": len(metas), "world_size": r.info.get("distributed", {}).get("world_size", 1)},
        metrics=metrics, modality_gap=train_info["modality_gap"], timings=timings)
    report = {"inputs": {**trained["inputs"], **{k: v for k, v in inputs.reports.items() if k != "catalog"}},
              "training": train_info, "timings": timings, "metrics": metrics,
              "shards": [{k: m[k] for k in ("shard", "of", "rows", "images", "seconds")} for m in metas]}
    return write_version(
        ArtifactStore(opts.artifacts), opts, save_weights=lambda p: _copy_weights(r.model_path, p),
        tokenizer=r.path / "tokenizer.json", built=done.built, vectors=vectors,
        records=listing_records(inputs.catalog.listings), tune_vectors=done.tune_vectors, report=report,
        manifest=manifest, lexical_docs=done.lexical_docs, lexical_index=done.lexical,
    )


def _copy_weights(src: Path, dst: Path) -> str:
    shutil.copyfile(src, dst)
    return sha256_file(dst)
