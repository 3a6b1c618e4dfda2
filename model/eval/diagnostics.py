"""The modality-gap diagnostic (docs/METHODS.md, after Xu & Leiva 2025).

For each pair of view types, over samples of their unit embeddings: the mean cosine over all cross
pairs (= the dot product of the two clouds' means) and the Wasserstein-2 distance
between the clouds (how far apart the distributions sit: the modality gap). W2 is exact on
equal-size uniform samples (an assignment problem), cost = squared Euclidean = 2 - 2 cos.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment


def wasserstein2(x: np.ndarray, y: np.ndarray, max_points: int = 256, seed: int = 0) -> float:
    """Exact W2 between uniform samples of two clouds (n, d), (m, d) of equal sample size."""
    rng = np.random.default_rng(seed)
    k = min(len(x), len(y), max_points)
    if k == 0:
        return float("nan")
    xs = x[rng.choice(len(x), k, replace=False)]
    ys = y[rng.choice(len(y), k, replace=False)]
    cost = ((xs[:, None, :] - ys[None, :, :]) ** 2).sum(-1)  # (k, k)
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


def modality_gap(clouds: dict[str, np.ndarray], max_points: int = 256, seed: int = 0) -> dict[str, dict[str, float]]:
    """{ "title~image": {"wasserstein": W2, "mean_cosine": mean over all cross pairs,
    "centroid_distance": |mean_x - mean_y|} } for every pair of view types present."""
    out: dict[str, dict[str, float]] = {}
    for a, b in itertools.combinations(sorted(clouds), 2):
        x, y = clouds[a], clouds[b]
        if len(x) == 0 or len(y) == 0:
            continue
        out[f"{a}~{b}"] = {
            "wasserstein": wasserstein2(x, y, max_points, seed),
            "mean_cosine": float(x.mean(0) @ y.mean(0)),
            "centroid_distance": float(np.linalg.norm(x.mean(0) - y.mean(0))),
            "n": float(min(len(x), len(y), max_points)),
        }
    return out
