"""RTFormer in PyTorch, loading PaddleSeg's official ``.pdparams`` checkpoints unchanged.

Paper: "RTFormer: Efficient Design for Real-Time Semantic Segmentation with Transformer",
Jian Wang, Chenhui Gou, Qiman Wu, Haocheng Feng, Junyu Han, Errui Ding, Jingdong Wang, NeurIPS 2022
(https://arxiv.org/abs/2210.07124). Official code: PaddlePaddle/PaddleSeg ``paddleseg/models/rtformer.py``.

Two branches after a DDRNet-like stem: a high-resolution branch at 1/8 and a low-resolution branch at 1/16
that ``layer4`` takes to 1/32. ``layer4`` and ``layer5`` are RTFormer blocks: GPU-friendly attention (external
attention with a double normalisation) on the low branch, cross-resolution attention on the high branch whose
keys and values are pooled from the low branch. DAPPM on the low branch, then the segmentation head at 1/8.

Module and parameter names equal Paddle's, so ``checkpoint_filter_fn`` only renames BatchNorm statistics.
In eval mode the model returns the segmentation head's logits at 1/8 (the official eval forward upsamples them
bilinearly to the input size afterwards; that is left to the caller). Every shape-dependent step (adaptive max
pooling to 12x12, global pooling, resizes) is written so that one ONNX file serves any input size.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import SegmentationModel
from ._layers import DropPath
from ._registry import register_model

__all__ = ['RTFormer', 'adaptive_max_pool2d_exact', 'model_cfgs', 'rtformer_slim', 'rtformer_base']


def _max_over_bins_last_dim(x, out_size):
    """Adaptive max pooling of the last dim: bin i spans [floor(i*L/out), ceil((i+1)*L/out)).
    (All operands are non-negative, so truncating division is floor division; it exports as a plain Div.)"""
    length = x.shape[-1]
    i = torch.arange(out_size, device=x.device)
    start = torch.div(i * length, out_size, rounding_mode='trunc')
    end = torch.div((i + 1) * length + out_size - 1, out_size, rounding_mode='trunc')
    # No bin is wider than ceil(L/out) + 1; shorter bins repeat their last index, which leaves the max unchanged.
    width = torch.div(length + out_size - 1, out_size, rounding_mode='trunc') + 1
    offsets = torch.arange(width, device=x.device)
    index = torch.minimum(start[:, None] + offsets[None, :], end[:, None] - 1)
    return x[..., index].amax(dim=-1)


def adaptive_max_pool2d_exact(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Same values as ``F.adaptive_max_pool2d(x, output_size)`` for any input size, built from gather and max so
    that it exports to ONNX with dynamic height and width (the exporter only handles sizes that divide evenly)."""
    out_h, out_w = output_size
    x = _max_over_bins_last_dim(x, out_w)
    x = _max_over_bins_last_dim(x.transpose(-1, -2), out_h)
    return x.transpose(-1, -2)


class AdaptiveMaxPool2dExact(nn.Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_max_pool2d_exact(x, self.output_size)


class GlobalAvgPool(nn.Module):
    """AdaptiveAvgPool2d(1) as a mean, which exports with dynamic input sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _bn_relu_conv(in_chs, out_chs, kernel_size=1, stride=1):
    """BN -> ReLU -> Conv (no bias); Paddle indices 0 (BN) and 2 (conv)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_chs), nn.ReLU(),
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False))


def _resize(x, size):
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class BasicBlock(nn.Module):
    """ResNet basic block; ``no_relu`` drops the ReLU after the residual sum."""

    def __init__(self, in_chs, out_chs, stride=1, no_relu=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + shortcut
        return out if self.no_relu else self.relu(out)


def _make_layer(in_chs, out_chs, depth, stride=1):
    """The first block keeps its ReLU; of the following blocks, the last one has none (as in the official code,
    so a one-block layer ends with a ReLU)."""
    blocks = [BasicBlock(in_chs, out_chs, stride)]
    blocks += [BasicBlock(out_chs, out_chs, no_relu=i == depth - 1) for i in range(1, depth)]
    return nn.Sequential(*blocks)


class Mlp(nn.Module):
    """BN(eps 1e-6) -> Conv3x3 -> GELU (exact) -> Conv3x3."""

    def __init__(self, chs):
        super().__init__()
        self.norm = nn.BatchNorm2d(chs, eps=1e-6)
        self.conv1 = nn.Conv2d(chs, chs, 3, 1, 1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(chs, chs, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(self.norm(x))))


class ExternalAttention(nn.Module):
    """GPU-friendly attention of the low branch: BN -> 1x1 conv with the external key memory ``k``
    (stride 2 when the block widens the branch) -> double normalisation per head (softmax over positions, then
    division by the sum over the head's memory slots + 1e-6) -> 1x1 conv with the value memory ``v``."""

    def __init__(self, in_chs, out_chs, num_heads=8):
        super().__init__()
        if out_chs % num_heads:
            raise ValueError(f'out_chs ({out_chs}) must be a multiple of num_heads ({num_heads})')
        self.num_heads = num_heads
        self.stride = 1 if in_chs == out_chs else 2
        self.norm = nn.BatchNorm2d(in_chs)
        self.k = nn.Parameter(torch.empty(out_chs, in_chs, 1, 1))
        self.v = nn.Parameter(torch.empty(out_chs, out_chs, 1, 1))
        nn.init.normal_(self.k, std=0.001)
        nn.init.normal_(self.v, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = F.conv2d(self.norm(x), self.k, stride=self.stride)
        n, c, h, w = attn.shape
        attn = attn.reshape(n, self.num_heads, c // self.num_heads, h * w).softmax(dim=-1)
        attn = attn / (attn.sum(dim=2, keepdim=True) + 1e-6)
        return F.conv2d(attn.reshape(n, c, h, w), self.v)


class CrossResolutionAttention(nn.Module):
    """Attention of the high branch with per-sample keys (N, C, S) and values (N, C, S) taken from the
    low branch: softmax over the S pooled positions of k^T q * S^-0.5, then v @ attn."""

    def __init__(self, chs):
        super().__init__()
        self.norm = nn.BatchNorm2d(chs)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self.norm(x).flatten(2)
        attn = (k.transpose(1, 2) @ q * k.shape[-1] ** -0.5).softmax(dim=1)
        return (v @ attn).reshape(x.shape)


class EABlock(nn.Module):
    """RTFormer block on (high, low) features. The low branch widens to ``out_chs_l`` and halves its resolution
    when ``in_chs_l != out_chs_l``; the high branch keeps its width and resolution."""

    def __init__(self, chs_h, in_chs_l, out_chs_l, num_heads=8, cross_size=12, use_injection=True,
                 drop_path=0.):
        super().__init__()
        self.attn_shortcut_l = None
        if in_chs_l != out_chs_l:
            self.attn_shortcut_l = nn.Sequential(
                nn.BatchNorm2d(in_chs_l), nn.Conv2d(in_chs_l, out_chs_l, 1, 2, bias=False))
        self.attn_l = ExternalAttention(in_chs_l, out_chs_l, num_heads)
        self.mlp_l = Mlp(out_chs_l)
        self.compression = _bn_relu_conv(out_chs_l, chs_h)
        self.attn_h = CrossResolutionAttention(chs_h)
        self.mlp_h = Mlp(chs_h)
        self.cross_kv = nn.Sequential(
            nn.BatchNorm2d(out_chs_l),
            AdaptiveMaxPool2dExact((cross_size, cross_size)),
            nn.Conv2d(out_chs_l, 2 * chs_h, 1, bias=False))
        self.down = None
        if use_injection:
            self.down = nn.Sequential(
                nn.BatchNorm2d(chs_h), nn.ReLU(),
                nn.Conv2d(chs_h, out_chs_l // 2, 3, 2, 1, bias=False),
                nn.BatchNorm2d(out_chs_l // 2), nn.ReLU(),
                nn.Conv2d(out_chs_l // 2, out_chs_l, 3, 2, 1, bias=False))
        self.drop_path = DropPath(drop_path)

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shortcut_l = x_l if self.attn_shortcut_l is None else self.attn_shortcut_l(x_l)
        x_l = shortcut_l + self.drop_path(self.attn_l(x_l))
        x_l = x_l + self.drop_path(self.mlp_l(x_l))

        x_h = x_h + _resize(self.compression(x_l), x_h.shape[2:])
        k, v = self.cross_kv(x_l).flatten(2).chunk(2, dim=1)
        x_h = x_h + self.drop_path(self.attn_h(x_h, k, v))
        x_h = x_h + self.drop_path(self.mlp_h(x_h))

        if self.down is not None:
            x_l = x_l + self.down(x_h)
        return x_h, x_l


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module: average pools (5, 9, 17 with strides 2, 4, 8, padding counted)
    and a global pool, each BN-ReLU-Conv1x1, upsampled and refined hierarchically, then fused."""

    def __init__(self, in_chs, inter_chs, out_chs):
        super().__init__()
        for i, (kernel, stride) in enumerate(((5, 2), (9, 4), (17, 8)), start=1):
            self.add_module(f'scale{i}', nn.Sequential(
                nn.AvgPool2d(kernel, stride, padding=kernel // 2, count_include_pad=True),
                *_bn_relu_conv(in_chs, inter_chs)))
        self.scale4 = nn.Sequential(GlobalAvgPool(), *_bn_relu_conv(in_chs, inter_chs))
        self.scale0 = _bn_relu_conv(in_chs, inter_chs)
        for i in range(1, 5):
            self.add_module(f'process{i}', _bn_relu_conv(inter_chs, inter_chs, kernel_size=3))
        self.compression = _bn_relu_conv(5 * inter_chs, out_chs)
        self.shortcut = _bn_relu_conv(in_chs, out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        feats = [self.scale0(x)]
        for scale, process in ((self.scale1, self.process1), (self.scale2, self.process2),
                               (self.scale3, self.process3)):
            feats.append(process(_resize(scale(x), size) + feats[-1]))
        # Upsampling a 1x1 map bilinearly is a broadcast.
        feats.append(self.process4(self.scale4(x) + feats[-1]))
        return self.compression(torch.cat(feats, dim=1)) + self.shortcut(x)


class SegHead(nn.Module):
    """BN -> ReLU -> Conv3x3 -> BN -> ReLU -> Conv1x1 (with bias)."""

    def __init__(self, in_chs, inter_chs, num_classes):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, inter_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter_chs)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(inter_chs, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(x)))


class RTFormer(SegmentationModel):
    """RTFormer. Eval: ``model(x)`` -> logits (N, num_classes, H/8, W/8). Train: (logits, aux_logits), both at 1/8,
    when built with the auxiliary head (``aux_head=True``, the official default), else logits only.

    Args:
        base_channels: c; the high branch has 2c channels, the low branch 4c at 1/16 and 8c at 1/32.
        head_channels: the auxiliary head's width (the segmentation head has twice as many).
        use_injection: per RTFormer block, whether the high branch is injected into the low one (``down``).
        depths: BasicBlocks in layer1, layer2, layer3.
        spp_channels: DAPPM's inner width.
        num_heads: heads of the low branch's external attention.
        cross_size: the low branch is max-pooled to cross_size x cross_size keys/values for the high branch.
        drop_path_rate: stochastic depth in both RTFormer blocks (training only).
        aux_head: build ``seghead_extra`` (training-only auxiliary head on the 1/8 branch after layer3_).
    """

    checkpoint_format = 'paddle'

    def __init__(self, num_classes=19, base_channels=64, head_channels=128, use_injection=(True, True),
                 depths=(2, 2, 2), spp_channels=128, num_heads=8, cross_size=12, drop_path_rate=0.2,
                 aux_head=True, in_chans=3):
        super().__init__()
        c = base_channels
        self.num_classes = num_classes
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.relu = nn.ReLU()
        self.layer1 = _make_layer(c, c, depths[0])
        self.layer2 = _make_layer(c, 2 * c, depths[1], stride=2)
        self.layer3 = _make_layer(2 * c, 4 * c, depths[2], stride=2)
        self.layer3_ = _make_layer(2 * c, 2 * c, 1)
        self.compression3 = _bn_relu_conv(4 * c, 2 * c)
        block = dict(num_heads=num_heads, cross_size=cross_size, drop_path=drop_path_rate)
        self.layer4 = EABlock(2 * c, 4 * c, 8 * c, use_injection=use_injection[0], **block)
        self.layer5 = EABlock(2 * c, 8 * c, 8 * c, use_injection=use_injection[1], **block)
        self.spp = DAPPM(8 * c, spp_channels, 2 * c)
        self.seghead = SegHead(4 * c, 2 * head_channels, num_classes)
        self.seghead_extra = SegHead(2 * c, head_channels, num_classes) if aux_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x1 = self.layer1(self.conv1(x))                                # c, 1/4
        x2 = self.layer2(self.relu(x1))                                # 2c, 1/8
        x3 = self.layer3(self.relu(x2))                                # 4c, 1/16
        x3_ = x2 + _resize(self.compression3(x3), x2.shape[2:])
        x3_ = self.layer3_(self.relu(x3_))                             # 2c, 1/8
        x4_, x4 = self.layer4(self.relu(x3_), self.relu(x3))          # 2c, 1/8; 8c, 1/32
        x5_, x5 = self.layer5(self.relu(x4_), self.relu(x4))          # 2c, 1/8; 8c, 1/32
        x6 = _resize(self.spp(x5), x5_.shape[2:])                      # 2c, 1/8
        logits = self.seghead(torch.cat([x5_, x6], dim=1))
        if self.training and self.seghead_extra is not None:
            return logits, self.seghead_extra(x3_)
        return logits

    def paddle_param_count(self) -> int:
        """Parameter count as Paddle reports it: BatchNorm running mean/variance are Paddle parameters (this is
        the convention of the published counts); ``num_batches_tracked`` does not exist in Paddle."""
        stats = sum(m.running_mean.numel() + m.running_var.numel()
                    for m in self.modules() if isinstance(m, nn.BatchNorm2d))
        return sum(p.numel() for p in self.parameters()) + stats

    def checkpoint_filter_fn(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a Paddle RTFormer state dict to ours: names are equal except BatchNorm ``_mean``/``_variance``
        (-> ``running_mean``/``running_var``); ``num_batches_tracked`` (absent in Paddle) is filled with zeros.
        The official auxiliary head is dropped when this model has none. RTFormer has no ``nn.Linear`` (whose
        Paddle weights would be [in, out]); its convolutions have the same layout in both frameworks.
        A dict already in our names is returned unchanged; a key that maps to nothing of ours is a KeyError."""
        own = self.state_dict()
        if all(k in own for k in state_dict):
            return state_dict
        out = {}
        for key, value in state_dict.items():
            if self.seghead_extra is None and key.startswith('seghead_extra.'):
                continue
            name = key
            if key.endswith('._mean'):
                name = key[:-len('_mean')] + 'running_mean'
            elif key.endswith('._variance'):
                name = key[:-len('_variance')] + 'running_var'
            if name not in own:
                raise KeyError(f'RTFormer: cannot map checkpoint key {key!r}')
            out[name] = value
        for name, module in self.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                out.setdefault(f'{name}.num_batches_tracked', torch.zeros((), dtype=torch.long))
        return out


model_cfgs = dict(
    rtformer_slim=dict(base_channels=32, head_channels=64, use_injection=(True, True)),
    rtformer_base=dict(base_channels=64, head_channels=128, use_injection=(True, False)),
)


def _create_rtformer(variant, num_classes, **kwargs):
    return RTFormer(num_classes=num_classes, **{**model_cfgs[variant], **kwargs})


@register_model
def rtformer_slim(num_classes: int = 19, **kwargs) -> RTFormer:
    return _create_rtformer('rtformer_slim', num_classes, **kwargs)


@register_model
def rtformer_base(num_classes: int = 19, **kwargs) -> RTFormer:
    return _create_rtformer('rtformer_base', num_classes, **kwargs)
