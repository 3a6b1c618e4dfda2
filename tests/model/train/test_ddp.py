"""Two gloo processes under torchrun give the same model as one process with the same global
batch (within float tolerance): negatives gathered across ranks with gradients, view sampling
seeded per pair, gradients averaged by DistributedDataParallel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import train_tiny
from helpers import ROOT
from safetensors.torch import load_file

from model.train.distributed import DistContext


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ft", "clip"])
def test_two_ranks_equal_one_process(objective: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    single = train_tiny(DistContext(), objective)
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "ddp_worker.py"), "--out", str(out), "--objective", objective]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = load_file(str(out))
    assert ddp.keys() == single.keys()
    # Two ranks sum the gradients in another order than one process; AdamW divides by sqrt(v), so
    # a coordinate whose gradient is near zero turns a 1e-9 rounding difference into up to ~1e-5
    # of weight after 4 steps (measured 1.4e-5 on ft's text_proj on a CPU without bf16, where the
    # unrolled Sinkhorn plans amplify rounding). 5e-5 is still 20x below what training moves.
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=5e-5, msg=k)
    # the comparison is sensitive: training really moved the weights far beyond the tolerance
    untrained = train_tiny(DistContext(), objective, steps=0)
    moved = max((single[k] - untrained[k]).abs().max().item() for k in single)
    assert moved > 1e-3
