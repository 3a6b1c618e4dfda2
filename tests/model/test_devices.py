"""The one device resolver (model/devices.py), as training, evaluation and serving call it."""

from __future__ import annotations

import pytest
import torch

from model.devices import resolve_device
from model.train.distributed import DistContext, device_for


def test_auto_and_cpu_resolve_and_unknown_names_fail_with_the_setting() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"encoder_device: 'tpu' is not auto, cpu, cuda or cuda:N"):
        resolve_device("tpu", "encoder_device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_cuda_request_without_cuda_fails_at_once() -> None:
    with pytest.raises(ValueError, match=r"--device: 'cuda:1' asked for, but torch sees no CUDA device"):
        resolve_device("cuda:1", "--device")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        device_for(DistContext(rank=1, world=2, local_rank=1), "cuda")


def test_under_torchrun_a_cpu_request_stays_on_the_cpu() -> None:
    assert device_for(DistContext(rank=1, world=2, local_rank=1), "cpu") == torch.device("cpu")
    assert device_for(DistContext(), "cpu") == torch.device("cpu")
