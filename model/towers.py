"""The two towers: a query tower and a multi-view item tower sharing one MiniLM text encoder.

Query tower: MiniLM (all 6 layers) -> mean pool -> linear -> unit vector.
Item tower: per view type an encoder + projection to `dim`:
  title / description / tags: the same MiniLM -> mean pool -> a linear map per view type;
  primary image / other images: frozen EfficientNet-Lite0 features (cached) -> LayerNorm-MLP head;
then `Fusion` (model/view_fusion.py) combines the present views into the indexed vector.

All text projections (query included) start from ONE random orthogonal map, so before training the
model ranks like frozen MiniLM (cosines within a random 256-d subspace of the 384-d space), and
training starts from the zero-shot encoder rather than from noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import IMAGE_VIEWS, TEXT_VIEWS, VIEW_TYPES, ModelConfig
from model.encoders.text import BertConfig, MiniLM, mean_pool
from model.view_fusion import Fusion


class ImageHead(nn.Module):
    """Frozen ImageNet features -> the shared space (non-linear: pooled CNN features are far from
    the sentence space)."""

    def __init__(self, feature_dim: int, hidden: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, feats: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(feats))))  # (B, F) -> (B, d)


class TwoTower(nn.Module):
    def __init__(self, cfg: ModelConfig, bert: BertConfig):
        super().__init__()
        if not 0 <= cfg.text.trainable_layers <= bert.n_layers:
            raise ValueError(f"trainable_layers (--trainable-layers): {cfg.text.trainable_layers} is not within "
                             f"[0, {bert.n_layers}] (the text encoder has {bert.n_layers} layers)")
        self.cfg = cfg
        self.bert_config = bert
        d, h = cfg.tower.dim, bert.hidden
        self.encoder = MiniLM(bert)
        self.query_proj = nn.Linear(h, d, bias=False)
        # One projection per text view type, in TEXT_VIEWS order; one head per image view type.
        self.text_proj = nn.ModuleList([nn.Linear(h, d, bias=False) for _ in TEXT_VIEWS])
        self.image_proj = nn.ModuleList(
            [ImageHead(cfg.image.feature_dim, cfg.tower.image_hidden, d) for _ in IMAGE_VIEWS]
        )
        self.fusion = Fusion(cfg.tower.primary_prior)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.tower.logit_scale_init)))
        allowed = torch.tensor([v in cfg.index_views for v in VIEW_TYPES])
        self.register_buffer("index_views", allowed, persistent=False)

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def init_projections(self, seed: int = 0) -> None:
        """All text projections = one random orthogonal (d, h) map (see module docstring)."""
        gen = torch.Generator().manual_seed(seed)
        h, d = self.bert_config.hidden, self.cfg.tower.dim
        q, _ = torch.linalg.qr(torch.randn(h, h, generator=gen))  # (h, h) orthogonal
        w = q[:, :d].T.contiguous() * math.sqrt(h / d)  # (d, h); rows orthogonal, scale kept
        self.query_proj.weight.copy_(w)
        for proj in self.text_proj:
            proj.weight.copy_(w)

    # ------------------------------------------------------------------ encoders

    @property
    def n_layers(self) -> int:
        return self.bert_config.n_layers

    def text_pooled(self, hidden: Tensor, mask: Tensor, start_layer: int) -> Tensor:
        """Trunk hidden states after `start_layer` layers (B, T, H) -> pooled (B, H)."""
        out = self.encoder.run_layers(hidden, mask, start_layer, self.n_layers)  # (B, T, H)
        return mean_pool(out, mask)  # (B, H)

    def tokens_pooled(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        return mean_pool(self.encoder(input_ids, mask), mask)  # (B, H)

    def project_query(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.query_proj(pooled), dim=-1)  # (B, d)

    def project_text(self, view: int, pooled: Tensor) -> Tensor:
        return F.normalize(self.text_proj[TEXT_VIEWS.index(view)](pooled), dim=-1)  # (B, d)

    def project_image(self, view: int, feats: Tensor) -> Tensor:
        return F.normalize(self.image_proj[IMAGE_VIEWS.index(view)](feats), dim=-1)  # (B, d)

    def encode_query_tokens(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """Token ids (B, T) -> unit query vectors (B, d): the serving path."""
        return self.project_query(self.tokens_pooled(input_ids, mask))

    # ------------------------------------------------------------------ fusion

    def fuse(self, z: Tensor, present: Tensor, slot_types: Tensor, index_only: bool = True) -> Tensor:
        """(B, S, d) slot embeddings -> (B, d) fused unit vector over the indexed view types."""
        return self.fusion(z, present, slot_types, self.index_views if index_only else None)

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.cfg.tower.logit_scale_max)
