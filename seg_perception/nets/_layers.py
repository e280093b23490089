"""Building blocks shared by the mobile segmentation models (TopFormer, SeaFormer, and others).

Module and attribute names follow the official mmseg implementations (``Conv2d_BN`` keeps ``c``/``bn``,
mmcv ``ConvModule`` keeps ``conv``/``bn``/``activate``) so official checkpoints load with identity key mapping.

Everything here is export-friendly: shape-dependent operations (adaptive average pooling, 1-D linear
interpolation) are written as small matrices built from the runtime shapes, so a single ONNX file with dynamic
height/width computes exactly what the eager PyTorch ops compute at every input size.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import SegmentationModel

__all__ = [
    'ConvBN', 'ConvNormAct', 'HSigmoid', 'DropPath', 'InvertedResidual', 'Mlp',
    'adaptive_pool_matrix', 'adaptive_avg_pool2d', 'ExportableAdaptiveAvgPool2d', 'linear_resize_matrix',
    'interpolate_linear_1d', 'resize_bilinear', 'filter_mmseg_state_dict',
]


class ConvBN(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d; children ``c`` and ``bn`` (official ``Conv2d_BN``).

    ``bn_weight_init`` sets the initial BN scale (0 for residual projections, as officially)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, dilation=1, groups=1,
                 bn_weight_init=1.0):
        super().__init__()
        self.add_module('c', nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                       bias=False))
        self.add_module('bn', nn.BatchNorm2d(out_channels))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class ConvNormAct(nn.Module):
    """mmcv ``ConvModule`` with BatchNorm: ``conv`` (no bias), ``bn``, optional ``activate``."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, groups=1, act_layer=None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class HSigmoid(nn.Module):
    """Hard sigmoid ``ReLU6(x + 3) / 6``."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + 3) / 6


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or at rate 0)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [pw ConvBN, act] (if expand_ratio != 1), dw ConvBN(k, stride), act, pw ConvBN;
    residual when stride is 1 and the channel count is unchanged. Layers live in ``conv`` (official naming)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, expand_ratio, act_layer=nn.ReLU):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride}')
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = []
        if expand_ratio != 1:
            layers += [ConvBN(in_channels, hidden, 1), act_layer()]
        layers += [ConvBN(hidden, hidden, kernel_size, stride, kernel_size // 2, groups=hidden), act_layer(),
                   ConvBN(hidden, out_channels, 1)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class Mlp(nn.Module):
    """Convolutional feed-forward: ConvBN 1x1 -> depthwise 3x3 conv (bias) -> act -> ConvBN 1x1."""

    def __init__(self, in_features, hidden_features, out_features=None, act_layer=nn.ReLU6, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = ConvBN(in_features, hidden_features)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, 1, 1, groups=hidden_features, bias=True)
        self.act = act_layer()
        self.fc2 = ConvBN(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


def adaptive_pool_matrix(in_size: int | torch.Tensor, out_size: int | torch.Tensor, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 matrix (out_size, in_size) selecting torch's adaptive-pool bins, and the bin sizes (out_size,).

    Bin i spans [floor(i * in / out), ceil((i + 1) * in / out)). Sizes may be traced values (export)."""
    rows = torch.arange(out_size, device=device)
    cols = torch.arange(in_size, device=device)
    start = torch.div(rows * in_size, out_size, rounding_mode='floor')
    end = torch.div((rows + 1) * in_size + out_size - 1, out_size, rounding_mode='floor')
    member = (cols.unsqueeze(0) >= start.unsqueeze(1)) & (cols.unsqueeze(0) < end.unsqueeze(1))
    return member.to(dtype), (end - start).to(dtype)


def adaptive_avg_pool2d(x: torch.Tensor,
                        output_size: tuple[int | torch.Tensor, int | torch.Tensor]) -> torch.Tensor:
    """Same values as ``F.adaptive_avg_pool2d(x, output_size)``, built from two 0/1 bin matrices.

    Sums each bin with two matmuls and divides by the bin area, so it exports to ONNX with dynamic input and
    output sizes (torch.onnx cannot export adaptive pooling whose output size does not divide the input)."""
    out_h, out_w = output_size
    rows, row_counts = adaptive_pool_matrix(x.shape[-2], out_h, x.dtype, x.device)
    cols, col_counts = adaptive_pool_matrix(x.shape[-1], out_w, x.dtype, x.device)
    sums = torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))
    return sums / (row_counts.unsqueeze(1) * col_counts.unsqueeze(0))


class ExportableAdaptiveAvgPool2d(nn.Module):
    """Module form of :func:`adaptive_avg_pool2d` (so MAC counters can treat it as a pooling layer).

    ``forward(x, output_size)`` takes the output size at call time, since it usually depends on another input."""

    def forward(self, x: torch.Tensor, output_size: tuple[int | torch.Tensor, int | torch.Tensor]) -> torch.Tensor:
        return adaptive_avg_pool2d(x, output_size)


def linear_resize_matrix(in_size: int | torch.Tensor, out_size: int | torch.Tensor, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Matrix (in_size, out_size) W with ``x @ W == F.interpolate(x, out_size, mode='linear',
    align_corners=False)`` for x of length in_size on the last axis (half-pixel centres, clamped at 0)."""
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0.0)
    lo = src.floor()
    frac = src - lo
    lo = lo.to(torch.int64)
    hi = (lo + 1).clamp(max=in_size - 1)
    idx = torch.arange(in_size, device=device).unsqueeze(1)
    weights = (idx == lo.unsqueeze(0)).to(torch.float32) * (1.0 - frac).unsqueeze(0) \
        + (idx == hi.unsqueeze(0)).to(torch.float32) * frac.unsqueeze(0)
    return weights.to(dtype)


def interpolate_linear_1d(x: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, size, mode='linear', align_corners=False)`` for (..., L) as one matmul (exports
    with dynamic ``size``; matches torch also at size 1, where ONNX Resize's pytorch_half_pixel does not)."""
    return torch.matmul(x, linear_resize_matrix(x.shape[-1], size, x.dtype, x.device))


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (mmseg ``resize``; exact copy when the size is unchanged)."""
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def filter_mmseg_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                            prefixes: tuple[str, ...] = ('backbone.', 'decode_head.'),
                            dropped_prefixes: tuple[str, ...] = ('auxiliary_head.',)) -> dict[str, torch.Tensor]:
    """Map an official mmseg state dict onto ``model`` whose module names equal the official ones.

    Keys under ``dropped_prefixes`` are dropped; every other key must be one of ``model``'s state keys (an
    already-converted dict of ours passes unchanged). Raises KeyError naming the keys that cannot be mapped."""
    own = model.state_dict()
    out, unmapped = {}, []
    for key, value in state_dict.items():
        if key.startswith(dropped_prefixes):
            continue
        if key in own and key.startswith(prefixes):
            out[key] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise KeyError(f'{type(model).__name__}: cannot map official checkpoint keys {unmapped[:20]}'
                       f'{" ..." if len(unmapped) > 20 else ""}')
    return out


class TransformerBlock(nn.Module):
    """``x + attn(x)``, then ``x + mlp(x)``: TopFormer's and SeaFormer's block (no norms: the BNs live inside the
    projections); ``attn`` is the family's attention module."""

    def __init__(self, attn, dim, mlp_ratio, drop_path=0.0, act_layer=nn.ReLU6):
        super().__init__()
        self.attn = attn
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class BasicLayer(nn.Module):
    """A stack of transformer blocks under the official name ``transformer_blocks``."""

    def __init__(self, blocks):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            x = block(x)
        return x


class EncoderDecoder(SegmentationModel):
    """mmseg's eval-time segmentor: ``decode_head(backbone(x))`` -> logits at 1/8 resolution. Subclasses build
    ``backbone`` and ``decode_head`` with the official module names, so official checkpoints map one to one."""

    checkpoint_format = 'mmseg'

    def __init__(self, backbone, decode_head, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.decode_head = decode_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))

    def checkpoint_filter_fn(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return filter_mmseg_state_dict(self, state_dict)
