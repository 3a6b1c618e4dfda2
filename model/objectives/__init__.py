"""Training objectives of one model family: `--objective ft|clip|oat|pmrl|ft-allpairs`.

Each objective is a small nn.Module whose `forward` takes a `ViewBatch` of plain tensors, so it is
testable without an encoder. `make_objective` builds one by name.
"""

from __future__ import annotations

from model.config import TrainConfig
from model.objectives.base import Objective, ViewBatch


def make_objective(name: str, dim: int, cfg: TrainConfig) -> Objective:
    if name == "ft":
        from model.objectives.ft import FactorizedTransport

        return FactorizedTransport(dim, cfg)
    if name == "ft-allpairs":
        from model.objectives.allpairs import FactorizedTransportAllPairs

        return FactorizedTransportAllPairs(dim, cfg)
    if name == "clip":
        from model.objectives.clip import ClipBaseline

        return ClipBaseline(cfg.cross_view_weight)
    if name == "oat":
        from model.objectives.oat import OptimalAdaptiveTransport

        return OptimalAdaptiveTransport(dim, cfg)
    if name == "pmrl":
        from model.objectives.pmrl import PMRL

        return PMRL(cfg)
    raise ValueError(f"objective: {name!r} is not one of ft, clip, oat, pmrl, ft-allpairs")


__all__ = ["Objective", "ViewBatch", "make_objective"]
