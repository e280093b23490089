"""Token-pass ViT segmenters: "Dynamic Token-Pass Transformers for Semantic Segmentation" (DoViT, Liu et al.,
WACV 2024), on a plain ViT with a Segmenter-style linear head; the cost of a frame follows how hard it is.

Model
  * ViT: patch 16, cls token, learned position embedding for a base grid, bilinearly interpolated to the
    input's token grid (any H, W divisible by 16; the ONNX graph keeps H, W dynamic), timm-style blocks
    (pre-LayerNorm, fused qkv attention, GELU MLP), final LayerNorm.
  * Head: Segmenter linear (Linear(dim, classes) per patch token), the 1/16 logit grid upsampled x2 bilinearly,
    so ``model(x)`` returns logits at 1/8 like every model of the package.
  * Aux heads (LayerNorm + Linear per token) read the tokens entering blocks ``aux_indices`` (2, 5, 8 for 12
    blocks). They are trained in both models; only the token-pass model uses them at inference.

Token passing (``TokenPassViT``; ``ViTSegmenter`` is its static twin: same ``state_dict`` keys, no stopping)
  * At aux head s a patch token stops when its max softmax probability is > ``exit_threshold`` (or
    < ``diff_conf`` when that is > 0; off by default). Stopping is cumulative.
  * As in DoViT a stopped token keeps its frozen features: the tokens still active are gathered
    (data-dependent index), only they run the blocks of the stage, and they are scattered back to their
    positions before the next aux head. The final norm and head see every token after reconstruction, so a
    stopped token's prediction is the final head applied to its frozen features (not the aux head's logits).
    Kept tokens attend only to kept tokens.
  * Zero-token safety: the cls token never stops and is always gathered first, so a gather never selects zero
    tokens (ONNX Runtime's optimised Gather dies with SIGFPE on an empty index). The cls token feeds no output
    of a stopped token (those are frozen) and the linear head ignores it.
  * ``exit_threshold`` is a run-time input: ``None`` runs the static path; a value >= 1.0 stops nothing and
    gives the static twin's output (same arithmetic on the same tokens); 0.0 stops every patch token at the
    first aux head.
  * Batches: each image keeps its own tokens; the gather takes as many slots as the image keeping the most,
    the extra slots of the others hold stopped tokens that are masked out of attention and written back
    unchanged.

Run-time API
  * ``model(x, exit_threshold=None)`` in eval mode -> logits (N, C, H/8, W/8).
  * ``model.forward_with_stats(x, exit_threshold)`` -> ``(logits, kept_fraction, macs)``: kept_fraction
    float32 (S,) = fraction of patch tokens still active after each of the S aux heads (batch mean); macs
    float32 scalar = MACs per image actually spent, from the processed token counts (``macs_for_kept``).
    ``seg_perception.offline.deploy.export`` exports this with the input ``exit_threshold`` (float32 scalar) and
    outputs ``logits``, ``kept_fraction``, ``macs``.
  * ``model.macs_for_kept(h, w, processed=None)``: MACs for an (h, w) input when block i processes
    ``processed[i]`` tokens (cls included); ``None`` is the static model (no aux heads). Same convention as
    ``seg_perception.offline.evaluation.flops.count_macs`` (mmcv style): patch embedding, qkv/proj/MLP linears with
    their biases, LayerNorms (2 per element) and GELU (1 per element), all prop. to n; the two attention
    matmuls (prop. to n^2); aux heads on every patch token; final norm and head. The functional x2
    upsampling, softmax and the stopping rule are not counted.

Training API (the hooks of ``SegmentationModel``, which ``seg_perception.offline.training`` calls)
  * In train mode ``model(x)`` returns ``{'logits': (N, C, H/8, W/8), 'aux': [aux logits at 1/8, one per aux
    head]}``. The token-pass model trains with DoViT's annealed stopping: stopping uses the threshold
    ``model.train_threshold`` (1.0 at start = nothing stops).
  * ``model.set_threshold_schedule(it, max_iters)`` sets ``train_threshold = 1 - min(1, it / max_iters) * (1 -
    exit_conf)`` (the trainer calls it every iteration; a no-op for the static twin).
  * Attributes: ``aux_loss_weight`` (0.4), ``exit_conf`` (the deployment threshold, 0.96 by default).
  * ``model.training_loss(outputs, target, teacher_logits=None, aux_weight=None, kd_weight=0.0,
    kd_temperature=1.0)`` -> (loss, parts): CE(main) + aux_loss_weight * sum CE(aux), plus kd_weight *
    ``nets.losses.distill_loss`` (T^2 KL(teacher || student) at 1/8 over labelled pixels) when the static twin's
    1/8 logits (eval mode, no grad) are given. ``target``: (N, H, W) labels at the input resolution; logits
    are upsampled to it.

TensorRT mode (``token_buckets``, e.g. ``(0.25, 0.5, 0.75, 1.0)``)
  The number of gathered tokens is rounded up to the smallest bucket (fraction of all tokens, cls included);
  the extra slots are masked like batch padding, so the output is unchanged and only the compute differs.
  Per input size the blocks then see at most len(buckets) token counts, so run-time shapes repeat instead of
  changing with every frame. The token count stays data-dependent inside the graph (TopK / Range / Gather),
  which TensorRT >= 8.6 builds with its data-dependent-shape support; only ``images`` needs a profile
  (``exit_threshold`` is a scalar). On a Jetson::

      trtexec --onnx=tp.onnx --fp16 --saveEngine=tp.engine --shapes=images:1x3x512x512
      # a dynamic H/W export: give the range of image sizes
      trtexec --onnx=tp.onnx --fp16 --saveEngine=tp.engine --minShapes=images:1x3x256x256
              --optShapes=images:1x3x512x512 --maxShapes=images:1x3x768x768

  Not verified with TensorRT here (no TensorRT in the development environment); ONNX Runtime is.

Not implemented from DoViT: the ``agg_rate`` trick (the first kept token replaced by the mean of the stopped
tokens), the mask-transformer head, loading DoViT's official checkpoints.
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import SegmentationModel
from ._registry import register_model

__all__ = ['ViTSegmenter', 'TokenPassViT', 'gather_tokens', 'scatter_tokens',
           'select_kept_tokens']


def _init_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, n, C), ids (B, k) -> (B, k, C): the tokens at ``ids`` of each image."""
    return tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def scatter_tokens(tokens: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Write ``values`` (B, k, C) back into a copy of ``tokens`` (B, n, C) at ``ids`` (B, k, unique per image)."""
    return tokens.scatter(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]), values)


def select_kept_tokens(stopped: torch.Tensor,
                       bucket_fractions: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens the next blocks process.

    ``stopped`` (B, n) bool with column 0 (cls) always False. Returns ``ids`` (B, k) with each image's active
    tokens first, in their original order, and ``valid`` (B, k) marking them; k is the largest active count
    of the batch (>= 1 by construction), rounded up to a bucket when ``bucket_fractions`` are given. Slots
    past an image's own count hold stopped tokens (padding)."""
    n = stopped.shape[1]
    position = torch.arange(n, device=stopped.device)
    order = torch.argsort(stopped.long() * n + position, dim=1)
    need = (~stopped).sum(1).amax(0)
    if bucket_fractions is not None:
        total = torch.ones_like(position).sum()
        sizes = torch.ceil(torch.tensor(bucket_fractions, device=stopped.device) * total).long()
        need = torch.where(sizes >= need, sizes, total).amin(0)
    ids = order.index_select(1, torch.arange(need, device=stopped.device))
    return ids, ~stopped.gather(1, ids)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, embed_dim, in_chans=3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), x.shape[2:]


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if key_bias is not None:
            attn = attn + key_bias[:, None, None, :]
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_bias)
        return x + self.mlp(self.norm2(x))


class AuxHead(nn.Module):
    """Per-token classifier on the tokens entering a block (the stopping criterion at inference)."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class ViTSegmenter(SegmentationModel):
    """Static ViT segmenter (the token-pass model's twin). Eval: ``model(x)`` -> logits at 1/8."""

    checkpoint_format = 'mmseg'
    patch_size = 16

    def __init__(self, num_classes=150, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0,
                 aux_indices=(2, 5, 8), pos_grid=(32, 32), aux_loss_weight=0.4, exit_conf=0.96):
        super().__init__()
        if list(aux_indices) != sorted(set(aux_indices)) or not 0 < aux_indices[0] or aux_indices[-1] >= depth:
            raise ValueError(f'aux_indices {aux_indices} must be increasing block indices in [1, {depth})')
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.mlp_hidden = int(embed_dim * mlp_ratio)
        self.aux_indices = tuple(aux_indices)
        self.pos_grid = tuple(pos_grid)
        self.aux_loss_weight = aux_loss_weight
        self.exit_conf = exit_conf
        self.patch_embed = PatchEmbed(self.patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid[0] * pos_grid[1], embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.aux_heads = nn.ModuleList(AuxHead(embed_dim, num_classes) for _ in aux_indices)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @property
    def stages(self) -> list[tuple[int, int]]:
        """Block index ranges between aux heads: [(0, a0), (a0, a1), ..., (a_last, depth)]."""
        bounds = (0,) + self.aux_indices + (len(self.blocks),)
        return list(zip(bounds[:-1], bounds[1:]))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        """Images -> tokens (B, 1 + h*w, C) with cls first, and the token grid (h, w)."""
        tokens, grid = self.patch_embed(x)
        pos = self.pos_embed[:, 1:].reshape(1, self.pos_grid[0], self.pos_grid[1], -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode='bilinear', align_corners=False).flatten(2).transpose(1, 2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens + pos], dim=1), grid

    def to_map(self, patch_logits: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, h*w, K) per-token logits -> (B, K, 2h, 2w), i.e. 1/8 of the input."""
        b, _, k = patch_logits.shape
        logits = patch_logits.transpose(1, 2).reshape(b, k, grid[0], grid[1])
        return F.interpolate(logits, scale_factor=2.0, mode='bilinear', align_corners=False)

    def decode(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return self.to_map(self.head(self.norm(tokens[:, 1:])), grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        tokens, grid = self.embed(x)
        aux = []
        for i, blk in enumerate(self.blocks):
            if self.training and i in self.aux_indices:
                aux.append(self.to_map(self.aux_heads[self.aux_indices.index(i)](tokens[:, 1:]), grid))
            tokens = blk(tokens)
        logits = self.decode(tokens, grid)
        return {'logits': logits, 'aux': aux} if self.training else logits

    def macs_for_kept(self, h: int | torch.Tensor, w: int | torch.Tensor,
                      processed: Sequence[float | torch.Tensor] | None = None,
                      with_aux: bool | None = None) -> float | torch.Tensor:
        """MACs of one image of size (h, w) when block i processes ``processed[i]`` tokens (cls included).

        ``processed=None``: every block sees all tokens and no aux head runs (the static model).
        ``with_aux`` (default: ``processed is not None``) adds the aux heads on every patch token.
        Values may be ints/floats or tensors (used inside the exported graph)."""
        num_patches = (h // self.patch_size) * (w // self.patch_size)
        dim, hidden = self.embed_dim, self.mlp_hidden
        if with_aux is None:
            with_aux = processed is not None
        if processed is None:
            processed = [num_patches + 1] * len(self.blocks)
        classifier = num_patches * (2 * dim + dim * self.num_classes + self.num_classes)  # norm, linear, bias
        macs = num_patches * (3 * self.patch_size ** 2 * dim + dim) + classifier
        if with_aux:
            macs = macs + len(self.aux_heads) * classifier
        per_token = 4 * dim * dim + 2 * dim * hidden + (5 * dim + hidden) + 4 * dim + hidden
        for n in processed:
            macs = macs + n * per_token + 2 * n * n * dim
        return macs

    def checkpoint_filter_fn(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our own checkpoints (optionally under 'model.'/'module.'); DoViT's official weights are not
        published in a form we can map, so other keys are refused."""
        own = set(self.state_dict())
        out = {}
        for key, value in state_dict.items():
            for prefix in ('module.', 'model.'):
                if key not in own and key.startswith(prefix):
                    key = key[len(prefix):]
            out[key] = value
        unmapped = sorted(set(out) - own)
        if unmapped:
            raise KeyError(f'unmapped checkpoint keys for {type(self).__name__}: {unmapped[:20]}')
        return out


class TokenPassViT(ViTSegmenter):
    """ViT segmenter whose patch tokens stop at aux heads once confident (DoViT). See the module docstring."""

    def __init__(self, num_classes=150, diff_conf=0.0, token_buckets=None, **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)
        self.diff_conf = diff_conf
        self.token_buckets = tuple(token_buckets) if token_buckets else None
        if self.token_buckets and (max(self.token_buckets) != 1.0 or min(self.token_buckets) <= 0):
            raise ValueError(f'token_buckets {token_buckets} must be fractions in (0, 1] including 1.0')
        self.train_threshold = 1.0

    def set_threshold_schedule(self, it: int, max_iters: int) -> None:
        """DoViT's annealing: the training threshold falls linearly from 1.0 to ``exit_conf``."""
        self.train_threshold = 1.0 - min(1.0, it / max(1, max_iters)) * (1.0 - self.exit_conf)

    def stop_rule(self, aux_logits: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
        """(B, N, K) aux logits -> (B, N) bool: the patch tokens that stop at this head."""
        conf = aux_logits.softmax(dim=-1).amax(dim=-1)
        stop = conf > threshold
        if self.diff_conf > 0:
            stop = stop | (conf < self.diff_conf)
        return stop

    def forward(self, x: torch.Tensor, exit_threshold: float | torch.Tensor | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        if self.training:
            threshold = self.train_threshold if self.train_threshold < 1.0 else None
            if threshold is None:
                return super().forward(x)
            logits, aux, _, _ = self._run(x, threshold)
            return {'logits': logits, 'aux': [self.to_map(a, self._grid(x)) for a in aux]}
        if exit_threshold is None:
            return super().forward(x)
        return self._run(x, exit_threshold)[0]

    def forward_with_stats(self, x: torch.Tensor,
                           exit_threshold: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (logits (N, C, H/8, W/8), kept_fraction float32 (S,), macs float32 scalar per image)."""
        logits, _, kept_fraction, processed = self._run(x, exit_threshold)
        macs = self.macs_for_kept(x.shape[-2], x.shape[-1], processed)
        return logits, kept_fraction, macs.to(torch.float32)

    def _grid(self, x):
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def _run(self, x, threshold):
        """The token-pass forward. Returns logits, per-token aux logits (B, N, K) per head, kept fraction per
        aux head (S,) and the number of tokens each block processed (float tensors, cls included)."""
        tokens, grid = self.embed(x)
        if not torch.is_tensor(threshold):
            threshold = torch.tensor(float(threshold))
        threshold = threshold.to(tokens.dtype)
        all_tokens = torch.ones_like(tokens[0, :, 0]).sum()
        stopped = torch.zeros_like(tokens[:, :, 0], dtype=torch.bool)
        aux_logits, kept_fraction, processed = [], [], []
        for s, (start, end) in enumerate(self.stages):
            if s == 0:
                for blk in self.blocks[start:end]:
                    tokens = blk(tokens)
                processed += [all_tokens] * (end - start)
                continue
            aux = self.aux_heads[s - 1](tokens[:, 1:])
            aux_logits.append(aux)
            stopped = stopped | torch.cat([torch.zeros_like(stopped[:, :1]), self.stop_rule(aux, threshold)], 1)
            kept_fraction.append((~stopped[:, 1:]).float().mean(1).mean(0))
            ids, valid = select_kept_tokens(stopped, self.token_buckets)
            kept = gather_tokens(tokens, ids)
            key_bias = torch.zeros_like(kept[:, :, 0]).masked_fill(~valid, float('-inf'))
            active = kept
            for blk in self.blocks[start:end]:
                active = blk(active, key_bias)
            active = torch.where(valid.unsqueeze(-1), active, kept)
            tokens = scatter_tokens(tokens, ids, active)
            processed += [torch.ones_like(ids[0], dtype=tokens.dtype).sum()] * (end - start)
        logits = self.decode(tokens, grid)
        return logits, aux_logits, torch.stack(kept_fraction), processed


model_cfgs = dict(
    vit_mini=dict(embed_dim=128, depth=8, num_heads=2, aux_indices=(2, 4, 6), pos_grid=(16, 16)),
    vit_tiny=dict(embed_dim=192, depth=12, num_heads=3, aux_indices=(2, 5, 8)),
    vit_small=dict(embed_dim=384, depth=12, num_heads=6, aux_indices=(2, 5, 8)),
    vit_base=dict(embed_dim=768, depth=12, num_heads=12, aux_indices=(2, 5, 8)),
)


def _create(cls, variant, num_classes, **kwargs):
    return cls(num_classes=num_classes, **{**model_cfgs[variant], **kwargs})


@register_model
def tokenpass_vit_mini(num_classes: int = 150, **kwargs) -> TokenPassViT:
    """Robot-sized (dim 128, 8 blocks, aux before blocks 2, 4, 6): trainable on a few CPU cores."""
    return _create(TokenPassViT, 'vit_mini', num_classes, **kwargs)


@register_model
def tokenpass_vit_tiny(num_classes: int = 150, **kwargs) -> TokenPassViT:
    return _create(TokenPassViT, 'vit_tiny', num_classes, **kwargs)


@register_model
def tokenpass_vit_small(num_classes: int = 150, **kwargs) -> TokenPassViT:
    return _create(TokenPassViT, 'vit_small', num_classes, **kwargs)


@register_model
def tokenpass_vit_base(num_classes: int = 150, **kwargs) -> TokenPassViT:
    return _create(TokenPassViT, 'vit_base', num_classes, **kwargs)


@register_model
def static_vit_mini(num_classes: int = 150, **kwargs) -> ViTSegmenter:
    return _create(ViTSegmenter, 'vit_mini', num_classes, **kwargs)


@register_model
def static_vit_tiny(num_classes: int = 150, **kwargs) -> ViTSegmenter:
    return _create(ViTSegmenter, 'vit_tiny', num_classes, **kwargs)


@register_model
def static_vit_small(num_classes: int = 150, **kwargs) -> ViTSegmenter:
    return _create(ViTSegmenter, 'vit_small', num_classes, **kwargs)


@register_model
def static_vit_base(num_classes: int = 150, **kwargs) -> ViTSegmenter:
    return _create(ViTSegmenter, 'vit_base', num_classes, **kwargs)
