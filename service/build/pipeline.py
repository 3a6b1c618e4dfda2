"""`service build-index`: load -> featurise -> train -> embed -> index (+ tune) -> evaluate -> publish.

Every stage is a function of its own; `build_index` chains them in one process and writes one
versioned artifact (index/store/artifacts.py). The same stages also run as separate commands
(service/build/stages.py: `service train`, `service embed --shard i/n`, `service index`), which share
`index_stage`, `tuning_queries`, `evaluate_stage` and `write_version` with this file, so a sharded
build and a one-process build produce the same kind of version.

The publish gate: when the metrics fall below the thresholds, the version is still written (with
its report) but `current` is left exactly as it was and the build fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.build import BuiltIndex, save_index
from index.build import build_index as build_faiss
from index.lexical import LexicalIndex
from index.rank_fusion import FusionSpec
from index.search import FaissCpuSearcher
from index.store.artifacts import ArtifactStore, new_version_name
from index.store.listings import ListingRecord, write_listings
from index.store.manifest import Manifest
from index.tune import tune_and_check
from model.checkpoint import new_model, save_model
from model.config import VIEW_TYPES, ImageConfig, ModelConfig, TextConfig, TowerConfig, TrainConfig
from model.data.catalog import Catalog, Listing, load_catalog
from model.data.interactions import Interaction, Judgments, load_interactions, load_judgments, load_negatives
from model.data.views import KIND_QUERY, ViewTable, build_view_table, encoder_cuts, tags_text
from model.devices import resolve_device
from model.embed import embed_listings, embed_queries, view_clouds
from model.encoders.image_features import ImageFeaturizer
from model.encoders.weights import (
    backbone_digest,
    load_text_encoder,
    resolve_weights_dir,
    text_weights_digest,
)
from model.eval.crossview import leave_one_view_out, slot_embeddings
from model.eval.diagnostics import modality_gap
from model.objectives import make_objective
from model.towers import TwoTower
from model.train.distributed import DistContext
from model.train.pairs import TrainingSet, build_training_set, pseudo_queries
from model.train.trainer import Trainer, build_trunk, seed_everything
from model.train.trunk import TrunkCache
from model.train.validation import MIN_VALIDATION_QUERIES, ValidationSet, holdout_queries, normalise
from model.view_fusion import view_weights
from service.build.evaluation import evaluate, evaluate_modes, evaluate_rankings, exclude_training_queries

log = logging.getLogger("service.build.pipeline")
# Above this many listings the per-view embeddings are not all held at once (cross-view skipped).
CROSSVIEW_MAX_ITEMS = 200_000
# `--view-vectors auto` writes the per-view vectors (explain, service/api/explain.py) up to this many
# listings: S·d·2 + S·2 bytes each (4,112 at S=8 slots, d=256: 0.82 GB at 200,000; on disk,
# memory-mapped, read only for explained hits), and the build holds every view in memory (fp32,
# twice that) to write them, as cross-view does below the same size (docs/PERFORMANCE.md).
VIEW_VECTORS_AUTO_MAX = CROSSVIEW_MAX_ITEMS
VIEW_VECTORS = ("auto", "on", "off")


# Share of the interaction queries held out for validation when none is given otherwise.
DEFAULT_VALIDATION_FRACTION = 0.1

VIEW_VECTORS_FILE = "view_vectors.npy"
SLOT_WEIGHTS_FILE = "slot_weights.npy"


class GateFailed(RuntimeError):
    """The new version's metrics are below the publish thresholds; `current` was not touched."""


@dataclass(frozen=True)
class BuildOptions:
    catalog: Path
    artifacts: Path
    interactions: Path | None = None
    judgments: Path | None = None
    objective: str = "ft"
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    device: str = "auto"
    seed: int = 0
    skip_bad_rows: bool = False
    images_root: Path | None = None
    columns: str | None = None
    index_key: str = "auto"
    text_weights: str = ""
    image_weights: str = ""
    dim: int = TowerConfig.dim
    trainable_layers: int = TextConfig.trainable_layers
    image_cache: Path | None = None  # default: DIR/cache/images
    publish: bool = True
    min_recall_at_100: float | None = None
    min_ann_recall: float | None = None
    progress: bool = True
    version: str | None = None
    keep_versions: int = 0  # 0 = keep all
    train_overrides: dict[str, Any] = field(default_factory=dict)
    # The replica's memory for the index (None: unconstrained): picks a smaller family when the
    # fp32 vectors or an HNSW graph would not fit (index/build.py choose_index_key).
    memory_budget_gb: float | None = None
    # Search parameters are tuned until ANN recall@served_k against exact search reaches this:
    # 0.95 loses about one listing in twenty of the exact top-k, invisible next to model error.
    target_ann_recall: float = 0.95
    # The k the storefront asks for; recall is tuned (and gated) at this depth.
    served_k: int = 10
    # Held-out queries used to tune (more = a tighter recall estimate, longer tuning).
    tune_queries: int = 1000
    # Judgments at or above this relevance count as relevant (None: above the file's lowest grade).
    min_relevant: float | None = None
    # Build the BM25 index beside the dense one (index/lexical.py; hybrid search needs it).
    lexical: bool = True
    # Per-view vectors + slot weights for /search explain: auto (up to VIEW_VECTORS_AUTO_MAX
    # listings), on, off.
    view_vectors: str = "auto"
    # Validation queries scored after every epoch (early stopping with train_overrides patience):
    # a judgments file, or else this share of the interaction queries held out by query hash.
    validation_judgments: Path | None = None
    validation_fraction: float | None = None  # None: DEFAULT_VALIDATION_FRACTION when validation is on
    # Judged negatives (query, item_id): listings shown for a training query and judged wrong.
    negatives: Path | None = None

    def __post_init__(self) -> None:
        if self.validation_fraction is not None and not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation fraction: must be within (0, 1), got {self.validation_fraction}")
        if self.view_vectors not in VIEW_VECTORS:
            raise ValueError(f"view_vectors: {self.view_vectors!r} is not one of {', '.join(VIEW_VECTORS)}")

    def wants_view_vectors(self, n_items: int) -> bool:
        return self.view_vectors == "on" or (self.view_vectors == "auto" and n_items <= VIEW_VECTORS_AUTO_MAX)


@dataclass
class BuildResult:
    version: str
    path: Path
    manifest: dict[str, Any]
    published: bool


@dataclass
class Inputs:
    catalog: Catalog
    views: ViewTable
    interactions: list[Any]
    judgments: Judgments | None
    reports: dict[str, Any]
    validation: ValidationSet | None = None  # held-out queries scored each epoch (never trained on)
    negatives: list[Any] = field(default_factory=list)  # judged negatives (Interaction rows)


# ---------------------------------------------------------------------------------- stages


def load_inputs(opts: BuildOptions, validation: bool = True) -> Inputs:
    """`validation=False`: leave the validation queries alone (`service index` after `train`: the
    run already trained without them, and the index never reads them)."""
    catalog = load_catalog(opts.catalog, skip_bad_rows=opts.skip_bad_rows, images_root=opts.images_root,
                           column_map=opts.columns)
    if not catalog.listings:
        raise ValueError(f"{opts.catalog}: no usable listings ({catalog.report.n_rows} rows read)")
    ids = {lst.id for lst in catalog.listings}
    reports: dict[str, Any] = {"catalog": catalog.report.to_dict()}
    interactions: list[Any] = []
    if opts.interactions is not None:
        interactions, rep = load_interactions(opts.interactions, ids, skip_bad_rows=opts.skip_bad_rows)
        reports["interactions"] = rep.to_dict()
    negatives: list[Any] = []
    if opts.negatives is not None:
        if opts.interactions is None:
            raise ValueError(f"--negatives {opts.negatives}: needs --interactions (a judged negative is contrasted "
                             "with its query's interactions)")
        negatives, rep = load_negatives(opts.negatives, ids, skip_bad_rows=opts.skip_bad_rows)
        reports["negatives"] = rep.to_dict()
    vs = None
    if validation:
        interactions, vs = validation_inputs(opts, ids, interactions, reports)
    judgments = None
    if opts.judgments is not None:
        judgments = load_judgments(opts.judgments, ids, skip_bad_rows=opts.skip_bad_rows,
                                   min_relevant=opts.min_relevant)
        # judged queries also trained on would flatter the metrics, and the epoch chosen on a
        # validation query is chosen on it: both counted here and left out of the metrics
        judgments, in_training = exclude_training_queries(judgments, interactions)
        rep: dict[str, Any] = {**judgments.report.to_dict(), "in_training": in_training}
        if vs is not None:
            judgments, rep["in_validation"] = exclude_training_queries(
                judgments, [Interaction(q, "") for q in vs.queries])
        reports["judgments"] = rep
    return Inputs(catalog, build_view_table(catalog.listings), interactions, judgments, reports, vs, negatives)


def wants_validation(opts: BuildOptions) -> bool:
    """Validation queries are scored every epoch when asked for by any of its options."""
    return (opts.validation_judgments is not None or opts.validation_fraction is not None
            or int(opts.train_overrides.get("patience", 0)) > 0)


def validation_inputs(opts: BuildOptions, ids: set[str], interactions: list[Any],
                      reports: dict[str, Any]) -> tuple[list[Any], ValidationSet | None]:
    """-> (the interactions to train on, the validation queries or None). A validation query never
    trains: held out of the interactions by query hash, or (a judgments file) removed from them."""
    if not wants_validation(opts):
        return interactions, None
    if opts.validation_judgments is not None:
        if opts.judgments is not None and opts.validation_judgments.resolve() == opts.judgments.resolve():
            raise ValueError(f"--validation-judgments {opts.validation_judgments}: the same file as --judgments; the "
                             "epoch would be chosen on the queries the version is then scored (and gated) on")
        judged = load_judgments(opts.validation_judgments, ids, skip_bad_rows=opts.skip_bad_rows,
                                min_relevant=opts.min_relevant)
        vs = ValidationSet.from_judgments(judged, str(opts.validation_judgments))
        held = {normalise(q) for q in vs.queries}
        kept = [it for it in interactions if normalise(it.query) not in held]
        removed = len(interactions) - len(kept)
    elif interactions:
        kept, vs = holdout_queries(interactions, opts.validation_fraction or DEFAULT_VALIDATION_FRACTION)
        removed = len(interactions) - len(kept)
    else:
        raise ValueError("--patience: early stopping needs validation queries: --interactions (a share of "
                         "their queries is held out) or --validation-judgments")
    if len(vs) < MIN_VALIDATION_QUERIES:
        raise ValueError(f"validation: {len(vs)} queries with a relevant listing ({vs.source}); early stopping "
                         f"needs at least {MIN_VALIDATION_QUERIES}: raise --validation-fraction or pass "
                         "--validation-judgments")
    if interactions and not kept:  # (no interactions at all: pseudo-queries train, as without validation)
        raise ValueError(f"validation: holding out {vs.source} leaves no interaction to train on")
    reports["validation"] = {"source": vs.source, "queries": len(vs), "interactions_held_out": removed}
    return kept, vs


def image_cache_dir(opts: BuildOptions) -> Path:
    return opts.image_cache or (opts.artifacts / "cache" / "images")


def featurize_images(views: ViewTable, cfg: ImageConfig, device: torch.device, cache: Path | None,
                     progress: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """-> (features (n_images, F), ok (n_images,), report of unreadable images)."""
    if not views.image_paths:
        return np.zeros((0, cfg.feature_dim), np.float32), np.zeros(0, bool), {"images": 0, "unreadable": 0}
    feat = ImageFeaturizer(cfg, device=device, cache_dir=cache)
    res = feat.featurize([Path(p) for p in views.image_paths], progress=progress)
    errors = [f"{views.image_paths[i]}: {why}" for i, why in sorted(res.errors.items())]
    report = {"images": len(views.image_paths), "unreadable": len(errors), "unreadable_examples": errors[:20]}
    return res.features, res.ok, report


def model_config(opts: BuildOptions, objective_index_views: tuple[str, ...]) -> ModelConfig:
    return ModelConfig(
        text=TextConfig(weights_dir=opts.text_weights, trainable_layers=opts.trainable_layers),
        image=ImageConfig(weights_path=opts.image_weights),
        tower=TowerConfig(dim=opts.dim),
        index_views=objective_index_views,
    )


def train_config(opts: BuildOptions) -> TrainConfig:
    return TrainConfig(objective=opts.objective, epochs=opts.epochs, batch_size=opts.batch_size,
                       seed=opts.seed, device=opts.device, **opts.train_overrides)


def gap(model: TwoTower, tokenizer: Any, data: TrainingSet, device: torch.device, trunk: TrunkCache | None) -> dict[str, Any]:
    clouds = view_clouds(model, tokenizer, data.views, data.slots, data.image_features, device, trunk=trunk)
    return modality_gap(clouds)


def train_stage(inputs: Inputs, features: np.ndarray, ok: np.ndarray, opts: BuildOptions, device: torch.device,
                dist: DistContext | None = None) -> tuple[TwoTower, Any, TrainingSet, TrunkCache, dict[str, Any]]:
    """Train the towers; under torchrun (`dist`) every rank runs this with the same seed and
    encodes its slice of each global batch (model/train/distributed.py)."""
    dist = dist or DistContext()
    tcfg = train_config(opts)
    if tcfg.hard_negatives and dist.enabled:  # before any rank spends minutes on the trunk cache
        raise ValueError("hard_negatives: not supported under torchrun yet (each rank would mine its own); "
                         "train in one process or leave --hard-negatives at 0")
    seed_everything(tcfg.seed)
    index_views = make_objective(tcfg.objective, opts.dim, tcfg).index_views
    cfg = model_config(opts, index_views)
    pretrained, tokenizer, _ = load_text_encoder(opts.text_weights or None)
    model = new_model(cfg, pretrained, tcfg.seed)
    data = build_training_set(inputs.catalog.listings, features, ok, inputs.views, inputs.interactions,
                              max_other_images=cfg.tower.max_other_images,
                              pseudo_per_item=tcfg.pseudo_queries_per_item, seed=tcfg.seed,
                              negatives=inputs.negatives)
    vs = inputs.validation
    # validation queries join the text table so the trunk cache covers them (scored every epoch)
    val_rows = None if vs is None else np.array([data.texts.add(q.lower(), KIND_QUERY) for q in vs.queries])
    t0 = time.perf_counter()
    trunk = build_trunk(model.to(device), tokenizer, data, device, opts.progress)
    trunk_s = time.perf_counter() - t0
    gap_before = gap(model, tokenizer, data, device, trunk)
    trainer = Trainer(model, data, trunk, tcfg, device, dist=dist)
    t0 = time.perf_counter()
    history = trainer.fit(progress=opts.progress, validation=vs, validation_rows=val_rows)
    train_s = time.perf_counter() - t0
    info = {
        "train_config": tcfg.to_dict(),
        "pairs": int(len(data.pair_item)),
        "world_size": dist.world,
        "self_supervised": data.self_supervised,
        "negatives": data.negatives_report or None,
        "history": history.to_dict(),
        "trunk_seconds": trunk_s,
        "train_seconds": train_s,
        "modality_gap": {"before": gap_before, "after": gap(model, tokenizer, data, device, trunk)},
    }
    return model, tokenizer, data, trunk, info


@dataclass
class ViewVectors:
    """What explain reads per listing: every slot's unit view embedding and the weight fusion gave it."""
    vectors: np.ndarray  # (n, S, d) unit view embeddings, zeros where the listing lacks the slot
    weights: np.ndarray  # (n, S) the fused vector's per-slot weights w_s (0: missing or not indexed)
    slots: tuple[str, ...]  # (S,) a name per slot: title, image, description, tags, image_other.1, ...


def slot_names(types: Sequence[int]) -> tuple[str, ...]:
    """Slot view types -> names; the other photos numbered from 1 (image_other.1, image_other.2, ...)."""
    names, seen = [], 0
    for t in types:
        if VIEW_TYPES[t] == "image_other":
            seen += 1
            names.append(f"image_other.{seen}")
        else:
            names.append(VIEW_TYPES[t])
    return tuple(names)


def embed_stage(model: TwoTower, tokenizer: Any, data: TrainingSet, device: torch.device, trunk: TrunkCache | None,
                opts: BuildOptions) -> tuple[np.ndarray, dict[str, Any], ViewVectors | None]:
    """In-process embedding with the training-time trunk cache -> (vectors (n, d), cross-view metrics,
    the per-view vectors when `opts` wants them)."""
    n = len(data.views)
    want_views = opts.wants_view_vectors(n)
    if n > CROSSVIEW_MAX_ITEMS and not want_views:  # too large to hold every view: chunks, no cross-view
        return embed_listings(model, tokenizer, data.views, data.slots, data.image_features, device, trunk=trunk,
                              progress=opts.progress), {}, None
    z = slot_embeddings(model, tokenizer, data.views, data.slots, data.image_features, device, trunk=trunk)  # (n, S, d)
    st = torch.tensor(data.slots.types)
    present = torch.from_numpy(data.slots.present)  # (n, S)
    with torch.inference_mode():
        model = model.cpu()
        vectors = model.fuse(z, present, st).numpy()  # (n, d)
        weights = model.fusion.slot_weights(present, st, model.index_views).numpy()  # (n, S), as fuse used them
    views = ViewVectors(z.numpy(), weights, slot_names(data.slots.types)) if want_views else None
    crossview = leave_one_view_out(model, z, data.slots.present, data.slots.types, seed=opts.seed) \
        if n <= CROSSVIEW_MAX_ITEMS else {}
    return vectors, crossview, views


def listing_records(listings: Sequence[Listing], start: int = 0) -> list[ListingRecord]:
    return [
        ListingRecord(row=start + i, id=lst.id, title=lst.title,
                      image=lst.raw_images[0] if lst.raw_images else None,
                      category=lst.category or None, price=lst.price, attributes=dict(lst.attributes),
                      images=tuple(lst.raw_images))
        for i, lst in enumerate(listings)
    ]


def lexical_documents(listings: Sequence[Listing]) -> list[str]:
    """Each listing's text views as one document for the lexical index: title, then category,
    tags and attributes, then description (the dense model's text views, concatenated)."""
    return ["\n".join(p for p in (lst.title, tags_text(lst), lst.description) if p) for lst in listings]


def record_documents(records: Sequence[ListingRecord]) -> list[str]:
    """The lexical documents that listing metadata alone allows (title, category, attributes): used
    when a version is written without the catalog's listings (a caller that passes no documents)."""
    return ["\n".join([r.title, r.category or "", "; ".join(f"{k}: {v}" for k, v in r.attributes.items())]).strip()
            for r in records]


def tuning_queries(inputs: Inputs, limit: int, seed: int) -> tuple[list[str], str]:
    """Held-out query texts to tune the index with, and where they came from: the judged queries,
    else a sample of the logged queries, else pseudo-queries cut from listings (never listing
    vectors: an item finds itself at rank 1)."""
    rng = np.random.default_rng(seed)

    def sample(texts: list[str]) -> list[str]:
        return texts if len(texts) <= limit else [texts[i] for i in sorted(rng.choice(len(texts), limit, replace=False))]

    if inputs.judgments is not None and inputs.judgments.queries:
        return sample(inputs.judgments.queries), "judgments"
    logged = list(dict.fromkeys(it.query.lower() for it in inputs.interactions))
    if logged:
        return sample(logged), "interactions"
    listings = inputs.catalog.listings
    pick = rng.choice(len(listings), min(limit, len(listings)), replace=False)
    pseudo = [q.lower() for i in sorted(pick) for q in pseudo_queries(listings[i], 1, rng)]
    return list(dict.fromkeys(pseudo)), "pseudo"


def index_stage(vectors: np.ndarray, opts: BuildOptions, queries: np.ndarray | None = None,
                query_source: str = "") -> BuiltIndex:
    """Build (index family by size and memory budget, or --index-key), tune on part of the query
    vectors and measure the gated ANN recall on the rest (index/tune.py tune_and_check)."""
    budget = opts.memory_budget_gb * 2**30 if opts.memory_budget_gb else None
    built = build_faiss(vectors, opts.index_key, seed=opts.seed, memory_budget_bytes=budget)
    if queries is not None and len(queries):
        t0 = time.perf_counter()
        checked = tune_and_check(built.index, vectors, queries, k=opts.served_k, target=opts.target_ann_recall,
                                 max_queries=opts.tune_queries, seed=opts.seed,
                                 rerank=int(built.params.get("rerank", 0)))
        tuned = checked.tuned
        built.params.update(tuned.params)
        built.tuning = {**checked.to_dict(), "queries": query_source, "seconds": time.perf_counter() - t0}
        if not tuned.reached:
            log.warning("index %s reaches ANN recall@%d %.3f at best, below the target %.3f", built.key,
                        tuned.k, tuned.recall, tuned.target)
    return built


def evaluate_stage(built: BuiltIndex, vectors: np.ndarray, ids: Sequence[str], encode: Callable[[list[str]], np.ndarray],
                   judgments: Judgments | None, opts: BuildOptions, lexical: LexicalIndex | None = None) -> dict[str, Any]:
    """Metrics against judgments (none left, every judged query in training: NaN, which fails the
    gate). The gated `ann_recall@k` is measured on the held-out queries the index was NOT tuned
    on; `tune_ann_recall@k` is what tuning reached on its own part.
    With a lexical index, `modes` adds dense, lexical and hybrid (default fusion) side by side."""
    metrics: dict[str, Any] = {}
    if judgments is not None and judgments.queries:
        searcher = FaissCpuSearcher(built.index, vectors, built.params)
        metrics = evaluate(searcher, ids, encode, judgments, served_k=opts.served_k)
        if lexical is not None:
            modes = evaluate_modes(searcher, lexical, ids, encode, judgments, FusionSpec())
            keep = ("ndcg@10", "recall@10", "recall@100", "recall@500", "mrr@10")
            metrics["modes"] = {m: ({k: v[k] for k in keep} if m != "fusion" else v) for m, v in modes.items()}
    elif judgments is not None:
        metrics = evaluate_rankings([], [], judgments)
    if built.tuning:
        k = built.tuning["k"]
        metrics[f"ann_recall@{k}"] = (built.tuning.get("check") or {}).get("recall")
        metrics[f"tune_ann_recall@{k}"] = built.tuning["recall"]
    return metrics


@dataclass
class Indexed:
    """What `index_and_evaluate` hands to `write_version`."""
    built: BuiltIndex
    tune_vectors: np.ndarray  # (Q, d) the held-out query vectors the index was tuned with
    lexical_docs: list[str]
    lexical: LexicalIndex | None
    metrics: dict[str, Any]


def index_and_evaluate(vectors: np.ndarray, ids: Sequence[str], inputs: Inputs, model: Any, tokenizer: Any,
                       device: Any, opts: BuildOptions, timings: dict[str, float]) -> Indexed:
    """Tune queries -> faiss index -> lexical index -> metrics: the same for `build-index` and for
    `service index` over merged shards (so the staged result equals the single-process one)."""
    t = time.perf_counter()
    texts, source = tuning_queries(inputs, opts.tune_queries, opts.seed)
    qvecs = embed_queries(model, tokenizer, texts, device)  # (Q, d)
    built = index_stage(vectors, opts, qvecs, source)
    timings["index_s"] = time.perf_counter() - t
    t = time.perf_counter()
    docs = lexical_documents(inputs.catalog.listings)
    lexical = LexicalIndex.build(docs) if opts.lexical else None
    metrics = evaluate_stage(built, vectors, ids, lambda qs: embed_queries(model, tokenizer, qs, device),
                             inputs.judgments, opts, lexical)
    if inputs.judgments is not None:
        metrics["judged_queries_in_training_excluded"] = inputs.reports["judgments"]["in_training"]["queries"]
    timings["eval_s"] = time.perf_counter() - t
    return Indexed(built, qvecs, docs, lexical, metrics)


# The metrics whose NaN fails the gate (a mean over no query: nothing was measured).
GATED_METRIC = re.compile(r"^(?:recall|ndcg|mrr|ann_recall)@\d+$")


def gate(metrics: dict[str, Any], opts: BuildOptions) -> list[str]:
    """Reasons the version may not be published (empty: it may). A NaN metric fails, thresholds
    or not: e.g. judgments where no judged query kept a relevant listing measure nothing."""
    failures = [f"{key} is NaN: nothing measured it ({metrics.get('n_queries', 0)} judged queries with a "
                f"relevant listing)" for key, v in metrics.items()
                if GATED_METRIC.match(key) and isinstance(v, float) and math.isnan(v)]
    r100 = metrics.get("recall@100")
    if opts.min_recall_at_100 is not None and (r100 is None or not r100 >= opts.min_recall_at_100):
        failures.append(f"recall@100 {r100} < --min-recall-at-100 {opts.min_recall_at_100}")
    ann = next((v for k, v in metrics.items() if k.startswith("ann_recall@")), None)
    if opts.min_ann_recall is not None and (ann is None or not ann >= opts.min_ann_recall):
        failures.append(f"ann recall {ann} < --min-ann-recall {opts.min_ann_recall}")
    return failures


# ---------------------------------------------------------------------------------- writing a version


def write_version(store: ArtifactStore, opts: BuildOptions, *, save_weights: Callable[[Path], str],
                  tokenizer: Path, built: BuiltIndex, vectors: np.ndarray, records: Sequence[ListingRecord],
                  tune_vectors: np.ndarray | None, report: dict[str, Any], manifest: Manifest,
                  lexical_docs: Sequence[str] | None = None,
                  lexical_index: LexicalIndex | None = None, inherited_failures: Sequence[str] = (),
                  views: ViewVectors | None = None) -> BuildResult:
    """Stage every file, commit (checksums), then publish unless the gate fails (GateFailed).

    `save_weights(path) -> sha256` writes model.safetensors; `manifest` gets the model digest,
    index key, parameters and tuning, the gate's verdict, and the file checksums added. The lexical
    index (lexical.json + lexical.*, one document per row: `lexical_docs`, else `record_documents(records)`) is
    built unless `opts.lexical` is off (or taken as `lexical_index`, built from those documents
    already); its files are checksummed with the rest. `inherited_failures` fail the gate too (a
    version derived from one whose gate failed, service/build/update.py). `views`: the per-view vectors
    (view_vectors.npy (n, S, d) and slot_weights.npy (n, S), fp16) that /search explain reads."""
    version = opts.version or new_version_name()
    failures = [*inherited_failures, *gate(manifest.metrics, opts)]
    with store.stage(version) as staged:
        digest = save_weights(staged.path / "model.safetensors")
        (staged.path / "tokenizer.json").write_bytes(Path(tokenizer).read_bytes())
        save_index(built.index, str(staged.path / "index.faiss"))
        np.save(staged.path / "vectors.npy", np.asarray(vectors, dtype=np.float16))
        if tune_vectors is not None and len(tune_vectors):
            np.save(staged.path / "tune_queries.npy", np.asarray(tune_vectors, dtype=np.float16))
        write_listings(staged.path / "listings.sqlite", records)
        view_meta = None
        if views is not None:
            if views.vectors.shape[:1] != vectors.shape[:1] or views.weights.shape != views.vectors.shape[:2]:
                raise ValueError(f"view vectors {views.vectors.shape} / weights {views.weights.shape} do not match "
                                 f"{vectors.shape[0]} listings")
            np.save(staged.path / VIEW_VECTORS_FILE, np.asarray(views.vectors, dtype=np.float16))
            np.save(staged.path / SLOT_WEIGHTS_FILE, np.asarray(views.weights, dtype=np.float16))
            s_, d_ = views.vectors.shape[1:]
            view_meta = {"slots": list(views.slots), "files": [VIEW_VECTORS_FILE, SLOT_WEIGHTS_FILE],
                         "bytes_per_listing": int(s_ * d_ * 2 + s_ * 2)}
        lexical = None
        if opts.lexical:
            t0 = time.perf_counter()
            docs = list(lexical_docs) if lexical_docs is not None else record_documents(records)
            if len(docs) != int(vectors.shape[0]):
                raise ValueError(f"lexical documents: {len(docs)} for {vectors.shape[0]} vectors")
            lex = lexical_index or LexicalIndex.build(docs)
            lex.save(staged.path, docs)  # lexical.json + lexical.* beside index.faiss
            lexical = {**lex.describe(), "documents": "listings" if lexical_docs is not None else "metadata",
                       "build_seconds": round(time.perf_counter() - t0, 3)}
        (staged.path / "report.json").write_text(json.dumps(report, indent=2, default=float))
        manifest = dataclasses.replace(
            manifest, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), model_digest=digest,
            n_items=int(vectors.shape[0]), dim=int(vectors.shape[1]), index_key=built.key, index_params=built.params,
            index_tuning=built.tuning, gate={"passed": not failures, "failures": failures}, lexical=lexical,
            view_vectors=view_meta)
        path = store.commit(staged, manifest)
    stored = store.manifest(version)
    if failures:
        raise GateFailed(f"version {version} written to {path} but NOT published: " + "; ".join(failures))
    published = False
    if opts.publish:
        store.publish(version)
        published = True
        if opts.keep_versions:
            store.retain(opts.keep_versions)
    return BuildResult(version, path, stored, published)


def catalog_summary(opts: BuildOptions, catalog: Catalog) -> dict[str, Any]:
    return {"path": str(opts.catalog), "sha256": catalog.report.sha256, "rows": catalog.report.n_rows,
            "rejected": len(catalog.report.rejected), "truncated": dict(sorted(catalog.report.truncated.items()))}


# ---------------------------------------------------------------------------------- the build


def build_index(opts: BuildOptions) -> BuildResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    device = resolve_device(opts.device)
    inputs = load_inputs(opts)
    timings["load_s"] = time.perf_counter() - started
    log.info("catalog: %d listings loaded, %d rejected", len(inputs.catalog), len(inputs.catalog.report.rejected))

    t = time.perf_counter()
    icfg = ImageConfig(weights_path=opts.image_weights)
    features, ok, image_report = featurize_images(inputs.views, icfg, device, image_cache_dir(opts), opts.progress)
    inputs.reports["images"] = image_report
    timings["images_s"] = time.perf_counter() - t

    model, tokenizer, data, trunk, train_info = train_stage(inputs, features, ok, opts, device)
    inputs.reports["encoder_truncated"] = encoder_cuts(inputs.views, tokenizer, model.cfg.text)
    timings["train_s"] = train_info.pop("train_seconds")
    timings["trunk_s"] = train_info.pop("trunk_seconds")

    t = time.perf_counter()
    vectors, crossview, views = embed_stage(model, tokenizer, data, device, trunk, opts)
    timings["embed_s"] = time.perf_counter() - t

    done = index_and_evaluate(vectors, data.views.ids, inputs, model, tokenizer, device, opts, timings)
    metrics = done.metrics
    if crossview:
        metrics["cross_view"] = crossview
    timings["total_s"] = time.perf_counter() - started

    manifest = Manifest(
        objective=opts.objective, model_config=dataclasses.asdict(model.cfg),
        view_weights=view_weights(model.fusion, model.cfg.index_views), train_config=train_info["train_config"],
        text_base_digest=text_weights_digest(opts.text_weights or None),
        image_backbone_digest=backbone_digest(icfg) if data.views.image_paths else None,
        catalog=catalog_summary(opts, inputs.catalog), metrics=metrics, modality_gap=train_info["modality_gap"],
        timings=timings)
    report = {"inputs": inputs.reports, "training": train_info, "timings": timings, "metrics": metrics}
    return write_version(
        ArtifactStore(opts.artifacts), opts, save_weights=lambda p: save_model(model, p),
        tokenizer=resolve_weights_dir(opts.text_weights or None) / "tokenizer.json", built=done.built,
        vectors=vectors, records=listing_records(inputs.catalog.listings), tune_vectors=done.tune_vectors,
        report=report, manifest=manifest, lexical_docs=done.lexical_docs, lexical_index=done.lexical,
        views=views,
    )


PATH_OPTIONS = ("catalog", "artifacts", "interactions", "judgments", "images_root", "image_cache",
                "validation_judgments", "negatives")


def build_options(**kwargs: Any) -> BuildOptions:
    """BuildOptions from CLI values, turning path strings into Paths."""
    for key in PATH_OPTIONS:
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    return BuildOptions(**kwargs)


def options_to_dict(opts: BuildOptions) -> dict[str, Any]:
    """JSON-ready options (paths as strings), the inverse of `build_options(**d)`."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}
