"""Torch inference of training checkpoints, with the runtime engine's own geometry.

:func:`predict` runs a model in torch on one image exactly as the exported ONNX file runs in
:class:`seg_perception.runtime.engine.SegmentationEngine`: the engine's :func:`~seg_perception.runtime.engine.
compute_geometry` (stretch or letterbox into the network size; with no size, the image's own size rounded UP
to the stride and padded bottom/right) and :func:`~seg_perception.runtime.engine.preprocess` (resize,
normalise, pad), then the post-processing of the exported file's ``output_kind``: 'labels' (``export --head
labels``): the graph's 1/8 logits upsampled bilinearly to the network input and argmax, then the engine's
:func:`~seg_perception.runtime.engine.restore` (crop the padding, nearest resize to the image); 'logits'
(``--head logits``): the engine's :class:`~seg_perception.runtime.upsample.LogitsUpsampler`, straight from the
1/8 logits to the image. A checkpoint and its export therefore score the same.

:func:`checkpoint_preprocessing` is the one reading of the preprocessing a checkpoint was trained with (input
size, mean/std, resize mode, white balance), used by evaluation and export alike.

May import torch, ``seg_perception.nets`` and ``seg_perception.runtime``; used by training (validation),
evaluation (``evaluate --model ckpt.pt``) and deployment (export).
"""
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.engine import balanced_normalisation, compute_geometry, preprocess, restore
from ..runtime.metadata import IMAGENET_MEAN, IMAGENET_STD, OUTPUT_KINDS, RESIZE_MODES
from ..runtime.upsample import LogitsUpsampler

# what checkpoints of this project's trainer held before they recorded it: the trainer always stretched
TRAINER_RESIZE_MODE = 'resize'
# what a model from elsewhere (official or bare weights) gets when nothing says otherwise
DEFAULT_RESIZE_MODE = 'letterbox'


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
              white_balance: str = 'none') -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 tensor (3, H, W) normalised on the 0-255 scale, after the engine's
    ``white_balance`` of the image."""
    mean, std = balanced_normalisation(image, mean, std, white_balance)
    x = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def checkpoint_preprocessing(info: dict) -> dict:
    """``{'input_size', 'mean', 'std', 'resize_mode', 'white_balance'}`` a model was trained with, from a
    checkpoint dict (or the info of one). Missing mean/std are ImageNet's and a missing white balance 'none'; a
    missing resize mode is 'resize' for our trainer's checkpoints (they carry 'arch'; it always stretched) and
    'letterbox' otherwise; a missing input size is None (the caller must supply one)."""
    mode = info.get('resize_mode') or (TRAINER_RESIZE_MODE if 'arch' in info else DEFAULT_RESIZE_MODE)
    if mode not in RESIZE_MODES:
        raise ValueError(f'resize_mode {mode!r} not in {RESIZE_MODES}')
    size = info.get('input_size')
    return {'input_size': [int(v) for v in size] if size else None,
            'mean': [float(v) for v in info.get('mean') or IMAGENET_MEAN],
            'std': [float(v) for v in info.get('std') or IMAGENET_STD],
            'resize_mode': mode, 'white_balance': info.get('white_balance') or 'none'}


def load_checkpoint(path: str | Path, device: str | torch.device = 'cpu') -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint dict) from one of our training checkpoints."""
    from ..errors import UserError
    from ..nets import create_model
    from ..nets.checkpoint import torch_load_weights

    ckpt = torch_load_weights(path)
    missing = [k for k in ('model', 'arch', 'num_classes') if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f'{path}: not a seg_perception checkpoint (missing {missing})')
    model = create_model(ckpt['arch'], num_classes=ckpt['num_classes'])
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval(), ckpt


def labels_head(logits: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tail of a 'labels' model file (``export`` puts it in the graph; benchmarks and :func:`predict` use it
    too): 1/8 logits (N, C, h, w) upsampled bilinearly (align_corners=False) to ``size`` (H, W) -> (labels int64
    (N, H, W) = argmax, confidence float32 (N, H, W) = max softmax).

    The confidence is written as ``1 / sum_c exp(l_c - max l)``: the same value, but ONNX Runtime's Softmax over
    the channel axis of a full-resolution map costs 3x the whole network."""
    up = F.interpolate(logits, size=tuple(size), mode='bilinear', align_corners=False)
    top, labels = up.max(dim=1, keepdim=True)
    return labels.squeeze(1), (up - top).exp().sum(dim=1).reciprocal()


@torch.no_grad()
def predict(model: nn.Module, image: np.ndarray, input_size: Sequence[int] | None, mean: Sequence[float],
            std: Sequence[float], resize_mode: str = TRAINER_RESIZE_MODE, device: str | torch.device = 'cpu',
            stride: int = 32, output_kind: str = 'labels', white_balance: str = 'none') -> np.ndarray:
    """Labels (H, W) (uint8, uint16 above 255 classes) for one RGB uint8 image, as the engine computes them
    from the model's export of ``output_kind``: fit into ``input_size`` [H, W] by ``resize_mode`` (``None``: the
    image's size rounded up to ``stride``, padded), forward in eval mode; 'labels': 1/8 logits upsampled
    bilinearly to the network input, argmax, padding cropped and the labels resized (nearest) to the image;
    'logits': the engine's LogitsUpsampler from the 1/8 logits straight to the image."""
    if output_kind not in OUTPUT_KINDS:
        raise ValueError(f'output_kind {output_kind!r} not in {OUTPUT_KINDS}')
    net_hw = tuple(int(v) for v in input_size) if input_size else None
    geometry = compute_geometry(image.shape[:2], net_hw, resize_mode, stride, dynamic=True)
    x = torch.from_numpy(preprocess(image, geometry, mean, std, white_balance)).to(device)
    logits = model(x).float()
    label_dtype = np.uint8 if logits.shape[1] <= 255 else np.uint16
    if output_kind == 'logits':
        coarse = logits[0].cpu().numpy()
        upsampler = LogitsUpsampler.for_geometry(coarse.shape[1:], geometry.net_hw, geometry.content_hw,
                                                 geometry.offset_yx, geometry.src_hw)
        return upsampler(coarse, label_dtype)[0]
    labels = labels_head(logits, geometry.net_hw)[0][0].cpu().numpy().astype(label_dtype)
    return restore(labels, geometry, cv2.INTER_NEAREST)
