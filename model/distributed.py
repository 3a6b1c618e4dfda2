"""Data-parallel training across processes, GPUs and nodes with torch.distributed (`torchrun`).

Each rank encodes its slice of the GLOBAL batch; the slices are all-gathered WITH gradients
(torch.distributed.nn.functional.all_gather), so the contrastive and transport losses see every
negative of the global batch, and every rank computes the same global loss. DistributedDataParallel
then averages parameter gradients: all_gather's backward sums the identical per-rank gradients of
each slice (x world) and DDP divides by world, which gives exactly the single-process gradient of
the global batch. View sampling draws one uniform per pair from the run's seed for the global batch
on every rank (model/objectives/ft.py), so it does not depend on which rank holds a pair. Only rank
0 writes checkpoints and artifacts.

Launch:  torchrun --nproc_per_node=N [--nnodes ... --rdzv-endpoint ...] $(which service) train ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor

from model.objectives import ViewBatch
from model.objectives.contrastive import same_from_ids


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of n pairs (n % world == 0)."""
        if n % self.world:
            raise ValueError(f"global batch of {n} pairs does not split over {self.world} ranks")
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather_batch(self, b: ViewBatch, ids: Tensor) -> ViewBatch:
        """Local ViewBatch + item ids -> the global batch (differentiable where it must be)."""
        if not self.enabled:
            return replace(b, same=same_from_ids(ids), pair_weight=b.pair_weight / b.pair_weight.mean())
        from torch.distributed.nn.functional import all_gather as all_gather_grad

        def cat_grad(t: Tensor) -> Tensor:
            return torch.cat(all_gather_grad(t.contiguous()))

        def cat(t: Tensor) -> Tensor:
            parts = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(parts, t.contiguous())
            return torch.cat(parts)

        pw = cat(b.pair_weight)
        return replace(
            b, query=cat_grad(b.query), views=cat_grad(b.views), weights=cat_grad(b.weights),
            encoded=cat(b.encoded), present=cat(b.present), aux=cat(b.aux),
            same=same_from_ids(cat(ids)), pair_weight=pw / pw.mean(),
        )

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> DistContext:
    """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); a single process otherwise.
    NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world=world, local_rank=local)


def device_for(ctx: DistContext, requested: str) -> torch.device:
    """One GPU per local rank under torchrun; the requested device otherwise."""
    if ctx.enabled and torch.cuda.is_available() and requested in ("auto", "cuda"):
        return torch.device("cuda", ctx.local_rank)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
