"""Held-out queries scored after every epoch: early stopping, and the hard negatives of the next one.

A `ValidationSet` is queries with their relevant listings, never trained on: either a judgments
file (`--validation-judgments`) or a slice of the shopper queries held out of the interactions by
a stable hash of the normalised query text (`holdout_queries`, the same query always on the same
side). After each epoch `score_epoch` embeds the whole catalog with the current towers (through
the trunk cache: only the trainable top layers run), ranks it exactly for every validation query
and returns nDCG@10 / Recall@10 / Recall@100; `EarlyStopping` keeps a copy of the best epoch's
weights and says when `patience` epochs in a row have not beaten it. The catalog vectors are handed
on, so mining the next epoch's hard negatives (model/train/negatives.py) costs no second embedding.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from model.eval.metrics import ndcg_at_k, recall_at_k

# The metric early stopping follows (the top of the ranking, where a shopper looks).
MONITOR = "ndcg@10"
# A validation set smaller than this is too noisy to stop on: the build says so and refuses.
MIN_VALIDATION_QUERIES = 20


def normalise(query: str) -> str:
    return " ".join(query.lower().split())


def query_unit(query: str) -> float:
    """A stable number in [0, 1) per normalised query text (machine and file-order free). Salted:
    a test/train split made upstream by the plain sha1 of the query (the sample catalog's, the
    homedepot bench's) would otherwise leave no query below the fraction."""
    digest = hashlib.sha1(b"validation\0" + normalise(query).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2**32


@dataclass
class ValidationSet:
    queries: list[str]
    relevant: list[dict[str, float]]  # per query: listing id -> gain (> 0)
    source: str = ""

    def __post_init__(self) -> None:
        keep = [i for i, rel in enumerate(self.relevant) if rel]
        self.queries = [self.queries[i] for i in keep]
        self.relevant = [self.relevant[i] for i in keep]

    def __len__(self) -> int:
        return len(self.queries)

    @classmethod
    def from_judgments(cls, judgments: Any, source: str) -> ValidationSet:
        """model.data.interactions.Judgments -> the queries with at least one relevant listing."""
        qs = judgments.queries
        return cls(qs, [judgments.relevant(q) for q in qs], source)


def holdout_queries(interactions: Sequence[Any], fraction: float) -> tuple[list[Any], ValidationSet]:
    """Split interactions by query: (the training ones, the held-out queries as a ValidationSet).

    A held-out query's relevant listings are the ones it interacted with, its gain the summed
    interaction weight. Two spellings of one query ("Angle Bracket", "angle  bracket") fall on the
    same side."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction: must be within (0, 1), got {fraction}")
    train: list[Any] = []
    held: dict[str, dict[str, float]] = {}
    for it in interactions:
        q = normalise(it.query)
        if query_unit(q) < fraction:
            gains = held.setdefault(q, {})
            gains[it.item_id] = gains.get(it.item_id, 0.0) + float(it.weight)
        else:
            train.append(it)
    queries = list(held)
    return train, ValidationSet(queries, [held[q] for q in queries],
                                f"{fraction:.0%} of the interaction queries, held out by query hash")


def exact_top(queries: np.ndarray, items: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """(m, d) x (n, d) unit vectors -> (m, min(k, n)) item rows by descending dot product (ties: lower row)."""
    k = min(k, len(items))
    out = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        s = queries[start:start + chunk] @ items.T  # (c, n)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(s.shape[1]), (len(s), 1))
        ps = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)  # by score, then by row
        out[start:start + len(s)] = np.take_along_axis(part, order, axis=1)
    return out


def validation_metrics(ranked_rows: np.ndarray, ids: Sequence[str], vs: ValidationSet) -> dict[str, float]:
    ranked = [[ids[int(r)] for r in row] for row in ranked_rows]
    return {"ndcg@10": ndcg_at_k(ranked, vs.relevant, 10), "recall@10": recall_at_k(ranked, vs.relevant, 10),
            "recall@100": recall_at_k(ranked, vs.relevant, 100), "queries": len(vs)}


@dataclass
class EarlyStopping:
    """Tracks the monitored metric per epoch; keeps the best epoch's weights (on the CPU)."""

    patience: int
    monitor: str = MONITOR
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    _state: dict[str, dict[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience: must be >= 1 epoch, got {self.patience}")

    def update(self, epoch: int, metrics: Mapping[str, float], modules: Mapping[str, nn.Module]) -> bool:
        """Record epoch `epoch`'s metrics; -> True when training should stop now."""
        value = float(metrics[self.monitor])
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
        if value > self.best:  # strictly better: a tie keeps the earlier, shorter-trained epoch
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self._state = {name: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}
                           for name, m in modules.items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, modules: Mapping[str, nn.Module]) -> None:
        """Load the best epoch's weights back (nothing to do before the first update)."""
        if self._state is None:
            return
        for name, m in modules.items():
            m.load_state_dict(copy.deepcopy(self._state[name]))

    def to_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "patience": self.patience, "best_epoch": self.best_epoch,
                "best": self.best, "epochs_run": len(self.history), "history": self.history}
