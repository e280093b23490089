"""Train a segmentation model from one flat YAML config.

    seg-perception train config/train/topformer_tiny_scenes.yaml [key=value ...]
    torchrun --nproc_per_node 2 -m seg_perception.offline.cli train CONFIG.yaml [key=value ...]

Configuration (ultralytics-style): ``DEFAULTS`` lists every key with its default; the YAML file and then the
``key=value`` overrides (values parsed with ``yaml.safe_load``) replace them. Unknown keys are refused with a
close-match hint and every value is type-checked against its default.

Pipeline (mmseg-style, iteration based):
  * data: ``datasets.open_dataset(data, split, layout)``; each sample is resized to ``input_size`` (what the
    runtime engine does), randomly rescaled by ``scale_range``, padded (label 255) and cropped to ``crop_size``,
    flipped, colour-jittered (albumentations) and normalised with ImageNet mean/std on the 0-255 scale;
  * optimisation: AdamW (no weight decay on 1-d parameters), poly schedule with linear warmup, cross-entropy
    with ``ignore_index=255`` on logits upsampled bilinearly to the crop; auxiliary outputs of RTFormer
    (weight ``aux_weight``); token-pass models use ``nets.tokenpass.tokenpass_loss`` and their threshold
    schedule; optional distillation from a ``teacher`` checkpoint (``kd_weight``);
  * validation every ``val_interval`` iterations: whole images resized to ``input_size``, logits upsampled to
    the label size, mIoU over the whole validation set;
  * run directory ``out``: ``config.yaml``, ``last.pt`` and ``best.pt``, and at the end ``metrics.json`` and
    ``curves.png``. ``resume=true`` continues from ``out/last.pt`` (or ``resume=PATH``).

Checkpoints are plain dicts readable with ``torch.load(weights_only=True)``: ``model`` (state dict), ``arch``,
``num_classes``, ``classes``, ``palette``, ``mean``, ``std``, ``input_size``, plus ``optimizer``,
``scheduler``, ``iter``, ``best_miou``, ``history`` and ``config`` for resuming.

Determinism: the data stream is a function of (seed, iteration) only. ``InfiniteSampler`` yields
``(index, augmentation seed)`` pairs from per-epoch permutations, split across processes by rank (the role of
a DistributedSampler, plus exact resumption mid-epoch); the torch RNG is re-seeded from (seed, iteration,
rank) every step. Two runs with one seed, or a run and its resumed twin, give the same losses.

DDP: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel (nccl with CUDA,
gloo on CPU), ``batch_size`` is the total over all processes, validation is sharded and its confusion matrix
summed, and only rank 0 writes checkpoints, logs and progress bars.
"""
import difflib
import json
import math
import os
import random
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from ...classes import IGNORE_INDEX
from ...runtime.metadata import IMAGENET_MEAN, IMAGENET_STD
from ..evaluation.metrics import ConfusionMatrix

SIZE_DIVISOR = 32

DEFAULTS = {
    # model
    'arch': 'topformer_tiny',      # a name from nets.list_models()
    'num_classes': 0,              # 0: the number of classes of the training set
    'init': '',                    # checkpoint to start from (ours or official); shape mismatches are skipped
    # data
    'data': '',                    # dataset folder, dataset YAML or rosbag2 path
    'val_data': '',                # '' = `data` with split `val_split`; 'none' = no validation
    'layout': '',                  # '' = detect (ade20k, cityscapes, camvid, generic, rosbag)
    'split': 'train',
    'val_split': 'val',
    'image_topic': '',             # rosbag specs only
    'gt_topic': '',
    'input_size': [256, 320],      # [H, W] the network input at inference (the engine resizes to it)
    'crop_size': [192, 256],       # [H, W] training crop, taken after resizing to input_size * scale
    'scale_range': [0.5, 2.0],
    'hflip': 0.5,                  # probability
    'photometric': 0.5,            # probability of colour jitter (brightness, contrast, saturation, hue)
    'mean': IMAGENET_MEAN,         # RGB, 0-255 scale
    'std': IMAGENET_STD,
    'batch_size': 8,               # total over all processes
    'workers': 2,                  # data-loading processes per training process
    # schedule and loss
    'iters': 2000,
    'epochs': 0,                   # > 0: train this many passes over the training set instead of `iters`
    'lr': 1e-3,
    'weight_decay': 0.01,
    'warmup_iters': 100,
    'warmup_ratio': 1e-3,          # learning rate factor at iteration 0
    'poly_power': 1.0,
    'min_lr': 0.0,
    'aux_weight': 0.4,             # auxiliary heads (RTFormer; token-pass: tokenpass_loss's aux_loss_weight)
    'loss_kwargs': {},             # further keyword arguments of a model family's own loss (tokenpass_loss)
    'teacher': '',                 # checkpoint of a teacher (e.g. the static twin of a token-pass model)
    'kd_weight': 0.0,
    'kd_temperature': 1.0,
    'find_unused_parameters': False,  # DDP option, for models that skip parameters in some steps
    # validation, logging, checkpoints
    'val_interval': 500,
    'val_limit': 0,                # > 0: validate on the first N images only
    'save_interval': 0,            # 0 = val_interval; iterations between last.pt writes
    'log_interval': 10,
    'out': 'runs/train',
    'resume': False,               # true: continue from out/last.pt; or a path to a last.pt
    'exist_ok': False,             # allow starting a fresh run in a directory holding last.pt
    # runtime
    'seed': 0,
    'deterministic': True,
    'threads': 0,                  # torch intra-op threads per process; 0 = torch default
    'device': '',                  # '' = cuda (local rank) when available, else cpu
}

_TYPES = {'resume': (bool, str)}
_LISTS = {'input_size': (int, 2), 'crop_size': (int, 2), 'scale_range': (float, 2), 'mean': (float, 3),
          'std': (float, 3)}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(key, value):
    """(ok, value) for ``value`` against the type of ``DEFAULTS[key]``; ints are accepted (as floats) for
    floats, None (as '') for strings, and lists are checked element-wise."""
    default = DEFAULTS[key]
    if key in _TYPES:
        return isinstance(value, _TYPES[key]), value
    if key in _LISTS:
        elem, length = _LISTS[key]
        ok = isinstance(value, (list, tuple)) and len(value) == length and all(
            _is_number(v) if elem is float else _is_int(v) for v in value)
        return ok, [elem(v) for v in value] if ok else value
    if isinstance(default, str):
        return (True, '') if value is None else (isinstance(value, str), value)
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, int):
        return _is_int(value), value
    if isinstance(default, float):
        return (True, float(value)) if _is_number(value) else (False, value)
    if isinstance(default, dict):
        return (True, dict(value)) if isinstance(value, dict) else (False, value)
    return isinstance(value, type(default)), value


def _type_name(key):
    if key in _TYPES:
        return ' or '.join(t.__name__ for t in _TYPES[key])
    if key in _LISTS:
        elem, length = _LISTS[key]
        return f'a list of {length} {elem.__name__}s'
    return type(DEFAULTS[key]).__name__


def check_config(cfg):
    """Return ``cfg`` merged over DEFAULTS; unknown keys (ValueError, with a close-match hint), wrong types
    (TypeError) and impossible values (ValueError) are refused."""
    unknown = [k for k in cfg if k not in DEFAULTS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.6)
            hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        raise ValueError(f'unknown config key(s): {", ".join(hints)}; valid keys: {", ".join(DEFAULTS)}')
    out = {}
    for key, value in {**DEFAULTS, **cfg}.items():
        ok, out[key] = _check_value(key, value)
        if not ok:
            raise TypeError(f'config key {key!r} must be {_type_name(key)}, got {value!r} ({type(value).__name__})')
    if out['batch_size'] < 1 or (out['iters'] < 1 and out['epochs'] < 1):
        raise ValueError('batch_size and iters (or epochs) must be positive')
    if not out['data']:
        raise ValueError('config key "data" (the training dataset) is required')
    for key in ('input_size', 'crop_size'):
        if min(out[key]) < 1 or any(v % SIZE_DIVISOR for v in out[key]):
            raise ValueError(f'{key} {out[key]} must be positive multiples of {SIZE_DIVISOR} (the export stride)')
    if not 0 < out['scale_range'][0] <= out['scale_range'][1]:
        raise ValueError(f'scale_range {out["scale_range"]} must be an increasing pair of positive factors')
    return out


def parse_overrides(pairs):
    """['lr=0.01', 'crop_size=[64,64]'] -> {'lr': 0.01, 'crop_size': [64, 64]} (values via yaml.safe_load)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise ValueError(f'override {pair!r} is not key=value')
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ''
    return out


def load_config(path=None, overrides=()):
    """Read a flat YAML config, apply ``key=value`` overrides and check the result."""
    cfg = {}
    if path:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f'{path}: a config is a flat mapping of keys to values')
    cfg.update(parse_overrides(overrides) if not isinstance(overrides, dict) else overrides)
    return check_config(cfg)


# --------------------------------------------------------------------------------------------------- data


def build_train_transform(cfg):
    """Resize to input_size, random scale, pad (image: mean colour, label: 255), random crop, flip, jitter."""
    import albumentations as A

    (in_h, in_w), (crop_h, crop_w), (lo, hi) = cfg['input_size'], cfg['crop_size'], cfg['scale_range']
    fill = tuple(int(round(v)) for v in cfg['mean'])
    return A.Compose([
        A.Resize(in_h, in_w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
        A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
        A.PadIfNeeded(crop_h, crop_w, position='top_left', border_mode=cv2.BORDER_CONSTANT, fill=fill,
                      fill_mask=IGNORE_INDEX),
        A.RandomCrop(crop_h, crop_w),
        A.HorizontalFlip(p=cfg['hflip']),
        A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.05, p=cfg['photometric']),
    ], seed=cfg['seed'])


def normalize(image, mean, std):
    """RGB uint8 (H, W, 3) -> float32 tensor (3, H, W) normalised on the 0-255 scale."""
    x = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class TrainDataset(torch.utils.data.Dataset):
    """Augmented view of a dataset; items are addressed by ``(index, augmentation seed)`` pairs."""

    def __init__(self, dataset, cfg):
        self.dataset = dataset
        self.transform = build_train_transform(cfg)
        self.mean, self.std = cfg['mean'], cfg['std']

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        image, label = self.dataset[index]
        self.transform.set_random_seed(seed)
        sample = self.transform(image=image, mask=label)
        return normalize(sample['image'], self.mean, self.std), torch.from_numpy(sample['mask'].astype(np.int64))


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless ``(index, augmentation seed)`` stream for one process.

    The global stream concatenates per-epoch permutations seeded by ``seed + epoch``; global step ``s`` takes
    positions ``[s*B*W, (s+1)*B*W)`` and rank ``r`` the ``r``-th block of ``B`` (``B`` per-process batch,
    ``W`` processes). Starting at ``start_iter`` resumes exactly where a run stopped."""

    def __init__(self, size, batch_size, seed=0, rank=0, world_size=1, start_iter=0):
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
                yield perm[p % self.size], _mix_seed(self.seed, p)
            position += global_batch


def _mix_seed(*values):
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def _worker_init(worker_id):
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def open_data(cfg, spec, split):
    from ..data.datasets import open_dataset

    kwargs = {k: cfg[k] for k in ('image_topic', 'gt_topic') if cfg[k]}
    return open_dataset(spec, split=split, layout=cfg['layout'] or None, **kwargs)


# --------------------------------------------------------------------------------------------------- model


def unwrap(model):
    return model.module if hasattr(model, 'module') else model


def main_logits(outputs):
    """The segmentation logits of any model output (tensor, (logits, aux...) or token-pass dict)."""
    if isinstance(outputs, dict):
        return outputs['logits']
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs


def seg_ce(logits, target, ignore_index=IGNORE_INDEX):
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode='bilinear', align_corners=False)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def kd_loss(student, teacher, target, temperature=1.0, ignore_index=IGNORE_INDEX):
    """Pixel-wise KL(teacher || student) at the student's resolution, over labelled pixels, times T^2."""
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode='bilinear', align_corners=False)
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction='none', log_target=True)
    valid = F.interpolate(target[:, None].float(), size=student.shape[-2:], mode='nearest')[:, 0] != ignore_index
    return (kl.sum(1) * valid).sum() / valid.sum().clamp(min=1) * t * t


class SegLoss:
    """Total loss of one batch and its named parts (floats, for logging)."""

    def __init__(self, cfg, family_loss=None):
        self.aux_weight, self.kd_weight, self.kd_t = cfg['aux_weight'], cfg['kd_weight'], cfg['kd_temperature']
        self.family_loss, self.family_kwargs = family_loss, {}
        if family_loss is not None:
            import inspect

            accepted = inspect.signature(family_loss).parameters
            known = {'aux_loss_weight': self.aux_weight, 'kd_weight': self.kd_weight,
                     'kd_temperature': self.kd_t}
            self.family_kwargs = {k: v for k, v in known.items() if k in accepted}
            self.family_kwargs.update(cfg['loss_kwargs'])

    def __call__(self, outputs, target, teacher_logits=None):
        if isinstance(outputs, dict):
            if self.family_loss is None:
                raise TypeError('the model returns a dict in train mode but its family has no loss function')
            result = self.family_loss(outputs, target, ignore_index=IGNORE_INDEX, teacher_logits=teacher_logits,
                                      **self.family_kwargs)
            loss, parts = result if isinstance(result, tuple) else (result, {})
            return loss, {k: float(v) for k, v in parts.items()}
        logits, *aux = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        loss = seg_ce(logits, target)
        parts = {'ce': float(loss.detach())}
        for i, extra in enumerate(aux):
            aux_loss = seg_ce(extra, target)
            loss = loss + self.aux_weight * aux_loss
            parts[f'aux{i}'] = float(aux_loss.detach())
        if teacher_logits is not None and self.kd_weight > 0:
            distill = kd_loss(logits, teacher_logits, target, self.kd_t)
            loss = loss + self.kd_weight * distill
            parts['kd'] = float(distill.detach())
        return loss, parts


def family_loss_for(model):
    """The model family's own loss function when its module defines one (token-pass: ``tokenpass_loss``)."""
    import importlib

    module = importlib.import_module(type(model).__module__)
    return getattr(module, 'tokenpass_loss', None)


def load_init_weights(model, path, log=print):
    """Load a checkpoint (ours or an official one) into ``model``, skipping keys whose shapes differ."""
    from ...nets import read_checkpoint_file

    state = read_checkpoint_file(path)
    own = model.state_dict()
    if not set(state) & set(own) and hasattr(model, 'checkpoint_filter_fn'):
        state = model.checkpoint_filter_fn(state)
    loaded = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not loaded:
        raise ValueError(f'{path}: no parameter matches {type(model).__name__}')
    model.load_state_dict(loaded, strict=False)
    skipped = sorted(set(own) - set(loaded))
    log(f'init: {len(loaded)}/{len(own)} tensors from {path}'
        + (f'; kept fresh: {", ".join(skipped[:8])}{" ..." if len(skipped) > 8 else ""}' if skipped else ''))


def load_checkpoint(path, device='cpu'):
    """(model in eval mode, checkpoint dict) from one of our training checkpoints."""
    from ...nets import create_model

    ckpt = torch.load(str(path), map_location='cpu', weights_only=True)
    missing = [k for k in ('model', 'arch', 'num_classes') if k not in ckpt]
    if missing:
        raise ValueError(f'{path}: not a seg_perception training checkpoint (missing {missing})')
    model = create_model(ckpt['arch'], num_classes=ckpt['num_classes'])
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval(), ckpt


@torch.no_grad()
def predict(model, image, input_size, mean, std, device='cpu', stride=32):
    """Labels (H, W) int64 for one RGB uint8 image: resize to ``input_size`` (``None``: the image size rounded
    to a multiple of ``stride``; interpolation as in the runtime engine), forward in eval mode, upsample the
    logits bilinearly to the image size."""
    h, w = image.shape[:2]
    in_h, in_w = input_size if input_size else (max(stride, round(h / stride) * stride),
                                                max(stride, round(w / stride) * stride))
    resized = image
    if (h, w) != (in_h, in_w):
        shrink = in_h * in_w < h * w
        resized = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x = normalize(resized, mean, std)[None].to(device)
    logits = main_logits(model(x))
    logits = F.interpolate(logits.float(), size=(h, w), mode='bilinear', align_corners=False)
    return logits.argmax(1)[0].cpu().numpy()


def validate(model, dataset, cfg, num_classes, device, rank=0, world_size=1, progress=False):
    """Confusion matrix of ``model`` (a plain module, not its DDP wrapper: ranks see different image counts)
    over ``dataset``, sharded over ranks and summed."""
    from tqdm import tqdm

    model.eval()
    count = len(dataset) if cfg['val_limit'] <= 0 else min(cfg['val_limit'], len(dataset))
    confusion = ConfusionMatrix(num_classes)
    for i in tqdm(range(rank, count, world_size), desc='val', leave=False, disable=not progress, dynamic_ncols=True):
        image, label = dataset[i]
        confusion.update(predict(model, image, cfg['input_size'], cfg['mean'], cfg['std'], device), label)
    if world_size > 1:
        matrix = torch.from_numpy(confusion.matrix)
        dist.all_reduce(matrix)
        confusion.matrix = matrix.numpy()
    model.train()
    return confusion


# --------------------------------------------------------------------------------------------------- loop


def lr_at(it, cfg, max_iters):
    """Poly decay from ``lr`` to ``min_lr`` over ``max_iters``, times a linear warmup factor."""
    lr = (cfg['lr'] - cfg['min_lr']) * (1 - it / max_iters) ** cfg['poly_power'] + cfg['min_lr']
    if it < cfg['warmup_iters']:
        ratio = cfg['warmup_ratio']
        lr *= ratio + (1 - ratio) * it / cfg['warmup_iters']
    return lr


def build_optimizer(model, cfg):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW([{'params': decay, 'weight_decay': cfg['weight_decay']},
                              {'params': no_decay, 'weight_decay': 0.0}], lr=cfg['lr'])


def _setup_distributed():
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    rank = dist.get_rank() if world_size > 1 else 0
    return rank, int(os.environ.get('LOCAL_RANK', '0')), world_size


def _device(cfg, local_rank):
    if cfg['device']:
        return torch.device(cfg['device'])
    return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')


def _seed_everything(seed, deterministic):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _save(obj, path):
    tmp = Path(f'{path}.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _mean(values):
    return float(sum(values) / len(values)) if values else float('nan')


class Trainer:
    """One training run (one process of it under torchrun); ``Trainer(cfg).run()``."""

    def __init__(self, cfg, stop_after=None):
        self.cfg = cfg
        self.stop_after = stop_after
        self.rank, self.local_rank, self.world_size = _setup_distributed()
        self.main = self.rank == 0
        self.device = _device(cfg, self.local_rank)
        self.out = Path(cfg['out'])

    def log(self, message):
        if self.main:
            from tqdm import tqdm
            tqdm.write(message)

    def run(self):
        """Train; returns the final metrics dict (rank 0; other ranks return None)."""
        try:
            return self._run()
        finally:
            if self.world_size > 1 and dist.is_initialized():
                dist.destroy_process_group()

    def _setup(self):
        cfg = self.cfg
        if cfg['threads'] > 0:
            torch.set_num_threads(cfg['threads'])
        _seed_everything(cfg['seed'], cfg['deterministic'])
        if cfg['batch_size'] % self.world_size:
            raise ValueError(f'batch_size {cfg["batch_size"]} is not divisible by {self.world_size} processes')
        self.train_set = open_data(cfg, cfg['data'], cfg['split'])
        self.val_set = None
        if cfg['val_data'].lower() != 'none':
            self.val_set = open_data(cfg, cfg['val_data'] or cfg['data'], cfg['val_split'])
        self.classes = [str(c) for c in self.train_set.classes]
        self.num_classes = cfg['num_classes'] or len(self.classes)
        palette = [list(map(int, c)) for c in self.train_set.palette]
        if len(self.classes) != self.num_classes:
            raise ValueError(f'the dataset has {len(self.classes)} classes, num_classes is {self.num_classes}')
        self.palette = palette
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg['batch_size'])
        self.max_iters = cfg['epochs'] * self.steps_per_epoch if cfg['epochs'] > 0 else cfg['iters']

        from ...nets import create_model

        torch.manual_seed(cfg['seed'])
        model = create_model(cfg['arch'], num_classes=self.num_classes)
        if cfg['init']:
            load_init_weights(model, cfg['init'], self.log)
        self.loss_fn = SegLoss(cfg, family_loss_for(model))
        model.to(self.device).train()
        self.optimizer = build_optimizer(model, cfg)
        self.teacher = None
        if cfg['teacher']:
            self.teacher, _ = load_checkpoint(cfg['teacher'], self.device)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.log(f'teacher: {cfg["teacher"]} (kd_weight {cfg["kd_weight"]})')
        self.start_iter, self.best_miou, self.best_iter = 0, -1.0, -1
        self.history = {'train': [], 'val': []}
        resume = self.out / 'last.pt' if cfg['resume'] is True else Path(cfg['resume']) if cfg['resume'] else None
        if resume is not None:
            self._resume(model, resume)
        elif (self.out / 'last.pt').exists() and not cfg['exist_ok']:
            raise FileExistsError(f'{self.out / "last.pt"} exists: pass resume=true to continue that run, '
                                  'exist_ok=true to start over in it, or another out=')
        if self.world_size > 1:
            if self.device.type == 'cuda':
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=cfg['find_unused_parameters'])
        self.model = model

        per_rank = cfg['batch_size'] // self.world_size
        sampler = InfiniteSampler(len(self.train_set), per_rank, cfg['seed'], self.rank, self.world_size,
                                  self.start_iter)
        self.loader = torch.utils.data.DataLoader(
            TrainDataset(self.train_set, cfg), batch_size=per_rank, sampler=sampler, num_workers=cfg['workers'],
            drop_last=True, pin_memory=self.device.type == 'cuda', worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(cfg['seed'] + self.rank), persistent_workers=cfg['workers'] > 0)

    def _resume(self, model, path):
        if not path.exists():
            raise FileNotFoundError(f'resume: {path} not found')
        ckpt = torch.load(str(path), map_location='cpu', weights_only=True)
        if ckpt.get('arch') != self.cfg['arch'] or ckpt.get('num_classes') != self.num_classes:
            raise ValueError(f'resume: {path} holds {ckpt.get("arch")} with {ckpt.get("num_classes")} classes, '
                             f'the config asks for {self.cfg["arch"]} with {self.num_classes}')
        model.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.start_iter = int(ckpt['iter'])
        self.best_miou, self.best_iter = float(ckpt['best_miou']), int(ckpt['best_iter'])
        self.history = ckpt['history']
        self.log(f'resumed from {path} at iteration {self.start_iter}')

    def checkpoint(self, it):
        cfg = self.cfg
        return {
            'model': {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
            'arch': cfg['arch'],
            'num_classes': self.num_classes,
            'classes': self.classes,
            'palette': self.palette,
            'mean': [float(v) for v in cfg['mean']],
            'std': [float(v) for v in cfg['std']],
            'input_size': [int(v) for v in cfg['input_size']],
            'optimizer': self.optimizer.state_dict(),
            'scheduler': {'name': 'poly_warmup', 'iter': it, 'max_iters': self.max_iters,
                          'lr': lr_at(min(it, self.max_iters - 1), cfg, self.max_iters)},
            'iter': it,
            'best_miou': self.best_miou,
            'best_iter': self.best_iter,
            'history': self.history,
            'config': dict(cfg),
        }

    def _validate(self, it):
        confusion = validate(unwrap(self.model), self.val_set, self.cfg, self.num_classes, self.device, self.rank,
                             self.world_size, progress=self.main)
        metrics = confusion.compute(self.classes)
        miou = metrics['mIoU'] if metrics['mIoU'] is not None else 0.0
        self.history['val'].append({'iter': it, 'mIoU': miou, 'aAcc': metrics['aAcc'] or 0.0})
        improved = miou > self.best_miou
        if improved:
            self.best_miou, self.best_iter = miou, it
        self.log(f'iter {it}: val mIoU {100 * miou:.2f}  aAcc {100 * (metrics["aAcc"] or 0):.2f}  '
                 f'(best {100 * self.best_miou:.2f} @ {self.best_iter})')
        return metrics, confusion, improved

    def _run(self):
        from tqdm import tqdm

        cfg = self.cfg
        self._setup()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / 'config.yaml', 'w') as f:
                yaml.safe_dump(dict(cfg), f, sort_keys=False)
            self.log(f'{cfg["arch"]}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M params, '
                     f'{len(self.train_set)} training images, {self.max_iters} iterations of batch '
                     f'{cfg["batch_size"]} on {self.world_size} x {self.device}, run dir {self.out}')
        model, save_interval = self.model, cfg['save_interval'] or cfg['val_interval']
        end = self.max_iters if self.stop_after is None else min(self.max_iters, self.start_iter + self.stop_after)
        metrics, confusion, window, step_times = None, None, [], []
        data_iter = iter(self.loader)
        bar = tqdm(total=self.max_iters, initial=self.start_iter, desc='train', disable=not self.main,
                   dynamic_ncols=True)
        model.train()
        for it in range(self.start_iter, end):
            tic = time.perf_counter()
            torch.manual_seed(_mix_seed(cfg['seed'], it, self.rank))
            lr = lr_at(it, cfg, self.max_iters)
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            if hasattr(unwrap(model), 'set_threshold_schedule'):
                unwrap(model).set_threshold_schedule(it, self.max_iters)
            images, labels = next(data_iter)
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = main_logits(self.teacher(images))
            loss, parts = self.loss_fn(model(images), labels, teacher_logits)
            if not torch.isfinite(loss):
                raise FloatingPointError(f'iteration {it}: loss is {float(loss)}')
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            window.append(float(loss.detach()))
            step_times.append(time.perf_counter() - tic)
            done = it + 1
            bar.update(1)
            bar.set_postfix(loss=f'{window[-1]:.4f}', lr=f'{lr:.2e}')
            if done % cfg['log_interval'] == 0 or done == end:
                mean_loss = _mean(window)
                if self.world_size > 1:
                    t = torch.tensor([mean_loss], dtype=torch.float64)
                    dist.all_reduce(t)
                    mean_loss = float(t) / self.world_size
                self.history['train'].append({'iter': done, 'loss': mean_loss, 'lr': lr, **parts})
                window = []
            improved = False
            if self.val_set is not None and (done % cfg['val_interval'] == 0 or done == self.max_iters):
                metrics, confusion, improved = self._validate(done)
            if self.main and (improved or done % save_interval == 0 or done == end):
                state = self.checkpoint(done)
                _save(state, self.out / 'last.pt')
                if improved:
                    _save({k: v for k, v in state.items() if k not in ('optimizer', 'history')}, self.out / 'best.pt')
        bar.close()
        if not self.main:
            return None
        return self._report(end, metrics, confusion, step_times)

    def _report(self, end, metrics, confusion, step_times):
        from ..evaluation.metrics import save_confusion_png

        steady = step_times[min(len(step_times) - 1, 5):] if step_times else []
        report = {
            'arch': self.cfg['arch'],
            'iters': end,
            'max_iters': self.max_iters,
            'finished': end >= self.max_iters,
            'world_size': self.world_size,
            'sec_per_iter': _mean(steady) if steady else None,
            'train_time_s': float(sum(step_times)),
            'final_loss': self.history['train'][-1]['loss'] if self.history['train'] else None,
            'best_mIoU': self.best_miou if self.best_iter >= 0 else None,
            'best_iter': self.best_iter if self.best_iter >= 0 else None,
            'val': metrics,
            'history': self.history,
            'config': dict(self.cfg),
        }
        with open(self.out / 'metrics.json', 'w') as f:
            json.dump(report, f, indent=2)
        if confusion is not None:
            save_confusion_png(confusion.matrix, self.classes, self.out / 'confusion.png')
        save_curves(self.history, self.out / 'curves.png')
        best = f'best mIoU {100 * self.best_miou:.2f} @ {self.best_iter}' if self.best_iter >= 0 else 'no validation'
        self.log(f'done: {end}/{self.max_iters} iterations, {report["sec_per_iter"] or 0:.3f} s/iter, {best}; '
                 f'{self.out}')
        return report


def save_curves(history, path):
    """Loss (and learning rate) and validation mIoU against iterations, one PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
    train = history['train']
    if train:
        ax_loss.plot([r['iter'] for r in train], [r['loss'] for r in train], label='loss')
        ax_lr = ax_loss.twinx()
        ax_lr.plot([r['iter'] for r in train], [r['lr'] for r in train], color='tab:gray', alpha=0.5, label='lr')
        ax_lr.set_ylabel('learning rate')
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel('training loss')
    ax_loss.set_title('training loss')
    val = history['val']
    if val:
        ax_miou.plot([r['iter'] for r in val], [100 * r['mIoU'] for r in val], marker='o', label='mIoU')
        ax_miou.plot([r['iter'] for r in val], [100 * r['aAcc'] for r in val], marker='.', label='pixel acc')
        ax_miou.legend()
    ax_miou.set_xlabel('iteration')
    ax_miou.set_ylabel('%')
    ax_miou.set_title('validation')
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return path


def train(cfg, stop_after=None):
    """Run one training from a config dict (checked here) or a path; ``stop_after`` ends this call after that
    many iterations (``last.pt`` is written, so ``resume=true`` continues). Returns the report (rank 0)."""
    cfg = load_config(cfg) if isinstance(cfg, (str, Path)) else check_config(cfg)
    return Trainer(cfg, stop_after=stop_after).run()


def add_arguments(parser):
    parser.add_argument('config', help='flat YAML config (see config/train/)')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='override config keys, values parsed as YAML (e.g. lr=0.001 crop_size=[192,256])')


def run(args):
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, TypeError, OSError) as exc:
        print(f'seg-perception train: {exc}')
        return 2
    report = train(cfg)
    return 0 if report is None or report['finished'] else 1
