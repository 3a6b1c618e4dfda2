"""THE device resolver: a device setting (`auto`, `cpu`, `cuda`, `cuda:N`) -> a torch.device.

Training, embedding, evaluation, the query encoder and the photo encoder all resolve their device
here, so `auto` means the same everywhere (CUDA when torch sees one) and a CUDA request on a machine
without one fails at once with the setting's name, instead of deep inside a kernel. Under torchrun a
CUDA request becomes the GPU of the process's local rank (one GPU per rank).
"""

from __future__ import annotations

import torch


def wants_cuda(requested: str) -> bool:
    return requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())


def resolve_device(requested: str, setting: str = "device", local_rank: int | None = None) -> torch.device:
    """`requested` as a torch.device; `setting` names it in errors; `local_rank` (torchrun) picks the
    GPU of a CUDA request."""
    if requested != "auto" and requested != "cpu" and not requested.startswith("cuda"):
        raise ValueError(f"{setting}: {requested!r} is not auto, cpu, cuda or cuda:N")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{setting}: {requested!r} asked for, but torch sees no CUDA device")
    if local_rank is not None and wants_cuda(requested):
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA devices visible")
        return torch.device("cuda", local_rank)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
