"""What several test folders share (imported as `helpers`; conftest files hold fixtures only).

- `ROOT`: the repository root.
- `wait_ready`, `clone_version`, `copy_artifacts`: an in-process app until /readyz answers 200;
  another committed version with the same files; a private writable copy of a build's folder.
- `build_tiny`: `build_index` over the tiny sample (the session's `tiny_build`, and variants).
- `serve`, `Server`: `service serve` as a real subprocess on a free loopback port (the tests that
  need a server the way Kubernetes runs it: shutdown, the browser test).
- `make_data`, `make_trainer`: a tiny generated training set and a Trainer over a 2-layer BERT.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from fastapi.testclient import TestClient

from index.store.artifacts import MANIFEST, ArtifactStore
from index.store.manifest import Manifest
from model.config import ModelConfig, TextConfig, TowerConfig, TrainConfig
from model.data.catalog import Listing
from model.data.interactions import Interaction
from model.data.views import build_view_table
from model.encoders.text import BertConfig
from model.towers import TwoTower
from model.train.pairs import build_training_set
from model.train.trainer import Trainer, build_trunk

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_server_ready(server: Server, timeout_s: float = 180.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise AssertionError(f"`service serve` exited with {server.proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout_s}s:\n{server.output()}")


@contextmanager
def serve(artifacts: Path, log: Path, env: dict[str, str]) -> Iterator[Server]:
    """Start `python -m service.cli serve` over `artifacts` with `env` added, wait until /readyz
    is 200, yield it, and stop it (terminate, then kill) on the way out."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--artifacts", str(artifacts),
             "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )
    s = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_server_ready(s)
        yield s
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_ready(client: TestClient, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = client.get("/readyz")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout}s: {client.get('/readyz').json()}")


def clone_version(store: ArtifactStore, src: str, name: str) -> Path:
    """Another committed version with the same files (as a rebuild of the same catalog would be)."""
    folder = store.version_dir(src)
    manifest = store.manifest(src)
    with store.stage(name) as staged:
        for p in folder.iterdir():
            if p.name != MANIFEST:
                (staged.path / p.name).write_bytes(p.read_bytes())
        return store.commit(staged, Manifest.from_dict(manifest))


WORDS = ["red", "blue", "striped", "wool", "mug", "scarf", "vase", "gift", "soft", "bright", "linen", "glass"]
TINY_BERT = BertConfig(hidden=32, n_layers=2, n_heads=2, intermediate=64, hidden_dropout=0.0, attention_dropout=0.0)


def make_data(n: int, n_photos: int, seed: int = 0, texts: bool = False):
    rng = np.random.default_rng(seed)
    words = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
    listings = [
        Listing(id=f"L{i}", title=words(4), description=words(12) if texts else "",
                tags=tuple(rng.choice(WORDS, 3)) if texts else (),
                images=tuple(f"/x/{i}_{j}.jpg" for j in range(1 + n_photos)), image_slots=tuple(range(1 + n_photos)))
        for i in range(n)
    ]
    views = build_view_table(listings)
    feats = rng.normal(size=(len(views.image_paths), 1280)).astype(np.float32)
    pairs = [Interaction(words(2), lst.id) for lst in listings]
    return build_training_set(listings, feats, np.ones(len(feats), bool), views, pairs, max_other_images=6)


def make_trainer(objective: str, data, tokenizer, seed: int = 0, **train) -> Trainer:
    """A trainer of the tiny model on `data`; `train`: TrainConfig fields over the tiny defaults."""
    torch.manual_seed(seed)
    cfg = ModelConfig(text=TextConfig(trainable_layers=1), tower=TowerConfig(dim=16, image_hidden=32, max_other_images=6))
    model = TwoTower(cfg, TINY_BERT)
    model.init_projections(seed)
    tcfg = TrainConfig(**{"objective": objective, "batch_size": 16, "epochs": 2, "seed": seed, "n_prototypes": 4,
                          "sinkhorn_iters": 10, "amp": False, **train})
    trunk = build_trunk(model, tokenizer, data, torch.device("cpu"), False)
    return Trainer(model, data, trunk, tcfg, torch.device("cpu"))


def copy_artifacts(build, dst: Path) -> Path:
    """A private, writable copy of `build`'s artifact folder (its version and `current`)."""
    src = build.path.parent.parent
    shutil.copytree(src / "versions" / build.version, dst / "versions" / build.version)
    shutil.copyfile(src / "current", dst / "current")
    return dst


def build_tiny(sample: Path, artifacts: Path, **overrides):
    from service.build.pipeline import build_index, build_options

    kw = dict(
        catalog=sample / "catalog.jsonl", artifacts=artifacts, interactions=sample / "interactions.jsonl",
        judgments=sample / "judgments.jsonl", objective="ft", epochs=1, batch_size=64, device="cpu",
        progress=False, image_cache=artifacts.parent / "image-cache",
    )
    kw.update(overrides)
    return build_index(build_options(**kw))
