"""TopFormer: Token Pyramid Transformer for Mobile Semantic Segmentation (Zhang et al., CVPR 2022).

Backbone (``Topformer``) and decode head (``SimpleHead``) with the module names of the official mmseg code
(hustvl/TopFormer), so official checkpoints load with identity key mapping. Eval-mode ``model(x)`` returns the
decode head's logits at 1/8 of the input resolution, as the official segmentor does before its final resize.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn

from ._layers import (
    BasicLayer,
    ConvBN,
    ConvNormAct,
    EncoderDecoder,
    ExportableAdaptiveAvgPool2d,
    HSigmoid,
    InvertedResidual,
    TransformerBlock,
    resize_bilinear,
)
from ._registry import register_model

__all__ = ['TopFormer', 'model_cfgs']

_KTS = [(3, 1, 1), (3, 4, 2), (3, 3, 1), (5, 3, 2), (5, 3, 1), (3, 3, 2), (3, 3, 1), (5, 6, 2), (5, 6, 1),
        (3, 6, 1)]


def _tpm_cfg(widths):
    """Token pyramid rows [kernel, expand ratio, out channels, stride]; (k, t, s) are shared by all variants."""
    return [[k, t, c, s] for (k, t, s), c in zip(_KTS, widths)]


model_cfgs = {
    'tiny': dict(cfgs=_tpm_cfg([16, 16, 16, 32, 32, 64, 64, 96, 96]), tap_indices=(2, 4, 6, 8),
                 channels=(16, 32, 64, 96), num_heads=4, out_channels=128, head_channels=128, head_is_dw=True),
    'small': dict(cfgs=_tpm_cfg([16, 24, 24, 48, 48, 96, 96, 128, 128, 128]), tap_indices=(2, 4, 6, 9),
                  channels=(24, 48, 96, 128), num_heads=6, out_channels=192, head_channels=192, head_is_dw=False),
    'base': dict(cfgs=_tpm_cfg([16, 32, 32, 64, 64, 128, 128, 160, 160, 160]), tap_indices=(2, 4, 6, 9),
                 channels=(32, 64, 128, 160), num_heads=8, out_channels=256, head_channels=256, head_is_dw=False),
}


class TokenPyramidModule(nn.Module):
    """Stem + MobileNetV2 blocks ``layer1..layerN``; returns the outputs of the blocks in ``tap_indices``."""

    def __init__(self, cfgs, tap_indices, in_channels=16, act_layer=nn.ReLU):
        super().__init__()
        self.tap_indices = tuple(tap_indices)
        self.stem = nn.Sequential(ConvBN(3, in_channels, 3, 2, 1), act_layer())
        self.layer_names = []
        for i, (k, t, c, s) in enumerate(cfgs):
            name = f'layer{i + 1}'
            self.add_module(name, InvertedResidual(in_channels, c, k, s, t, act_layer=act_layer))
            self.layer_names.append(name)
            in_channels = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        taps = []
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i in self.tap_indices:
                taps.append(x)
        return taps


class Attention(nn.Module):
    """Multi-head attention over all positions with 1x1 ConvBN projections.

    As in the official code the logits q^T k are NOT scaled by 1/sqrt(key_dim)."""

    def __init__(self, dim, key_dim, num_heads, attn_ratio=2, act_layer=nn.ReLU6):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        nh_kd = key_dim * num_heads
        self.to_q = ConvBN(dim, nh_kd)
        self.to_k = ConvBN(dim, nh_kd)
        self.to_v = ConvBN(dim, self.dh)
        self.proj = nn.Sequential(act_layer(), ConvBN(self.dh, dim, bn_weight_init=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.to_q(x).reshape(b, self.num_heads, self.key_dim, h * w).transpose(2, 3)
        k = self.to_k(x).reshape(b, self.num_heads, self.key_dim, h * w)
        v = self.to_v(x).reshape(b, self.num_heads, self.d, h * w).transpose(2, 3)
        attn = torch.matmul(q, k).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(2, 3).reshape(b, self.dh, h, w)
        return self.proj(out)


class PyramidPoolAgg(nn.Module):
    """Average-pool every tap to ((H32 - 1) // stride + 1, (W32 - 1) // stride + 1) and concatenate."""

    def __init__(self, stride=2):
        super().__init__()
        self.stride = stride
        self.pool = ExportableAdaptiveAvgPool2d()

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        h, w = taps[-1].shape[-2:]
        size = ((h - 1) // self.stride + 1, (w - 1) // self.stride + 1)
        return torch.cat([self.pool(t, size) for t in taps], dim=1)


class InjectionMultiSum(nn.Module):
    """Semantics Injection Module: local * up(h_sigmoid(act(global))) + up(embed(global))."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.local_embedding = ConvNormAct(in_channels, out_channels)
        self.global_embedding = ConvNormAct(in_channels, out_channels)
        self.global_act = ConvNormAct(in_channels, out_channels)
        self.act = HSigmoid()

    def forward(self, x_local: torch.Tensor, x_global: torch.Tensor) -> torch.Tensor:
        size = x_local.shape[-2:]
        gate = resize_bilinear(self.act(self.global_act(x_global)), size)
        return self.local_embedding(x_local) * gate + resize_bilinear(self.global_embedding(x_global), size)


class Topformer(nn.Module):
    """TopFormer backbone: token pyramid, pooled global transformer, injection into scales 1..3 (1/8..1/32)."""

    def __init__(self, cfgs, tap_indices, channels, out_channels, num_heads, depths=4, key_dim=16, attn_ratio=2,
                 mlp_ratio=2, c2t_stride=2, drop_path_rate=0.1, decode_out_indices=(1, 2, 3)):
        super().__init__()
        self.channels = list(channels)
        self.decode_out_indices = tuple(decode_out_indices)
        self.tpm = TokenPyramidModule(cfgs, tap_indices)
        self.ppa = PyramidPoolAgg(c2t_stride)
        dpr = torch.linspace(0, drop_path_rate, depths).tolist()
        dim = sum(channels)
        self.trans = BasicLayer(TransformerBlock(Attention(dim, key_dim, num_heads, attn_ratio, nn.ReLU6), dim,
                                                 mlp_ratio, drop_path) for drop_path in dpr)
        self.SIM = nn.ModuleList(
            InjectionMultiSum(c, out_channels) if i in self.decode_out_indices else nn.Identity()
            for i, c in enumerate(channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = self.tpm(x)
        global_tokens = self.trans(self.ppa(taps)).split(self.channels, dim=1)
        return [self.SIM[i](taps[i], global_tokens[i]) for i in self.decode_out_indices]


class SimpleHead(nn.Module):
    """Sum the scales at the first one's resolution, 1x1 ConvModule (depthwise if ``is_dw``), classifier."""

    def __init__(self, channels, num_classes, is_dw=False, dropout_ratio=0.1):
        super().__init__()
        self.linear_fuse = ConvNormAct(channels, channels, groups=channels if is_dw else 1, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[0]
        for f in features[1:]:
            x = x + resize_bilinear(f, x.shape[-2:])
        return self.conv_seg(self.dropout(self.linear_fuse(x)))


class TopFormer(EncoderDecoder):
    """TopFormer segmentor (backbone + SimpleHead); ``forward`` returns logits at 1/8 resolution."""

    def __init__(self, cfgs, tap_indices, channels, num_heads, out_channels, head_channels, head_is_dw,
                 num_classes=150, drop_path_rate=0.1):
        super().__init__(Topformer(cfgs, tap_indices, channels, out_channels, num_heads,
                                   drop_path_rate=drop_path_rate),
                         SimpleHead(head_channels, num_classes, is_dw=head_is_dw), num_classes)


def _create(variant, num_classes, **kwargs):
    return TopFormer(**{**model_cfgs[variant], **kwargs}, num_classes=num_classes)


@register_model
def topformer_tiny(num_classes: int = 150, **kwargs) -> TopFormer:
    return _create('tiny', num_classes, **kwargs)


@register_model
def topformer_small(num_classes: int = 150, **kwargs) -> TopFormer:
    return _create('small', num_classes, **kwargs)


@register_model
def topformer_base(num_classes: int = 150, **kwargs) -> TopFormer:
    return _create('base', num_classes, **kwargs)
