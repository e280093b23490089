"""Adaptive TopFormer: a TopFormer-tiny trunk and early head for the whole frame, and a deeper head that reuses
the trunk's features on the uncertain tiles only (issue 9, options a + b: multi-exit with shared computation,
applied per region). The per-frame cost follows how much of the frame the early head is unsure about.

Model
  * Trunk + early head: exactly TopFormer-tiny (``backbone`` / ``decode_head`` with TopFormer's module names, so
    a trained ``topformer_tiny`` checkpoint initialises them key for key). Its logits at 1/8 are the "cheap path".
  * Deep head (``deep``): on windows of the 1/8 feature map, input = the trunk's fused 1/8 features (the sum of
    the injection modules' outputs that the early head reads), the 1/8 token-pyramid tap, the 1/4 tap folded to
    1/8 (pixel unshuffle: boundary detail) and the early logits; a 1x1 projection, ``deep_depth`` MobileNetV2
    blocks, a 1x1 fuse and a classifier. Everything is local, so the deep head only needs the window.
  * Tiles: the 1/8 map (zero-padded up to a multiple of ``tile``) is cut into tile x tile cells (8 x 8 cells =
    64 x 64 pixels); the deep head sees each tile with ``halo`` cells of context on each side (zeros outside the
    frame) and writes the tile's centre. "The full model" = the deep head on every tile (``forward(x)`` in eval
    mode, and training).
  * Cells (``deep_kind='cells'``, ``adaptive_topformer_cells``): tiles of a single cell (8 x 8 pixels), so only
    the cells the early head is unsure of are refined, not whole 64 x 64 tiles around them. The deep head is
    then :class:`CellHead`: a thin map of the whole frame (a 1x1 projection of the same sources to 32 channels,
    a depthwise 5x5 convolution; ~7 % of TopFormer-tiny's MACs) and an MLP on each refined cell's 5x5-cell
    neighbourhood of it (0.12 MMACs a cell). Its layers are matrix products over the gathered cells, which ONNX
    Runtime runs several times faster per useful output than a convolution over windows with halos
    (``bench adaptive-cost --arch adaptive_topformer_cells``).

The knob: ``refine_threshold`` (a run-time input, float32 scalar, like the token-pass model's exit threshold)
  A cell is uncertain when the early head's max softmax probability is below ``refine_threshold``; a tile is
  refined when more than ``min_uncertain`` (2 %) of its cells are uncertain, and every tile is refined when
  ``refine_threshold >= 1``. So 0.0 = never refine (output == TopFormer-tiny's), 1.0 = always refine (output ==
  the full model's), 0.9 the default (``refine_conf``; with the shipped TopFormer-tiny on the sample bag at
  480x640 such tiles are 44 % of tiles and hold 92 % of its wrong pixels: ``bench refine-rule``). Higher = more
  tiles = more cost.

Gather / scatter and TensorRT
  The refined tiles' windows are gathered from each source map (data-dependent index, zeros outside the frame;
  the deep input is concatenated on the windows only), batched through the deep head and their centres
  scattered back into the early logits; unrefined tiles keep the early logits.
  The number of gathered windows is at least 1 (a masked slot when no tile is refined: ONNX Runtime's Gather
  dies with SIGFPE on an empty index) and, with ``tile_buckets`` (fractions of all tiles, e.g. ``(0.125, 0.25,
  0.5, 1.0)``), rounded up to the smallest bucket, so the deep head sees a few fixed batch sizes per input size.
  Masked slots are computed and discarded (``torch.where``): buckets change the cost, never the output.

Run-time API (eval mode)
  * ``model(x, refine_threshold=None)`` -> logits (N, C, H/8, W/8); ``None`` = the full model.
  * ``model.forward_with_stats(x, refine_threshold)`` -> ``(logits, refined_fraction (1,), macs ())``:
    fraction of tiles refined (batch mean; masked bucket slots not included) and the MACs per image actually
    spent (trunk + early head + deep head on every gathered window, masked slots included). Exported with the
    input ``refine_threshold`` and outputs ``refined_fraction``, ``macs`` (``knob_name``, ``stats_outputs``).
  * ``model.trunk_macs(h, w)`` (the cheap path), ``model.window_macs`` (the deep head on one window):
    the counting rules of ``seg_perception.offline.evaluation.flops.count_macs`` (convolutions with their bias,
    BatchNorm 2 per element, activations 1 per output element, pooling 1 per input element, the attention
    matmuls), measured once per module at construction on a probe input and kept as per-scale coefficients,
    so ``macs`` is exact at every input size (all strided convolutions halve with ceil).

Why this mechanism (measured; ``seg-perception bench adaptive-cost``, 480x640, ONNX Runtime, 1 thread, CPU clock)
  * Region level, not frame level (option d): with the shipped TopFormer-tiny on the sample bag at 480x640
    (``bench refine-rule``) the tiles the rule refines at 0.9 are 44 % of tiles (30 % / 59 % on the easier /
    harder half of the frames) and hold 92 % of the wrong pixels, but every frame has some: a frame cascade
    would pay the whole large model on every frame.
  * Shared computation (option a): the deep head reads the trunk's features, so refining costs only the deep
    head on the gathered windows; its cost is linear in the window count (0.25 ms per window for ``tiny``, from
    1 to 80 windows) and the cheap path costs 1.06x TopFormer-tiny (the selection, one masked window, the
    gathers). Never-refine is TopFormer-tiny itself, so the easy end of the curve is the tiny model's point.
  * Convolutional windows (option b with local context), not token passing inside TopFormer's transformer
    (option c): that stage runs on a 1/64 token grid (80 tokens at 480x640) and is ~15 % of TopFormer-tiny's
    MACs there (``trunk_macs`` coefficients); stopping its tokens saves little, while the errors sit in small
    regions at 1/8, where the deep head adds capacity.
  * Fixed shapes: windows are 10x10 (or 12x12) cells; with ``tile_buckets`` the deep head sees a handful of
    batch sizes per input size.

Training: train mode returns ``{'logits': full model (deep head on every tile), 'aux': [early logits]}``;
the inherited ``training_loss`` is CE(full) + ``aux_loss_weight`` (1.0: the early head decides and answers for
most tiles, so it trains as hard as the deep head) * CE(early), plus distillation of the full model's logits.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import SegmentationModel
from ._layers import (
    ConvNormAct,
    ExportableAdaptiveAvgPool2d,
    InvertedResidual,
    filter_mmseg_state_dict,
    resize_bilinear,
)
from ._registry import register_model
from .topformer import Attention as TopFormerAttention
from .topformer import SimpleHead, Topformer
from .topformer import model_cfgs as topformer_cfgs

__all__ = ['AdaptiveTopFormer', 'CellHead', 'DeepHead', 'gather_neighbourhoods', 'gather_windows', 'model_cfgs',
           'select_tiles']


class DeepHead(nn.Module):
    """The deep path on a batch of windows: 1x1 projection, MobileNetV2 blocks, 1x1 fuse, classifier."""

    def __init__(self, in_channels, channels, depth, expand_ratio, kernel_size, num_classes, dropout_ratio=0.1):
        super().__init__()
        self.proj = ConvNormAct(in_channels, channels, act_layer=nn.ReLU)
        self.blocks = nn.Sequential(*(InvertedResidual(channels, channels, kernel_size, 1, expand_ratio)
                                      for _ in range(depth)))
        self.fuse = ConvNormAct(channels, channels, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.fuse(self.blocks(self.proj(x)))))


class CellHead(nn.Module):
    """The deep path per cell (``deep_kind='cells'``, tiles of one cell): a thin part on the whole 1/8 map
    (:meth:`dense`: a 1x1 projection of the deep input, a depthwise convolution), then an MLP on each refined
    cell's (2 * context + 1)^2 neighbourhood of that map (:meth:`forward`), all cells in one matrix product per
    layer. The projection reads the deep input's sources as they are: a 1x1 convolution of their concatenation
    is the sum of one per source, and a 1x1 convolution after pixel-unshuffling the 1/4 tap is a 2x2 stride-2
    one on it (no concatenated or unshuffled copy)."""

    def __init__(self, source_channels, channels, hidden, context, num_classes, kernel_size=5, dropout_ratio=0.1):
        super().__init__()
        fused, tap8, tap4, early = source_channels
        self.proj = nn.ModuleDict({'fused': nn.Conv2d(fused, channels, 1, bias=False),
                                   'tap8': nn.Conv2d(tap8, channels, 1, bias=False),
                                   'tap4': nn.Conv2d(tap4, channels, 2, stride=2, bias=False),
                                   'early': nn.Conv2d(early, channels, 1, bias=False)})
        self.proj_bn, self.proj_act = nn.BatchNorm2d(channels), nn.ReLU()
        self.dw = ConvNormAct(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                              act_layer=nn.ReLU)
        self.fc1, self.act1 = nn.Linear((2 * context + 1) ** 2 * channels, hidden), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(hidden, hidden), nn.ReLU()
        self.dropout = nn.Dropout(dropout_ratio)
        self.cls = nn.Linear(hidden, num_classes)

    def dense(self, fused: torch.Tensor, tap8: torch.Tensor, tap4: torch.Tensor, early: torch.Tensor
              ) -> torch.Tensor:
        """The trunk's sources (1/8, 1/8, 1/4, 1/8 maps) -> (B, channels, h, w): what the cells' neighbourhoods
        are cut from."""
        proj = self.proj
        x = proj['fused'](fused) + proj['tap8'](tap8) + proj['tap4'](tap4) + proj['early'](early)
        return self.dw(self.proj_act(self.proj_bn(x)))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, size * size, channels) neighbourhoods (row-major cells, each cell's channels together) -> (N,
        num_classes, 1, 1) logits of their centre cells."""
        out = self.cls(self.dropout(self.act2(self.fc2(self.act1(self.fc1(windows.flatten(1)))))))
        return out[:, :, None, None]


def gather_neighbourhoods(x: torch.Tensor, ids: torch.Tensor, context: int) -> torch.Tensor:
    """The (2 * context + 1)^2-cell neighbourhoods of cells ``ids`` (B, k) (flat indices into the (H, W) map) of
    ``x`` (B, C, H, W), zeros outside the map -> (B * k, size * size, C): one row gather from the zero-padded map
    laid out cell by cell."""
    b, c, h, w = x.shape
    size, wp = 2 * context + 1, w + 2 * context
    rows = F.pad(x, (context,) * 4).permute(0, 2, 3, 1).reshape(-1, c)     # (B * Hp * Wp, C)
    offsets = torch.arange(size, device=x.device)
    window = (offsets[:, None] * wp + offsets[None, :]).reshape(-1)         # a window's cells from its top-left
    corner = (ids // w) * wp + ids % w + torch.arange(b, device=x.device)[:, None] * ((h + 2 * context) * wp)
    return rows.index_select(0, (corner[:, :, None] + window).reshape(-1)).reshape(-1, size * size, c)


def unfold_neighbourhoods(x: torch.Tensor, context: int) -> torch.Tensor:
    """Every cell's neighbourhood of ``x`` (B, C, H, W), as :func:`gather_neighbourhoods` lays them out ->
    (B * H * W, size * size, C)."""
    b, c = x.shape[:2]
    size = 2 * context + 1
    windows = F.unfold(F.pad(x, (context,) * 4), size)                      # (B, C * size^2, H * W)
    return windows.reshape(b, c, size * size, -1).permute(0, 3, 2, 1).reshape(-1, size * size, c)


def select_tiles(selected: torch.Tensor,
                 bucket_fractions: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tiles the deep head processes. ``selected`` (B, T) bool -> ``ids`` (B, k) with each image's
    selected tiles first (original order) and ``valid`` (B, k) marking them. k = the batch's largest count,
    at least 1 (a masked slot), rounded up to a bucket (fractions of T) when ``bucket_fractions`` are given."""
    total = selected.shape[1]
    position = torch.arange(total, device=selected.device)
    order = torch.argsort((~selected).long() * total + position, dim=1)
    need = selected.sum(1).amax(0).clamp(min=1)
    if bucket_fractions is not None:
        all_tiles = torch.ones_like(position).sum()
        sizes = torch.ceil(torch.tensor(bucket_fractions, device=selected.device) * all_tiles).long()
        need = torch.where(sizes >= need, sizes, all_tiles).amin(0)
    ids = order.index_select(1, torch.arange(need, device=selected.device))
    return ids, selected.gather(1, ids)


def gather_windows(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Square windows of ``x`` (B, C, H, W): ``top``/``left`` (B, k) corners (may lie outside the map) ->
    (B * k, C, size, size), zeros outside the map (as zero padding would give)."""
    b, c, h, w = x.shape
    offsets = torch.arange(size, device=x.device)
    rows, cols = top[:, :, None] + offsets, left[:, :, None] + offsets          # (B, k, size)
    inside = ((rows >= 0) & (rows < h))[:, :, :, None] & ((cols >= 0) & (cols < w))[:, :, None, :]
    index = rows.clamp(0, h - 1)[:, :, :, None] * w + cols.clamp(0, w - 1)[:, :, None, :]
    k = top.shape[1]
    out = x.flatten(2).gather(2, index.reshape(b, 1, -1).expand(-1, c, -1)).reshape(b, c, k, size, size)
    out = torch.where(inside[:, None], out, torch.zeros_like(out))
    return out.permute(0, 2, 1, 3, 4).reshape(b * k, c, size, size)


def _module_macs(module, inputs, output):
    """(MACs, what they scale with) of one module call, by the rules of ``offline.evaluation.flops``:
    ('area', tensor) = proportional to that tensor's H*W, ('n2', n) = to n^2, or None."""
    x = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
    if isinstance(module, nn.Conv2d):
        per = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        per += 1 if module.bias is not None else 0
        return output.numel() * per, ('area', output)
    if isinstance(module, nn.BatchNorm2d):
        return 2 * x.numel(), ('area', x)
    if isinstance(module, nn.Linear):
        return output.numel() * (module.in_features + (module.bias is not None)), None
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return output.numel(), ('area', output)
    if isinstance(module, ExportableAdaptiveAvgPool2d):
        return x.numel(), ('area', x)
    if isinstance(module, TopFormerAttention):   # q k^T and attn v (its projections are counted as convs)
        n = x.shape[-2] * x.shape[-1]
        return x.shape[0] * module.num_heads * n * n * (module.key_dim + module.d), ('n2', n)
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.Upsample, nn.modules.pooling._AvgPoolNd,
                           nn.modules.pooling._MaxPoolNd)):
        raise TypeError(f'{type(module).__name__}: no MAC rule here; add one (see offline/evaluation/flops.py)')
    return None


def _probe_macs(root, run):
    """Call ``run()`` with hooks on every module of ``root``; returns the (MACs, scale) of each call."""
    records, handles = [], []

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        found = _module_macs(module, inputs, output)
        if found is not None:
            records.append(found)

    for m in root.modules():
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return records


class AdaptiveTopFormer(SegmentationModel):
    """TopFormer trunk + early head on the whole frame, deep head on the uncertain tiles. See the module doc."""

    checkpoint_format = 'mmseg'
    knob_name = 'refine_threshold'
    stats_outputs = ('refined_fraction', 'macs')
    aux_loss_weight = 1.0
    _PROBE_HW = (128, 192)   # multiples of 64: every scale of the trunk (1/2 .. 1/64) divides it

    def __init__(self, trunk='tiny', num_classes=150, deep_channels=64, deep_depth=2, deep_expand=3,
                 deep_kernel=5, tile=8, halo=1, min_uncertain=0.02, refine_conf=0.9, tile_buckets=None,
                 drop_path_rate=0.1, deep_kind='windows', deep_hidden=128):
        super().__init__()
        cfg = topformer_cfgs[trunk]
        if tile < 1 or halo < 0:
            raise ValueError(f'tile {tile} must be >= 1 and halo {halo} >= 0')
        if deep_kind not in ('windows', 'cells') or (deep_kind == 'cells' and tile != 1):
            raise ValueError(f"deep_kind {deep_kind!r} must be 'windows' or 'cells' (cells: tile 1, not {tile})")
        self.cells = deep_kind == 'cells'
        self.tile_buckets = tuple(tile_buckets) if tile_buckets else None
        if self.tile_buckets and (max(self.tile_buckets) != 1.0 or min(self.tile_buckets) <= 0):
            raise ValueError(f'tile_buckets {tile_buckets} must be fractions in (0, 1] including 1.0')
        self.num_classes = num_classes
        self.tile, self.halo = int(tile), int(halo)
        self.min_uncertain = float(min_uncertain)
        self.refine_conf = float(refine_conf)
        self.backbone = Topformer(cfg['cfgs'], cfg['tap_indices'], cfg['channels'], cfg['out_channels'],
                                  cfg['num_heads'], drop_path_rate=drop_path_rate)
        self.decode_head = SimpleHead(cfg['head_channels'], num_classes, is_dw=cfg['head_is_dw'])
        channels = cfg['channels']
        if self.cells:
            sources = (cfg['out_channels'], channels[1], channels[0], num_classes)
            self.deep = CellHead(sources, deep_channels, deep_hidden, halo, num_classes, deep_kernel)
        else:
            deep_in = cfg['out_channels'] + channels[1] + 4 * channels[0] + num_classes
            self.deep = DeepHead(deep_in, deep_channels, deep_depth, deep_expand, deep_kernel, num_classes)
        self._calibrate_macs()

    # ------------------------------------------------------------------ MAC accounting

    def _calibrate_macs(self):
        """Per-scale MAC coefficients of the trunk + early head (and of the cell head's dense part), and the MACs
        of the deep head on one window."""
        was_training = self.training
        self.eval()
        try:
            h, w = self._PROBE_HW
            probe = []   # the trunk's outputs on the probe: the cell head's dense part is probed on its sources
            self._trunk_coef = self._scale_coefficients(
                _probe_macs(self, lambda: probe.append(self.trunk(torch.zeros(1, 3, h, w)))))
            self._dense_coef = {}
            if self.cells:
                sources = probe[0][1]
                self._dense_coef = self._scale_coefficients(_probe_macs(self.deep, lambda: self.deep.dense(*sources)))
            window = torch.zeros(self.window_shape(1))
            self.window_macs = int(sum(m for m, _ in _probe_macs(self.deep, lambda: self.deep(window))))
        finally:
            self.train(was_training)

    def window_shape(self, n: int) -> tuple[int, ...]:
        """The shape of ``n`` windows as the deep head reads them: (n, C, size, size) of the deep input, or the
        cell head's (n, size * size, C) neighbourhoods of its dense map."""
        size = self.tile + 2 * self.halo
        if self.cells:
            return n, size * size, self.deep.dw.conv.out_channels
        return n, self.deep.proj.conv.in_channels, size, size

    def _scale_coefficients(self, records) -> dict:
        """Probe records on a ``_PROBE_HW`` input -> MACs per unit of each scale: {level: per cell of the 1/2^level
        map, 'n2': per squared token count}."""
        h, w = self._PROBE_HW
        coef = {}
        for macs, (kind, ref) in records:
            if kind == 'n2':
                key, unit = 'n2', ref * ref
            else:
                level = (h // ref.shape[-2]).bit_length() - 1
                if ref.shape[-2] << level != h or ref.shape[-1] << level != w:
                    raise ValueError(f'probe: a {tuple(ref.shape)} map is not a power-of-2 scale of {h}x{w}')
                key, unit = level, ref.shape[-2] * ref.shape[-1]
            if macs % unit:
                raise ValueError(f'probe: {macs} MACs are not a multiple of the scale unit {unit}')
            coef[key] = coef.get(key, 0) + macs // unit
        return coef

    @staticmethod
    def _macs_at(coef: dict, h: int | torch.Tensor, w: int | torch.Tensor) -> int | torch.Tensor:
        total = 0
        for key, c in coef.items():
            if key == 'n2':
                n = ((h + 63) // 64) * ((w + 63) // 64)   # TopFormer's pooled token grid: ceil(H/64) x ceil(W/64)
                total = total + c * n * n
            else:
                s = 1 << key
                total = total + c * (((h + s - 1) // s) * ((w + s - 1) // s))
        return total

    def trunk_macs(self, h: int | torch.Tensor, w: int | torch.Tensor) -> int | torch.Tensor:
        """MACs of the trunk + early head for one (h, w) input (ints, or traced sizes inside an export)."""
        return self._macs_at(self._trunk_coef, h, w)

    def cheap_macs(self, h: int | torch.Tensor, w: int | torch.Tensor) -> int | torch.Tensor:
        """MACs of everything but the deep head's windows: the trunk + early head, and the cell head's dense part
        on the whole 1/8 map."""
        return self.trunk_macs(h, w) + self._macs_at(self._dense_coef, h, w)

    def num_tiles(self, h: int | torch.Tensor, w: int | torch.Tensor) -> int | torch.Tensor:
        """Tiles of an (h, w) input (the 1/8 map padded up to whole tiles)."""
        t = 8 * self.tile
        return ((h + t - 1) // t) * ((w + t - 1) // t)

    # ------------------------------------------------------------------ forward

    def trunk(self, x: torch.Tensor
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """-> (early logits at 1/8, the deep head's sources). Same arithmetic as TopFormer.forward.

        Sources: the fused 1/8 features, the 1/8 tap, the 1/4 tap and the early logits; the deep head reads
        ``cat([fused, tap8, pixel_unshuffle(tap4, 2), early])`` (:meth:`deep_input`), which the adaptive path
        builds on the gathered windows only (no full-map copy when few tiles are refined)."""
        bb = self.backbone
        taps = bb.tpm(x)
        global_tokens = bb.trans(bb.ppa(taps)).split(bb.channels, dim=1)
        features = [bb.SIM[i](taps[i], global_tokens[i]) for i in bb.decode_out_indices]
        fused = features[0]
        for f in features[1:]:
            fused = fused + resize_bilinear(f, fused.shape[-2:])
        head = self.decode_head
        early = head.conv_seg(head.dropout(head.linear_fuse(fused)))
        return early, (fused, taps[1], taps[0], early)

    @staticmethod
    def deep_input(fused: torch.Tensor, tap8: torch.Tensor, tap4: torch.Tensor, early: torch.Tensor) -> torch.Tensor:
        return torch.cat([fused, tap8, F.pixel_unshuffle(tap4, 2), early], dim=1)

    def _grid(self, early):
        h8, w8 = early.shape[-2], early.shape[-1]
        pad_h, pad_w = (self.tile - h8 % self.tile) % self.tile, (self.tile - w8 % self.tile) % self.tile
        return h8, w8, pad_h, pad_w, (h8 + pad_h) // self.tile, (w8 + pad_w) // self.tile

    def _pad_to_tiles(self, x, pad_h, pad_w, value):
        """The 1/8 map padded up to whole tiles; cells are whole already (no Pad node in the graph)."""
        return x if self.tile == 1 else F.pad(x, (0, pad_w, 0, pad_h), value=value)

    def _crop(self, deep):
        """The deep head's output on windows -> their tiles (the cell head answers for the centre cell only)."""
        m, t = self.halo, self.tile
        return deep if self.cells else deep[:, :, m:m + t, m:m + t]

    def full(self, early: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The deep head on every tile (dense windows with F.unfold) -> logits at 1/8."""
        b, k = early.shape[0], early.shape[1]
        h8, w8, pad_h, pad_w, ty, tx = self._grid(early)
        size, t, m = self.tile + 2 * self.halo, self.tile, self.halo
        if self.cells:
            windows = unfold_neighbourhoods(self.deep.dense(*sources), self.halo)
            return self.deep(windows).reshape(b, h8, w8, k).permute(0, 3, 1, 2)
        features = self.deep_input(*sources)
        windows = F.unfold(F.pad(features, (m, m + pad_w, m, m + pad_h)), size, stride=t)
        windows = windows.reshape(b, features.shape[1], size, size, ty * tx).permute(0, 4, 1, 2, 3)
        out = self._crop(self.deep(windows.reshape(b * ty * tx, features.shape[1], size, size)))
        out = out.reshape(b, ty, tx, k, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, k, ty * t, tx * t)
        return out[:, :, :h8, :w8]

    def refine(self, early: torch.Tensor, sources: tuple[torch.Tensor, ...],
               threshold: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The adaptive forward -> (logits at 1/8, selected (B, T) bool, gathered windows per image)."""
        b, k = early.shape[0], early.shape[1]
        h8, w8, pad_h, pad_w, ty, tx = self._grid(early)
        size, t = self.tile + 2 * self.halo, self.tile
        if not torch.is_tensor(threshold):
            threshold = torch.tensor(float(threshold))
        threshold = threshold.to(early.dtype)
        # max softmax = 1 / sum exp(l - max l): four small elementwise nodes (ONNX Runtime's Softmax over the
        # class axis of an NCHW map transposes it first, ~0.2 ms at 256x320 on one thread)
        top = early.amax(dim=1, keepdim=True)
        conf = self._pad_to_tiles(1.0 / (early - top).exp().sum(dim=1), pad_h, pad_w, 1.0)
        uncertain = (conf < threshold).to(early.dtype)
        counts = uncertain.reshape(b, ty, t, tx, t).sum(dim=(2, 4)).reshape(b, ty * tx)
        selected = (counts > self.min_uncertain * t * t) | (threshold >= 1.0)
        ids, valid = select_tiles(selected, self.tile_buckets)
        row, col = ids // tx, ids % tx
        if self.cells:   # the dense part on the whole map, the MLP on the gathered neighbourhoods
            windows = gather_neighbourhoods(self.deep.dense(*sources), ids, self.halo)
        else:            # the deep input built on the gathered windows only
            top, left = row * t - self.halo, col * t - self.halo
            fused, tap8, tap4, _ = sources
            windows = self.deep_input(gather_windows(fused, top, left, size), gather_windows(tap8, top, left, size),
                                      gather_windows(tap4, 2 * top, 2 * left, 2 * size),
                                      gather_windows(early, top, left, size))
        # tile pixels in the tile-padded 1/8 map (width tx * t)
        offsets = torch.arange(t, device=ids.device)
        tile_off = (offsets[:, None] * (tx * t) + offsets[None, :]).reshape(-1)
        tile_idx = ((row * t * (tx * t) + col * t)[:, :, None] + tile_off).reshape(b, -1)
        n = ids.shape[1]
        deep = self._crop(self.deep(windows)).reshape(b, n, k, t * t).permute(0, 2, 1, 3).reshape(b, k, n * t * t)
        canvas = self._pad_to_tiles(early, pad_h, pad_w, 0.0).flatten(2)
        index = tile_idx[:, None].expand(-1, k, -1)
        keep = valid[:, None, :, None].expand(-1, 1, -1, t * t).reshape(b, 1, n * t * t)
        deep = torch.where(keep, deep, canvas.gather(2, index))
        logits = canvas.scatter(2, index, deep).reshape(b, k, ty * t, tx * t)[:, :, :h8, :w8]
        return logits, selected, torch.ones_like(ids[0]).sum()

    def forward(self, x: torch.Tensor, refine_threshold: float | torch.Tensor | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        early, sources = self.trunk(x)
        if self.training:
            return {'logits': self.full(early, sources), 'aux': [early]}
        if refine_threshold is None:
            return self.full(early, sources)
        return self.refine(early, sources, refine_threshold)[0]

    def forward_with_stats(self, x: torch.Tensor, refine_threshold: float | torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (logits (N, C, H/8, W/8), refined_fraction float32 (1,), macs float32 () per image)."""
        early, sources = self.trunk(x)
        h, w = x.shape[-2], x.shape[-1]
        if refine_threshold is None:
            logits = self.full(early, sources)
            fraction, windows = torch.ones(1), self.num_tiles(h, w)
        else:
            logits, selected, windows = self.refine(early, sources, refine_threshold)
            fraction = selected.float().mean(1).mean(0).reshape(1)
        macs = self.cheap_macs(h, w) + windows * self.window_macs
        macs = macs if torch.is_tensor(macs) else torch.tensor(macs)
        return logits, fraction, macs.to(torch.float32).reshape(())

    def checkpoint_filter_fn(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An official TopFormer checkpoint of the trunk's variant fills ``backbone`` and ``decode_head``
        (the deep head stays as initialised: train it)."""
        return filter_mmseg_state_dict(self, state_dict)


model_cfgs = {
    # The trunk is TopFormer-tiny in all; the deep heads differ. Deep head per window / on all 80 tiles of a
    # 480x640 input, ONNX Runtime 1 thread (`seg-perception bench adaptive-cost`, CPU clock, this 2-core VM):
    #   tiny:  10x10 windows (halo 1), 64 ch  ->  8.1 MMACs, 0.25 ms; 0.65 GMACs for every tile
    #   small: 12x12 windows (halo 2), 96 ch  -> 23.2 MMACs, 0.64 ms; 1.86 GMACs for every tile
    # (TopFormer-tiny itself: 0.60 GMACs, 46 ms; TopFormer-base 1.98 GMACs, 92 ms on the same run.)
    #   cells: one 8x8-pixel cell, 5x5-cell neighbourhood of a 32-ch map -> 0.12 MMACs, ~2 us a cell at 256x320
    #          (384 of 1280 cells 0.87 ms; the map on the whole frame 0.011 GMACs)
    'tiny': dict(trunk='tiny', deep_channels=64, deep_depth=2, deep_expand=3, deep_kernel=5, halo=1),
    'small': dict(trunk='tiny', deep_channels=96, deep_depth=2, deep_expand=3, deep_kernel=5, halo=2),
    'cells': dict(trunk='tiny', deep_kind='cells', deep_channels=32, deep_hidden=128, deep_kernel=5, tile=1, halo=2),
}


def _create(variant, num_classes, **kwargs):
    return AdaptiveTopFormer(num_classes=num_classes, **{**model_cfgs[variant], **kwargs})


@register_model
def adaptive_topformer_tiny(num_classes: int = 150, **kwargs) -> AdaptiveTopFormer:
    """TopFormer-tiny trunk + a light deep head (2 blocks of 64 channels, 1 cell of context) on uncertain
    64x64-pixel tiles."""
    return _create('tiny', num_classes, **kwargs)


@register_model
def adaptive_topformer_small(num_classes: int = 150, **kwargs) -> AdaptiveTopFormer:
    """TopFormer-tiny trunk + a heavier deep head (2 blocks of 96 channels, 2 cells of context)."""
    return _create('small', num_classes, **kwargs)


@register_model
def adaptive_topformer_cells(num_classes: int = 150, **kwargs) -> AdaptiveTopFormer:
    """TopFormer-tiny trunk + a per-cell deep head (a 32-channel map of the whole frame, an MLP of 128 on each
    uncertain 8x8-pixel cell's 5x5-cell neighbourhood)."""
    return _create('cells', num_classes, **kwargs)
