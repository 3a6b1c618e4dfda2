"""Data-parallel training across processes, GPUs and nodes with torch.distributed (`torchrun`).

Each rank encodes its slice of the GLOBAL batch; the slices are all-gathered WITH gradients
(torch.distributed.nn.functional.all_gather), so the contrastive and transport losses see every
negative of the global batch, and every rank computes the same global loss. DistributedDataParallel
then averages parameter gradients: all_gather's backward sums the identical per-rank gradients of
each slice (x world) and DDP divides by world, which gives exactly the single-process gradient of
the global batch. View sampling draws one uniform per pair from the run's seed for the global batch
on every rank (model/objectives/ft.py), so it does not depend on which rank holds a pair. Only rank
0 writes checkpoints and artifacts; the others wait at a barrier.

Launch (docs/DEPLOY.md, k8s/overlays/gpu/pipeline):

    torchrun --standalone --nproc-per-node N -m service.cli -- train --catalog ... --run RUN ...

The `--` matters: torchrun's own parser would otherwise read the script's `--run` as an
abbreviation of its `--run-path` ("ambiguous option"); `service.cli` drops a leading `--`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from model.devices import resolve_device, wants_cuda
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

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a picklable object: a run name, a flag)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str = "auto") -> DistContext:
    """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); a single process otherwise.
    NCCL when `device` means CUDA (each rank pinned to GPU LOCAL_RANK first), gloo otherwise, so
    `--device cpu` trains with gloo on a machine that has GPUs too."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        cuda = wants_cuda(device)
        if cuda:
            torch.cuda.set_device(device_for(ctx, device))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return ctx


def device_for(ctx: DistContext, requested: str) -> torch.device:
    """The device of this process: under torchrun a CUDA request is GPU LOCAL_RANK (one GPU per
    local rank; "cuda:0" would put every rank on one GPU); the requested device otherwise."""
    return resolve_device(requested, local_rank=ctx.local_rank if ctx.enabled else None)


def dist_backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), None without one."""
    return str(dist.get_backend()) if dist.is_initialized() else None


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
