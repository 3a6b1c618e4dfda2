"""The training loop: AdamW, warmup + cosine, AMP on CUDA, gradient clipping, seeds, early stopping.

The frozen bottom of MiniLM runs once per text (`TrunkCache`); each step runs only the trainable
top layers on the texts the objective asked for, and the image heads on cached photo features.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from model.config import IMAGE_VIEWS, TEXT_VIEWS, TITLE, TrainConfig
from model.data.views import KIND_QUERY, KIND_TITLE
from model.embed import embed_listings, embed_query_rows
from model.objectives import Objective, ViewBatch, make_objective
from model.towers import TwoTower
from model.train.distributed import DistContext
from model.train.negatives import mine_hard_negatives
from model.train.pairs import TrainingSet
from model.train.trunk import TrunkCache
from model.train.validation import EarlyStopping, ValidationSet, exact_top, validation_metrics

# Token-length buckets of the training step's text batches (the last one catches everything).
log = logging.getLogger("model.train.trainer")
LENGTH_BUCKETS = (16, 32, 64, 1 << 30)
# Negatives join each rank's own softmax; under torchrun the gathered batch would not carry them.
NEGATIVES_UNDER_TORCHRUN = ("--negatives: not supported under torchrun yet (a rank's negatives would not join the "
                            "gathered batch); train in one process or leave --negatives out")


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AMX or AVX512-BF16): autocast then pays
    (measured 4x on a 384x1536 linear, 1.6x on a whole training step; docs/PERFORMANCE.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def autocast_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def text_budgets(model: TwoTower, kinds: list[int]) -> list[int]:
    t = model.cfg.text
    return [t.max_query_tokens if k == KIND_QUERY else t.max_title_tokens if k == KIND_TITLE else t.max_text_tokens for k in kinds]


def build_trunk(model: TwoTower, tokenizer: Any, data: TrainingSet, device: torch.device, progress: bool) -> TrunkCache:
    n_frozen = model.n_layers - model.cfg.text.trainable_layers
    return TrunkCache.build(
        model.encoder, tokenizer, data.texts.texts, text_budgets(model, data.texts.kinds),
        n_frozen=n_frozen, device=device, progress=progress,
    )


@dataclass
class TrainHistory:
    """Per-epoch means of each loss part, the wall time, and optional per-epoch eval metrics."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    items_per_s: float = 0.0
    steps: int = 0
    encoded_slots: int = 0  # slots actually encoded, summed over steps (cost accounting)
    encoded_tokens: int = 0
    # With early stopping: the monitored metric per epoch, the best epoch (whose weights were kept)
    early_stopping: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "items_per_s": self.items_per_s, "steps": self.steps,
                "encoded_slots": self.encoded_slots, "encoded_tokens": self.encoded_tokens,
                "early_stopping": self.early_stopping}


class Trainer:
    """Holds the model, objective, optimiser and data for one run; `fit()` trains."""

    def __init__(self, model: TwoTower, data: TrainingSet, trunk: TrunkCache, cfg: TrainConfig, device: torch.device,
                 dist: DistContext | None = None):
        self.model, self.data, self.trunk, self.cfg, self.device = model, data, trunk, cfg, device
        self.dist = dist or DistContext()
        if cfg.hard_negatives and self.dist.enabled:
            raise ValueError("hard_negatives: not supported under torchrun yet (each rank would mine its own); "
                             "train in one process or leave --hard-negatives at 0")
        if data.negatives and self.dist.enabled:
            raise ValueError(NEGATIVES_UNDER_TORCHRUN)
        self.objective: Objective = make_objective(cfg.objective, model.cfg.tower.dim, cfg).to(device)
        self.model.to(device)
        self.model.encoder.freeze_bottom(model.cfg.text.trainable_layers)
        # One module for the step so DistributedDataParallel sees (and averages) every parameter.
        self.step_module: nn.Module = _StepModule(self)
        if self.dist.enabled:
            if cfg.batch_size % self.dist.world:
                raise ValueError(f"batch_size: {cfg.batch_size} does not split over {self.dist.world} ranks")
            ids = [device.index] if device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=ids, find_unused_parameters=True)
        self.n_frozen = model.n_layers - model.cfg.text.trainable_layers
        self.slot_types = torch.tensor(data.slots.types, device=device)
        self.features = torch.from_numpy(data.image_features).to(device)  # (n_images, F)
        # Same seed on every rank: the epoch order and the view-sampling draws are global.
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.np_rng = np.random.default_rng(cfg.seed)
        self.optimizer = torch.optim.AdamW(self.param_groups(), weight_decay=cfg.weight_decay)
        n_pairs = len(data.pair_item)
        # Across ranks every global batch must split evenly: the last partial batch is dropped.
        per_epoch = n_pairs // cfg.batch_size if self.dist.enabled else math.ceil(n_pairs / cfg.batch_size)
        self.steps_per_epoch = max(1, per_epoch)
        self.total_steps = max(1, self.steps_per_epoch * cfg.epochs)
        warmup = max(1, int(cfg.warmup_frac * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / self.total_steps)))
        )
        self.epoch = 0
        self.history = TrainHistory()
        # Mined hard negatives per pair (P, N) listing rows, -1 = none; None until mined.
        self.pair_negatives: np.ndarray | None = None
        self.query_rows, pair_q = np.unique(data.pair_query, return_inverse=True)  # (Q,), (P,) -> q
        self.pair_q = pair_q.reshape(-1)
        self.positives: list[set[int]] = [set() for _ in self.query_rows]
        for q, item in zip(self.pair_q, data.pair_item, strict=True):
            self.positives[int(q)].add(int(item))
        # each listing's title text row (identical titles share one): a duplicate of a positive
        # is as relevant as the positive, so it is never a negative of that query either
        self.title_rows = data.slots.rows[:, data.slots.types.index(TITLE)]  # (n,)
        self.positive_titles = [{int(self.title_rows[i]) for i in pos if self.title_rows[i] >= 0}
                                for pos in self.positives]
        # data.negatives (filtered already: model/train/pairs.py) laid out once by training query:
        # query q's judged negatives are judged_flat[judged_start[q]:judged_start[q] + judged_len[q]]
        per_q = [data.negatives.get(int(r), []) for r in self.query_rows]
        self.judged_len = np.array([len(v) for v in per_q], dtype=np.int64)  # (Q,)
        self.judged_start = np.cumsum(self.judged_len) - self.judged_len  # (Q,)
        self.judged_flat = np.array([i for v in per_q for i in v], dtype=np.int64)  # (sum len,)

    def draw_judged(self) -> np.ndarray | None:
        """(P, 1) this epoch's judged negative of each pair, drawn uniformly among its query's;
        -1 where the query has none. None when no query has any."""
        if not len(self.judged_flat):
            return None
        n = self.judged_len[self.pair_q]  # (P,)
        pick = (self.np_rng.random(len(n)) * np.maximum(n, 1)).astype(np.int64)  # (P,) in [0, n)
        at = np.minimum(self.judged_start[self.pair_q] + pick, len(self.judged_flat) - 1)
        return np.where(n > 0, self.judged_flat[at], -1)[:, None]

    def epoch_negatives(self, item_vecs: np.ndarray | None) -> dict[str, float]:
        """Set this epoch's negatives of every pair: one judged negative (when the query has any)
        and cfg.hard_negatives mined ones, as columns of `pair_negatives`."""
        info = self.mine_negatives(item_vecs) if self.cfg.hard_negatives else {}
        mined = self.pair_negatives if self.cfg.hard_negatives else None
        judged = self.draw_judged()
        if judged is not None:
            info["judged_negatives"] = float((judged >= 0).sum())
        cols = [c for c in (judged, mined) if c is not None]
        self.pair_negatives = np.concatenate(cols, axis=1) if cols else None
        return info

    def param_groups(self) -> list[dict[str, Any]]:
        enc = [p for p in self.model.encoder.parameters() if p.requires_grad]
        enc_ids = {id(p) for p in enc}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in enc_ids]
        rest += [p for p in self.objective.parameters() if p.requires_grad]
        decay = [p for p in rest if p.ndim >= 2]
        no_decay = [p for p in rest if p.ndim < 2]
        groups = [
            {"params": decay, "lr": self.cfg.lr},
            {"params": no_decay, "lr": self.cfg.lr, "weight_decay": 0.0},
        ]
        if enc:
            groups.append({"params": enc, "lr": self.cfg.lr_encoder})
        return groups

    # ------------------------------------------------------------------ one step

    def encode_texts(self, rows: Tensor) -> Tensor:
        """Text rows (N,) -> pooled (N, H) through the trainable top layers.

        Rows are grouped by token length (LENGTH_BUCKETS) so an 8-token query is never padded to a
        120-token description: on CPU that padding was most of the step's cost."""
        rows = rows.cpu()
        lens = self.trunk.lengths[self.trunk.row[rows]]  # (N,)
        order = torch.argsort(lens, stable=True)  # (N,)
        chunks, lo = [], 0
        for bound in LENGTH_BUCKETS:
            hi = int(torch.searchsorted(lens[order], bound, right=True))
            if hi > lo:
                hidden, mask = self.trunk.gather(rows[order[lo:hi]], device=self.device)  # (n, T, H)
                self.history.encoded_tokens += int(mask.sum())
                chunks.append(self.model.text_pooled(hidden, mask, self.n_frozen))  # (n, H)
            lo = hi
        pooled_sorted = torch.cat(chunks)  # (N, H) in length order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return pooled_sorted[inverse.to(self.device)]

    def text_slots(self, sel: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) bool slots -> (listing, slot) positions of its TEXT slots, the order the pooled
        texts handed to `fill_views` must follow."""
        is_text = torch.isin(self.slot_types, torch.tensor(TEXT_VIEWS, device=self.device))  # (S,)
        return (sel & is_text).nonzero(as_tuple=True)

    def fill_views(self, out: Tensor, sel: Tensor, rows: Tensor, tb: Tensor, ts: Tensor,
                   text_pooled: Tensor | None) -> None:
        """Write the unit view embeddings of the slots `sel` (B, S) into out (B, S, d): text slots
        (tb, ts) from `text_pooled` (Nt, H) through their view's projection, photo slots from the
        cached image features through theirs."""
        if text_pooled is not None:
            for v in TEXT_VIEWS:
                m = self.slot_types[ts] == v
                if bool(m.any()):
                    out[tb[m], ts[m]] = self.model.project_text(v, text_pooled[m]).to(out.dtype)
        for v in IMAGE_VIEWS:
            sel_b, sel_s = (sel & (self.slot_types == v)).nonzero(as_tuple=True)
            if len(sel_b):
                out[sel_b, sel_s] = self.model.project_image(v, self.features[rows[sel_b, sel_s]]).to(out.dtype)

    def encode_items(self, items: np.ndarray) -> Tensor:
        """Listings (M,) -> (M, d) what the objective contrasts a query with (`query_target`): the
        fused vector over every present indexed view, exactly as the index holds it, or the title
        view alone; differentiable (the mined negatives' side of the loss trains the item tower)."""
        d = self.data
        present = torch.from_numpy(d.slots.present[items]).to(self.device)  # (M, S)
        rows = torch.from_numpy(d.slots.rows[items]).to(self.device)  # (M, S)
        allowed = torch.zeros(len(self.slot_types), dtype=torch.bool, device=self.device)
        if self.objective.query_target == "title":
            allowed |= self.slot_types == TITLE
        else:
            allowed |= self.model.index_views.to(self.device)[self.slot_types]
        present = present & allowed  # (M, S)
        M, S = present.shape
        z = torch.zeros(M, S, self.model.cfg.tower.dim, device=self.device)
        tb, ts = self.text_slots(present)
        pooled = self.encode_texts(rows[tb, ts]) if len(tb) else None  # (Nt, H)
        self.fill_views(z, present, rows, tb, ts, pooled)
        if self.objective.query_target == "title":
            return z[:, int((self.slot_types == TITLE).nonzero()[0])]  # (M, d) unit already
        return self.model.fuse(z, present, self.slot_types)  # (M, d) unit

    def batch_negatives(self, idx: np.ndarray) -> tuple[Tensor, Tensor] | None:
        """This batch's mined negatives, pooled: every row's softmax holds every row's negatives ->
        ((M, d) vectors, (B, M) True where negative m is one of row i's positives or has the exact
        title of one), or None when none were mined."""
        if self.pair_negatives is None:
            return None
        neg = self.pair_negatives[idx]  # (B, N)
        items = np.unique(neg[neg >= 0])  # (M,)
        if not len(items):
            return None
        titles = self.title_rows[items]  # (M,)
        mask = np.array([[int(m) in self.positives[int(q)] or int(t) in self.positive_titles[int(q)]
                          for m, t in zip(items, titles, strict=True)] for q in self.pair_q[idx]], dtype=bool)
        self.history.encoded_slots += int(self.data.slots.present[items].sum())
        return self.encode_items(items), torch.from_numpy(mask).to(self.device)

    def mine_negatives(self, item_vecs: np.ndarray | None = None) -> dict[str, float]:
        """Rank the catalog for every training query with the towers as they are; draw each pair's
        negatives (model/train/negatives.py). `item_vecs`: this epoch's catalog vectors if already made."""
        t0 = time.perf_counter()
        if item_vecs is None:
            item_vecs = self.catalog_vectors()
        q = embed_query_rows(self.model, self.data.texts, self.query_rows, self.device, self.trunk)  # (Q, d)
        c = self.cfg
        per_query = mine_hard_negatives(q, item_vecs, self.positives, self.title_rows, c.hard_negatives,
                                        c.hard_negative_depth, c.hard_negative_skip, self.np_rng)  # (Q, N)
        self.pair_negatives = per_query[self.pair_q]  # (P, N)
        return {"mined_negatives": float((per_query >= 0).sum()), "mine_seconds": time.perf_counter() - t0}

    def catalog_vectors(self) -> np.ndarray:
        """(n, d) the whole catalog's fused vectors now (trunk cache: only the top layers run)."""
        d = self.data
        return embed_listings(self.model, None, d.views, d.slots, d.image_features, self.device, trunk=self.trunk)

    def validate(self, vs: ValidationSet, rows: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """Score the held-out queries (text rows `rows` in the trunk) over the whole catalog."""
        t0 = time.perf_counter()
        items = self.catalog_vectors()  # (n, d)
        q = embed_query_rows(self.model, self.data.texts, rows, self.device, self.trunk)  # (m, d)
        metrics = validation_metrics(exact_top(q, items, 100), self.data.views.ids, vs)
        return metrics | {"seconds": time.perf_counter() - t0}, items

    def make_batch(self, idx: np.ndarray, uniform: Tensor) -> tuple[ViewBatch, Tensor]:
        """Encode this process's pairs -> (local ViewBatch with raw pair weights, item ids)."""
        d = self.data
        items = torch.from_numpy(d.pair_item[idx]).to(self.device)  # (B,)
        present = torch.from_numpy(d.slots.present[d.pair_item[idx]]).to(self.device)  # (B, S)
        rows = torch.from_numpy(d.slots.rows[d.pair_item[idx]]).to(self.device)  # (B, S)
        weights = self.model.fusion.slot_weights(present, self.slot_types)  # (B, S) differentiable
        encode, aux = self.objective.select_views(present, weights, self.slot_types, uniform.to(self.device))
        B, S = present.shape
        self.history.encoded_slots += int(encode.sum()) + B
        # Texts: the queries and every encoded text slot go through the top layers in ONE call.
        tb, ts = self.text_slots(encode)
        q_rows = torch.from_numpy(d.pair_query[idx]).to(self.device)  # (B,)
        pooled = self.encode_texts(torch.cat([q_rows, rows[tb, ts]]))  # (B + Nt, H)
        query = self.model.project_query(pooled[:B])  # (B, d)
        views = torch.zeros(B, S, self.model.cfg.tower.dim, device=self.device, dtype=query.dtype)
        self.fill_views(views, encode, rows, tb, ts, pooled[B:])
        pw = torch.from_numpy(d.pair_weight[idx]).to(self.device)
        batch = ViewBatch(
            query=query, views=views, encoded=encode, present=present, weights=weights,
            slot_types=self.slot_types, aux=aux, same=torch.zeros(0, 0, dtype=torch.bool),
            pair_weight=pw, logit_scale=self.model.scale(),
        )
        mined = self.batch_negatives(idx)
        if mined is not None:
            batch.negatives, batch.negative_mask = mined
        return batch, items

    def step(self, idx: np.ndarray) -> dict[str, float]:
        """One optimiser step on the GLOBAL batch `idx` (each rank encodes its own slice)."""
        self.model.train()
        self.objective.train()
        uniform = torch.rand(len(idx), generator=self.gen)  # (B,) one draw per pair, same on all ranks
        local = self.dist.local_slice(len(idx)) if self.dist.enabled else slice(None)
        use_amp = autocast_enabled(self.cfg, self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, parts, scale = self.step_module(idx[local], uniform[local])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {self.history.steps}: {parts}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.history.steps += 1
        return {"loss": float(loss.detach()), **parts, "scale": float(scale.detach())}

    # ------------------------------------------------------------------ epochs

    def epoch_order(self) -> np.ndarray:
        """A permutation of the pairs; consecutive chunks of batch_size are the batches."""
        return self.np_rng.permutation(len(self.data.pair_item))

    def fit(
        self,
        progress: bool = False,
        on_epoch: Callable[[int, TwoTower], dict[str, float]] | None = None,
        validation: ValidationSet | None = None,
        validation_rows: np.ndarray | None = None,
    ) -> TrainHistory:
        """Train up to cfg.epochs. With `validation` (its queries' text rows `validation_rows` in
        the trunk cache) every epoch is scored on it; with cfg.patience > 0 training stops when the
        validation nDCG@10 has not improved for `patience` epochs, and the best epoch's weights are
        loaded back. With cfg.hard_negatives each epoch starts by mining them (model/train/negatives.py),
        and with judged negatives (data.negatives) by drawing one per pair."""
        if self.cfg.patience and validation is None:
            raise ValueError("patience: early stopping needs validation queries (held-out interactions or "
                             "--validation-judgments)")
        if validation is not None and (validation_rows is None or len(validation_rows) != len(validation)):
            raise ValueError("validation: needs one trunk text row per validation query")
        early = EarlyStopping(self.cfg.patience) if self.cfg.patience else None
        modules = {"model": self.model, "objective": self.objective}
        bar = _progress(self.total_steps, progress, initial=self.epoch * self.steps_per_epoch)
        start, n_items = time.perf_counter(), 0
        item_vecs: np.ndarray | None = None  # the catalog as the last validation embedded it
        while self.epoch < self.cfg.epochs:
            mined = self.epoch_negatives(item_vecs)
            order, sums = self.epoch_order(), {}
            for k in range(self.steps_per_epoch):
                idx = order[k * self.cfg.batch_size:(k + 1) * self.cfg.batch_size]
                if len(idx) < 2:
                    continue
                parts = self.step(idx)
                n_items += len(idx)
                for key, val in parts.items():
                    sums[key] = sums.get(key, 0.0) + val
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()}, refresh=False)
            self.epoch += 1
            record = {k: v / self.steps_per_epoch for k, v in sums.items()} | {"epoch": self.epoch} | mined
            if on_epoch is not None:
                record |= on_epoch(self.epoch, self.model)
            stop = False
            if validation is not None and self.dist.is_main:
                metrics, item_vecs = self.validate(validation, validation_rows)
                record |= {f"val_{k}": v for k, v in metrics.items()}
                if early is not None:
                    stop = early.update(self.epoch, metrics, modules)
            self.history.epochs.append(record)
            if self.dist.is_main:
                log.info("epoch %d/%d: loss %.4f%s (%.0f s so far)", self.epoch, self.cfg.epochs, record.get("loss", 0.0),
                         "".join(f", {k} {record[k]:.4f}" for k in ("val_ndcg@10", "val_recall@10") if k in record),
                         time.perf_counter() - start)
            if self.dist.broadcast(stop):  # every rank stops at the same epoch
                break
        if early is not None and self.dist.is_main:
            early.restore(modules)  # rank 0 alone writes the model
            self.history.early_stopping = early.to_dict()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - start
        self.history.items_per_s = n_items / elapsed if elapsed > 0 and n_items else 0.0
        return self.history


class _StepModule(nn.Module):
    """Encode the local pairs, gather the global batch, compute the objective's loss."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.model, self.objective = trainer.model, trainer.objective
        self._trainer = [trainer]  # a list: not registered as a submodule

    def forward(self, idx: np.ndarray, uniform: Tensor) -> tuple[Tensor, dict[str, float], Tensor]:
        trainer = self._trainer[0]
        local, ids = trainer.make_batch(idx, uniform)
        batch = trainer.dist.gather_batch(local, ids)
        loss, parts = self.objective(batch)
        return loss, parts, batch.logit_scale


def _progress(total: int, enabled: bool, initial: int = 0) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the train extra
        return None
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
