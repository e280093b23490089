"""Training batches: the augmentation pipeline and the deterministic, resumable sample stream.

Each sample is fitted to ``input_size`` as the runtime engine will fit it (``resize_mode``: stretched, or
letterboxed with the image padded in the mean colour and the label in the ignore index), randomly rescaled by
``scale_range``, padded (label 255) and cropped to ``crop_size``, flipped, colour-jittered (albumentations) and
normalised with ``mean``/``std`` on the 0-255 scale.

Determinism: the data stream is a function of (seed, iteration) only. :class:`InfiniteSampler` yields
``(index, augmentation seed)`` pairs from per-epoch permutations, split across processes by rank (the role of a
DistributedSampler, plus exact resumption mid-epoch).
"""
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from ...classes import IGNORE_INDEX
from ...runtime.engine import compute_geometry
from ..predict import normalize

if TYPE_CHECKING:
    import albumentations as A

    from ..data.datasets import SegDataset


def build_train_transform(cfg: dict) -> 'A.Compose':
    """(Resize to input_size in 'resize' mode), random scale, pad (image: mean colour, label: 255), random crop,
    flip, jitter."""
    import albumentations as A

    (in_h, in_w), (crop_h, crop_w), (lo, hi) = cfg['input_size'], cfg['crop_size'], cfg['scale_range']
    fill = tuple(int(round(v)) for v in cfg['mean'])
    fit = [A.Resize(in_h, in_w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)] \
        if cfg['resize_mode'] == 'resize' else []
    return A.Compose([
        *fit,
        A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
        A.PadIfNeeded(crop_h, crop_w, position='top_left', border_mode=cv2.BORDER_CONSTANT, fill=fill,
                      fill_mask=IGNORE_INDEX),
        A.RandomCrop(crop_h, crop_w),
        A.HorizontalFlip(p=cfg['hflip']),
        A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.05, p=cfg['photometric']),
        *camera_randomization(cfg['domain_randomization']),
    ], seed=cfg['seed'])


def camera_randomization(p: float) -> list:
    """Domain randomization of the camera, applied with probability ``p``: colour temperature and channel casts,
    tone curve and gamma, defocus or motion blur, sensor noise, downscaling and JPEG artefacts (each step on its
    own draw, so a sample gets a random subset). Haze is :func:`add_haze` (albumentations' RandomFog costs
    0.6 s a frame)."""
    import albumentations as A

    if p <= 0:
        return []
    return [A.Sequential([
        A.OneOf([A.PlanckianJitter(), A.RGBShift(r_shift_limit=30, g_shift_limit=30, b_shift_limit=30)], p=0.5),
        A.OneOf([A.RandomGamma(gamma_limit=(60, 170)), A.RandomToneCurve(scale=0.2)], p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 9)), A.Defocus(radius=(1, 3))],
                p=0.4),
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.06)), A.ISONoise()], p=0.4),
        A.Downscale(scale_range=(0.4, 0.9), p=0.15),
        A.ImageCompression(quality_range=(25, 90), p=0.3),
        A.ToGray(p=0.05),
    ], p=p)]


def recolor_classes(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                    grain: float = 0.0) -> np.ndarray:
    """Domain randomization of appearance: each class gets its own random hue rotation, saturation and
    brightness change and, half the time, a smooth random texture multiplied in, so colour and texture stop being
    a shortcut to the class and shape and context have to carry it. With probability ``grain`` a class's texture
    also gets fine grain (cells of 2-6 pixels), as stucco, fabric or sensor-scale detail have."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    h, w = label.shape
    n = 256
    hue, sat, val = rng.uniform(0, 180, n), rng.uniform(0.3, 1.6, n), rng.uniform(0.6, 1.3, n)
    texture = np.ones((h, w), np.float32)
    for cls in np.unique(label):
        mask = label == cls
        if rng.random() < 0.5:
            cells = int(rng.integers(3, 24))
            noise = cv2.resize(rng.random((cells, cells), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            texture[mask] = 1 + rng.uniform(0.1, 0.6) * (noise[mask] - 0.5)
        if grain > 0 and rng.random() < grain:
            size = rng.uniform(2, 6)
            fine = cv2.resize(rng.random((max(2, int(h / size)), max(2, int(w / size))), dtype=np.float32), (w, h),
                              interpolation=cv2.INTER_LINEAR)
            texture[mask] *= 1 + rng.uniform(0.1, 0.5) * (fine[mask] - 0.5)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue[label], 180)
    hsv[..., 1] = np.clip(hsv[..., 1] * sat[label], 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * val[label] * texture, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def add_haze(image: np.ndarray, rng: np.random.Generator, flat: bool = False) -> np.ndarray:
    """Haze: the image blended towards a light, slightly tinted colour, more towards the top (farther away);
    ``flat``: fog veiling the whole frame evenly (low contrast everywhere, as a dim or misty scene gives)."""
    h = image.shape[0]
    colour = rng.uniform(170, 250) * rng.uniform(0.9, 1.05, 3)
    if flat:
        strength = np.float32(rng.uniform(0.15, 0.6))
    else:
        strength = rng.uniform(0.1, 0.5) * np.linspace(1.0, 0.3, h, dtype=np.float32)[:, None, None]
    return np.clip(image * (1 - strength) + colour * strength, 0, 255).astype(np.uint8)


def add_shadows(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft cast shadows: 1-3 random polygons, blurred at the edges, darken what they cover by 20-60 %, as
    the sun through windows or objects' shadows on the floor do; shadows cross class boundaries, so they carry
    no label information."""
    h, w = image.shape[:2]
    shade = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        centre = rng.uniform((0, h * 0.2), (w, h))
        radius = rng.uniform(0.1, 0.5) * max(h, w)
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
        points = centre + radius * rng.uniform(0.4, 1.0, (angles.size, 1)) * np.stack([np.cos(angles),
                                                                                       np.sin(angles)], 1)
        cv2.fillPoly(shade, [points.astype(np.int32)], float(rng.uniform(0.2, 0.6)))
    shade = cv2.GaussianBlur(shade, (0, 0), rng.uniform(1.0, 0.03 * max(h, w) + 1.0))
    return np.clip(image * (1 - shade)[..., None], 0, 255).astype(np.uint8)


def random_convolution(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture randomization (after RandConv, Xu et al., ICLR 2021): the image filtered by a random 3 -> 3 channel
    kernel of 1, 3, 5 or 7 pixels (weights N(0, 1/(3 k^2))), its channels brought back to the image's own mean and
    spread, then blended with the image by a random weight. Local texture and colour mix change while shapes and
    edges stay where they are, so the network cannot lean on one renderer's textures."""
    k = int(rng.choice([1, 3, 5, 7]))
    weights = rng.normal(0.0, 1.0 / np.sqrt(3 * k * k), (3, 3, k, k)).astype(np.float32)
    x = image.astype(np.float32)
    out = np.empty_like(x)
    for o in range(3):
        out[..., o] = sum(cv2.filter2D(x[..., c], -1, weights[o, c], borderType=cv2.BORDER_REFLECT) for c in range(3))
    mean, spread = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0) + 1.0
    out = (out - out.reshape(-1, 3).mean(0)) / (out.reshape(-1, 3).std(0) + 1e-3) * spread + mean
    alpha = np.float32(rng.uniform(0.0, 1.0))
    return np.clip(alpha * x + (1 - alpha) * out, 0, 255).astype(np.uint8)


def letterbox(image: np.ndarray, label: np.ndarray, input_size: Sequence[int],
              fill: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Image and label letterboxed into ``input_size`` with the engine's geometry and interpolation; the image
    is padded with ``fill`` (the mean colour: 0 once normalised, as in the engine), the label with the ignore
    index."""
    geometry = compute_geometry(image.shape[:2], tuple(input_size), 'letterbox')
    (ch, cw), (oy, ox) = geometry.content_hw, geometry.offset_yx
    if (ch, cw) != tuple(image.shape[:2]):
        interp = cv2.INTER_AREA if ch * cw < image.shape[0] * image.shape[1] else cv2.INTER_LINEAR
        image = cv2.resize(image, (cw, ch), interpolation=interp)
        label = cv2.resize(label, (cw, ch), interpolation=cv2.INTER_NEAREST)
    out_image = np.empty((*geometry.net_hw, 3), np.uint8)
    out_image[:] = np.asarray(fill, np.uint8)
    out_label = np.full(geometry.net_hw, IGNORE_INDEX, label.dtype)
    out_image[oy:oy + ch, ox:ox + cw] = image
    out_label[oy:oy + ch, ox:ox + cw] = label
    return out_image, out_label


class TrainDataset(torch.utils.data.Dataset):
    """Augmented view of a dataset; items are addressed by ``(index, augmentation seed)`` pairs."""

    def __init__(self, dataset, cfg: dict):
        self.dataset = dataset
        self.transform = build_train_transform(cfg)
        self.mean, self.std, self.white_balance = cfg['mean'], cfg['std'], cfg['white_balance']
        self.letterbox_size = cfg['input_size'] if cfg['resize_mode'] == 'letterbox' else None
        self.fill = tuple(int(round(v)) for v in cfg['mean'])
        self.class_recolor, self.grain = cfg['class_recolor'], cfg['texture_grain']
        # the class whose look each label id takes when classes are recoloured (classes told apart by where they
        # are, not by how they look, share one)
        self.look = np.arange(256, dtype=np.uint8)
        for cls, like in cfg['same_look'].items():
            self.look[int(cls)] = int(like)
        self.haze = cfg['haze'] if cfg['haze'] >= 0 else cfg['domain_randomization'] * 0.15
        self.flat_haze, self.shadows, self.random_conv = cfg['flat_haze'], cfg['shadows'], cfg['random_conv']

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        image, label = self.dataset[index]
        rng = np.random.default_rng(seed)
        if rng.random() < self.class_recolor:
            image = recolor_classes(image, self.look[label], rng, self.grain)
        if self.shadows > 0 and rng.random() < self.shadows:   # in the scene, before the camera pipeline
            image = add_shadows(image, rng)
        if self.letterbox_size is not None:
            image, label = letterbox(image, label, self.letterbox_size, self.fill)
        self.transform.set_random_seed(seed)
        sample = self.transform(image=image, mask=label)
        if rng.random() < self.haze:
            sample['image'] = add_haze(sample['image'], rng, self.flat_haze > 0 and rng.random() < self.flat_haze)
        if self.random_conv > 0 and rng.random() < self.random_conv:     # last: the camera's look included
            sample['image'] = random_convolution(sample['image'], rng)
        return (normalize(sample['image'], self.mean, self.std, self.white_balance),
                torch.from_numpy(sample['mask'].astype(np.int64)))


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless ``(index, augmentation seed)`` stream for one process.

    The global stream concatenates per-epoch permutations seeded by ``seed + epoch``; global step ``s`` takes
    positions ``[s*B*W, (s+1)*B*W)`` and rank ``r`` the ``r``-th block of ``B`` (``B`` per-process batch,
    ``W`` processes). Starting at ``start_iter`` resumes exactly where a run stopped."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_iter: int = 0):
        if size < 1:
            raise ValueError('the training set is empty')
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start_iter = rank, world_size, start_iter

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        position = self.start_iter * global_batch
        epoch, perm = None, None
        while True:
            step_start = position + self.rank * self.batch_size
            for p in range(step_start, step_start + self.batch_size):
                if p // self.size != epoch:
                    epoch = p // self.size
                    generator = torch.Generator().manual_seed(self.seed + epoch)
                    perm = torch.randperm(self.size, generator=generator).tolist()
                yield perm[p % self.size], mix_seed(self.seed, p)
            position += global_batch


def mix_seed(*values: int) -> int:
    """One 32-bit seed from several integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def worker_init(worker_id: int) -> None:
    """DataLoader worker: seed numpy and random from the worker's torch seed; OpenCV on one thread (the
    workers are the parallelism)."""
    cv2.setNumThreads(1)
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def open_data(cfg: dict, spec: str, split: str) -> 'SegDataset':
    """The dataset ``spec`` (folder, dataset YAML or rosbag2) opened with the config's layout and topics."""
    from ..data.datasets import open_dataset

    kwargs = {k: cfg[k] for k in ('image_topic', 'gt_topic') if cfg[k]}
    return open_dataset(spec, split=split, layout=cfg['layout'] or None, **kwargs)
