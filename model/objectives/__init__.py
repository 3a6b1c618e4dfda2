"""Training objectives of one model family: `--objective ft|clip|oat|pmrl|ft-allpairs`.

Each objective is a small nn.Module whose `forward` takes a `ViewBatch` of plain tensors, so it is
testable without an encoder. `REGISTRY` maps each name of `model.config.OBJECTIVES` (the names a
config, and the CLI's `--objective`, may take) to its factory; `make_objective` builds one by name.
"""

from __future__ import annotations

from collections.abc import Callable

from model.config import OBJECTIVES, TrainConfig
from model.objectives.base import Objective, ViewBatch


# Each factory imports its module when called, so building one objective loads only its code.
def _ft(dim: int, cfg: TrainConfig) -> Objective:
    from model.objectives.ft import FactorizedTransport

    return FactorizedTransport(dim, cfg)


def _clip(dim: int, cfg: TrainConfig) -> Objective:
    from model.objectives.clip import ClipBaseline

    return ClipBaseline(cfg.cross_view_weight)


def _oat(dim: int, cfg: TrainConfig) -> Objective:
    from model.objectives.oat import OptimalAdaptiveTransport

    return OptimalAdaptiveTransport(dim, cfg)


def _pmrl(dim: int, cfg: TrainConfig) -> Objective:
    from model.objectives.pmrl import PMRL

    return PMRL(cfg)


def _ft_allpairs(dim: int, cfg: TrainConfig) -> Objective:
    from model.objectives.allpairs import FactorizedTransportAllPairs

    return FactorizedTransportAllPairs(dim, cfg)


REGISTRY: dict[str, Callable[[int, TrainConfig], Objective]] = {
    "ft": _ft, "clip": _clip, "oat": _oat, "pmrl": _pmrl, "ft-allpairs": _ft_allpairs,
}
if tuple(REGISTRY) != OBJECTIVES:  # one list of names: a new objective is registered in both places or fails here
    raise ImportError(f"model.objectives.REGISTRY {tuple(REGISTRY)} != model.config.OBJECTIVES {OBJECTIVES}")


def make_objective(name: str, dim: int, cfg: TrainConfig) -> Objective:
    factory = REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"objective: {name!r} is not one of {', '.join(OBJECTIVES)}")
    return factory(dim, cfg)


__all__ = ["OBJECTIVES", "REGISTRY", "Objective", "ViewBatch", "make_objective"]
