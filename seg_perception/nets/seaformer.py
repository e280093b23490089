"""SeaFormer: Squeeze-enhanced Axial Transformer for Mobile Semantic Segmentation (Wan et al., ICLR 2023).

Backbone (``SeaFormer``) and decode head (``LightHead``) with the module names of the official mmseg code
(fudan-zvg/SeaFormer, seaformer-seg), so official checkpoints load with identity key mapping. Eval-mode
``model(x)`` returns the decode head's logits at 1/8 of the input resolution.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn

from ._layers import (
    BasicLayer,
    ConvBN,
    ConvNormAct,
    EncoderDecoder,
    HSigmoid,
    InvertedResidual,
    TransformerBlock,
    interpolate_linear_1d,
    resize_bilinear,
)
from ._registry import register_model

__all__ = ['SeaFormerSeg', 'model_cfgs']

model_cfgs = {
    'tiny': dict(
        cfgs=[[[3, 1, 16, 1], [3, 4, 16, 2], [3, 3, 16, 1]], [[5, 3, 32, 2], [5, 3, 32, 1]],
              [[3, 3, 64, 2], [3, 3, 64, 1]], [[5, 3, 128, 2]], [[3, 6, 160, 2]]],
        channels=[16, 16, 32, 64, 128, 160], emb_dims=[128, 160], key_dims=[16, 24], depths=[2, 2], num_heads=4,
        mlp_ratios=[2, 4], head_in_channels=[32, 128, 160], head_channels=96, head_embed_dims=[64, 96]),
    'small': dict(
        cfgs=[[[3, 1, 16, 1], [3, 4, 24, 2], [3, 3, 24, 1]], [[5, 3, 48, 2], [5, 3, 48, 1]],
              [[3, 3, 96, 2], [3, 3, 96, 1]], [[5, 4, 160, 2]], [[3, 6, 192, 2]]],
        channels=[16, 24, 48, 96, 160, 192], emb_dims=[160, 192], key_dims=[16, 24], depths=[3, 3], num_heads=6,
        mlp_ratios=[2, 4], head_in_channels=[48, 160, 192], head_channels=128, head_embed_dims=[96, 128]),
    'base': dict(
        cfgs=[[[3, 1, 16, 1], [3, 4, 32, 2], [3, 3, 32, 1]], [[5, 3, 64, 2], [5, 3, 64, 1]],
              [[3, 3, 128, 2], [3, 3, 128, 1]], [[5, 4, 192, 2]], [[3, 6, 256, 2]]],
        channels=[16, 32, 64, 128, 192, 256], emb_dims=[192, 256], key_dims=[16, 24], depths=[4, 4], num_heads=8,
        mlp_ratios=[2, 4], head_in_channels=[64, 192, 256], head_channels=160, head_embed_dims=[128, 160]),
    'large': dict(
        cfgs=[[[3, 3, 32, 1], [3, 4, 64, 2], [3, 4, 64, 1]], [[5, 4, 128, 2], [5, 4, 128, 1]],
              [[3, 4, 192, 2], [3, 4, 192, 1]], [[5, 4, 256, 2]], [[3, 6, 320, 2]]],
        channels=[32, 64, 128, 192, 256, 320], emb_dims=[192, 256, 320], key_dims=[16, 20, 24], depths=[3, 3, 3],
        num_heads=8, mlp_ratios=[2, 4, 6], head_in_channels=[128, 192, 256, 320], head_channels=192,
        head_embed_dims=[128, 160, 192]),
}


class StackedMV2Block(nn.Module):
    """Optional stem (Conv3x3 s2 + BN + ReLU) then MobileNetV2 blocks ``layer1..layerN``."""

    def __init__(self, cfgs, stem, in_channels, act_layer=nn.ReLU):
        super().__init__()
        if stem:
            self.stem_block = nn.Sequential(ConvBN(3, in_channels, 3, 2, 1), act_layer())
        else:
            self.stem_block = nn.Identity()
        self.layer_names = []
        for i, (k, t, c, s) in enumerate(cfgs):
            name = f'layer{i + 1}'
            self.add_module(name, InvertedResidual(in_channels, c, k, s, t, act_layer=act_layer))
            self.layer_names.append(name)
            in_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_block(x)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x


class SqueezeAxialPositionalEmbedding(nn.Module):
    """Learned 1-D positional embedding (1, C, 16), linearly interpolated to the squeezed axis length."""

    def __init__(self, dim, length=16):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, dim, length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + interpolate_linear_1d(self.pos_embed, x.shape[-1])


class SeaAttention(nn.Module):
    """Squeeze-enhanced axial attention: row and column attention on axis-averaged q/k/v, plus a depthwise
    detail branch on cat(q, k, v) that gates the result: out = h_sigmoid(proj(v + row + col)) * detail."""

    def __init__(self, dim, key_dim, num_heads, attn_ratio=2, act_layer=nn.ReLU6):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        self.key_dim = key_dim
        nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.to_q = ConvBN(dim, nh_kd)
        self.to_k = ConvBN(dim, nh_kd)
        self.to_v = ConvBN(dim, self.dh)
        self.proj = nn.Sequential(act_layer(), ConvBN(self.dh, dim, bn_weight_init=0.0))
        self.proj_encode_row = nn.Sequential(act_layer(), ConvBN(self.dh, self.dh, bn_weight_init=0.0))
        self.pos_emb_rowq = SqueezeAxialPositionalEmbedding(nh_kd)
        self.pos_emb_rowk = SqueezeAxialPositionalEmbedding(nh_kd)
        self.proj_encode_column = nn.Sequential(act_layer(), ConvBN(self.dh, self.dh, bn_weight_init=0.0))
        self.pos_emb_columnq = SqueezeAxialPositionalEmbedding(nh_kd)
        self.pos_emb_columnk = SqueezeAxialPositionalEmbedding(nh_kd)
        detail = 2 * nh_kd + self.dh
        self.dwconv = ConvBN(detail, detail, 3, 1, 1, groups=detail)
        self.act = act_layer()
        self.pwconv = ConvBN(detail, dim)
        self.sigmoid = HSigmoid()

    def _axial(self, q, k, v, pos_q, pos_k):
        """Attention along one squeezed axis; q, k: (B, nh_kd, L), v: (B, dh, L) -> (B, dh, L)."""
        b, _, length = v.shape
        q = pos_q(q).reshape(b, self.num_heads, -1, length).transpose(2, 3)
        k = pos_k(k).reshape(b, self.num_heads, -1, length)
        v = v.reshape(b, self.num_heads, -1, length).transpose(2, 3)
        attn = (torch.matmul(q, k) * self.scale).softmax(dim=-1)
        return torch.matmul(attn, v).transpose(2, 3).reshape(b, self.dh, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        detail = self.pwconv(self.act(self.dwconv(torch.cat([q, k, v], dim=1))))
        row = self._axial(q.mean(-1), k.mean(-1), v.mean(-1), self.pos_emb_rowq, self.pos_emb_rowk)
        row = self.proj_encode_row(row.reshape(b, self.dh, h, 1))
        col = self._axial(q.mean(-2), k.mean(-2), v.mean(-2), self.pos_emb_columnq, self.pos_emb_columnk)
        col = self.proj_encode_column(col.reshape(b, self.dh, 1, w))
        out = self.proj(v + (row + col))
        return self.sigmoid(out) * detail


class SeaFormer(nn.Module):
    """SeaFormer backbone: stages ``smb1..smb5`` (1/4..1/64), transformer stages ``trans1..`` after the last
    len(depths) of them. Returns [smb2 output (1/8)] + the output of every transformer stage."""

    def __init__(self, cfgs, channels, emb_dims, key_dims, depths, num_heads, mlp_ratios, attn_ratio=2,
                 drop_path_rate=0.1):
        super().__init__()
        self.num_smb = len(cfgs)
        self.num_trans = len(depths)
        for i, cfg in enumerate(cfgs):
            self.add_module(f'smb{i + 1}', StackedMV2Block(cfg, stem=i == 0, in_channels=channels[i]))
        for i, depth in enumerate(depths):
            dpr = torch.linspace(0, drop_path_rate, depth).tolist()
            blocks = (TransformerBlock(SeaAttention(emb_dims[i], key_dims[i], num_heads, attn_ratio, nn.ReLU6),
                                       emb_dims[i], mlp_ratios[i], drop_path) for drop_path in dpr)
            self.add_module(f'trans{i + 1}', BasicLayer(blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        first_trans = self.num_smb - self.num_trans
        for i in range(self.num_smb):
            x = getattr(self, f'smb{i + 1}')(x)
            if i == 1:
                outputs.append(x)
            if i >= first_trans:
                x = getattr(self, f'trans{i - first_trans + 1}')(x)
                outputs.append(x)
        return outputs


class FusionBlock(nn.Module):
    """Gate the detail branch with the upsampled context: local(x_detail) * up(h_sigmoid(act(x_context)))."""

    def __init__(self, in_channels, context_channels, embed_dim):
        super().__init__()
        self.local_embedding = ConvNormAct(in_channels, embed_dim)
        self.global_act = ConvNormAct(context_channels, embed_dim)
        self.act = HSigmoid()

    def forward(self, x_local: torch.Tensor, x_context: torch.Tensor) -> torch.Tensor:
        gate = resize_bilinear(self.act(self.global_act(x_context)), x_local.shape[-2:])
        return self.local_embedding(x_local) * gate


class LightHead(nn.Module):
    """Successive fusion blocks ``fuse1..`` at 1/8, depthwise 1x1 ConvModule, classifier."""

    def __init__(self, in_channels, channels, embed_dims, num_classes, is_dw=True, dropout_ratio=0.1):
        super().__init__()
        self.num_fuse = len(embed_dims)
        for i, dim in enumerate(embed_dims):
            prev = in_channels[0] if i == 0 else embed_dims[i - 1]
            self.add_module(f'fuse{i + 1}', FusionBlock(prev, in_channels[i + 1], dim))
        self.linear_fuse = ConvNormAct(channels, channels, groups=channels if is_dw else 1, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[0]
        for i in range(self.num_fuse):
            x = getattr(self, f'fuse{i + 1}')(x, features[i + 1])
        return self.conv_seg(self.dropout(self.linear_fuse(x)))


class SeaFormerSeg(EncoderDecoder):
    """SeaFormer segmentor (backbone + LightHead); ``forward`` returns logits at 1/8 resolution."""

    def __init__(self, cfgs, channels, emb_dims, key_dims, depths, num_heads, mlp_ratios, head_in_channels,
                 head_channels, head_embed_dims, num_classes=150, drop_path_rate=0.1):
        super().__init__(SeaFormer(cfgs, channels, emb_dims, key_dims, depths, num_heads, mlp_ratios,
                                   drop_path_rate=drop_path_rate),
                         LightHead(head_in_channels, head_channels, head_embed_dims, num_classes), num_classes)


def _create(variant, num_classes, **kwargs):
    return SeaFormerSeg(**{**model_cfgs[variant], **kwargs}, num_classes=num_classes)


@register_model
def seaformer_tiny(num_classes: int = 150, **kwargs) -> SeaFormerSeg:
    return _create('tiny', num_classes, **kwargs)


@register_model
def seaformer_small(num_classes: int = 150, **kwargs) -> SeaFormerSeg:
    return _create('small', num_classes, **kwargs)


@register_model
def seaformer_base(num_classes: int = 150, **kwargs) -> SeaFormerSeg:
    return _create('base', num_classes, **kwargs)


@register_model
def seaformer_large(num_classes: int = 150, **kwargs) -> SeaFormerSeg:
    return _create('large', num_classes, **kwargs)
