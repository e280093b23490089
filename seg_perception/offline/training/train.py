"""Train a segmentation model from one flat YAML config: the training loop and the ``train`` command.

    seg-perception train config/train/topformer_tiny_scenes.yaml [key=value ...]
    torchrun --nproc_per_node 2 -m seg_perception.offline.cli train CONFIG.yaml [key=value ...]

The config schema is :mod:`.config` (every key, its type and default), the batches :mod:`.augment`; what a model
needs from training it declares itself (:class:`seg_perception.nets.SegmentationModel`: ``training_loss``,
``aux_loss_weight``, ``set_threshold_schedule``; the losses are :mod:`seg_perception.nets.losses`).

Loop (mmseg-style, iteration based):
  * optimisation: AdamW (no weight decay on 1-d parameters), poly schedule with linear warmup; every
    iteration calls ``model.set_threshold_schedule(it, max_iters)`` and takes the loss from
    ``model.training_loss(outputs, labels, teacher_logits, aux_weight=, kd_weight=, kd_temperature=)``;
    ``teacher_logits`` are the eval logits of a ``teacher`` checkpoint when ``kd_weight > 0``;
  * validation every ``val_interval`` iterations with :func:`seg_perception.offline.predict.predict`, the
    runtime engine's geometry (``input_size``, ``resize_mode``), so the validation mIoU is the exported
    model's; mIoU over the whole validation set;
  * run directory ``out``: ``config.yaml``, ``last.pt`` and ``best.pt``, and at the end ``metrics.json`` and
    ``curves.png``. ``resume=true`` continues from ``out/last.pt`` (or ``resume=PATH``).

Checkpoints are plain dicts readable with ``torch.load(weights_only=True)``: ``model`` (state dict), ``arch``,
``num_classes``, ``classes``, ``palette`` and the preprocessing the model was trained with, which export takes
over: ``mean``, ``std``, ``input_size``, ``resize_mode``; plus ``optimizer``, ``scheduler``, ``iter``,
``best_miou``, ``history`` and ``config`` for resuming.

Determinism: the data stream is a function of (seed, iteration) only (:class:`.augment.InfiniteSampler`); the
torch RNG is re-seeded from (seed, iteration, rank) every step. Two runs with one seed, or a run and its resumed
twin, give the same losses.

DDP: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel (nccl with CUDA,
gloo on CPU), ``batch_size`` is the total over all processes, validation is sharded and its confusion matrix
summed, and only rank 0 writes checkpoints, logs and progress bars.
"""
import argparse
import inspect
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ...errors import UserError
from ...nets import SegmentationModel, create_model
from ..evaluation.metrics import ConfusionMatrix
from ..predict import load_checkpoint, predict
from .augment import InfiniteSampler, TrainDataset, mix_seed, open_data, worker_init
from .config import check_config, config_keys_help, load_config

if TYPE_CHECKING:
    from ..data.datasets import SegDataset

# --------------------------------------------------------------------------------------------------- model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, 'module') else model


def load_init_weights(model: torch.nn.Module, path: str | Path, log: Callable[[str], None] = print,
                      new_classes_from: dict | None = None) -> None:
    """Load a checkpoint (ours or an official one) into ``model``, skipping keys whose shapes differ.
    ``new_classes_from`` {new class id: old class id}: a model with more classes than the checkpoint gets the
    checkpoint's per-class rows (classifier weights and biases) for its old classes and, for each new class, a
    copy of the named old class's rows."""
    from ...nets import read_checkpoint_file

    state = read_checkpoint_file(path)
    own = model.state_dict()
    if not set(state) & set(own) and hasattr(model, 'checkpoint_filter_fn'):
        state = model.checkpoint_filter_fn(state)
    for key, value in list(state.items()) if new_classes_from else ():
        mine = own.get(key)
        if mine is not None and value.dim() >= 1 and mine.dim() == value.dim() and mine.shape[1:] == value.shape[1:] \
                and mine.shape[0] == value.shape[0] + len(new_classes_from):
            missing = sorted(set(range(value.shape[0], mine.shape[0])) - {int(c) for c in new_classes_from})
            if missing:
                raise ValueError(f'init_new_classes_from names no old class for new class(es) {missing}')
            copy = {int(c): int(old) for c, old in new_classes_from.items()}
            rows = [value[copy[c]] for c in range(value.shape[0], mine.shape[0])]
            state[key] = torch.cat([value, torch.stack(rows)])
    loaded = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not loaded:
        raise ValueError(f'{path}: no parameter matches {type(model).__name__}')
    model.load_state_dict(loaded, strict=False)
    skipped = sorted(set(own) - set(loaded))
    log(f'init: {len(loaded)}/{len(own)} tensors from {path}'
        + (f'; kept fresh: {", ".join(skipped[:8])}{" ..." if len(skipped) > 8 else ""}' if skipped else ''))


def validate(model: torch.nn.Module, dataset: 'SegDataset', cfg: dict, num_classes: int, device: torch.device,
             rank: int = 0, world_size: int = 1, progress: bool = False) -> ConfusionMatrix:
    """Confusion matrix of ``model`` (a plain module, not its DDP wrapper: ranks see different image counts)
    over ``dataset``, sharded over ranks and summed."""
    from tqdm import tqdm

    model.eval()
    count = len(dataset) if cfg['val_limit'] <= 0 else min(cfg['val_limit'], len(dataset))
    confusion = ConfusionMatrix(num_classes)
    for i in tqdm(range(rank, count, world_size), desc='val', leave=False, disable=not progress, dynamic_ncols=True):
        image, label = dataset[i]
        confusion.update(predict(model, image, cfg['input_size'], cfg['mean'], cfg['std'], cfg['resize_mode'],
                                 device, white_balance=cfg['white_balance']), label)
    if world_size > 1:
        matrix = torch.from_numpy(confusion.matrix)
        dist.all_reduce(matrix)
        confusion.matrix = matrix.numpy()
    model.train()
    return confusion


# --------------------------------------------------------------------------------------------------- loop


def lr_at(it: int, cfg: dict, max_iters: int) -> float:
    """Poly decay from ``lr`` to ``min_lr`` over ``max_iters``, times a linear warmup factor."""
    lr = (cfg['lr'] - cfg['min_lr']) * (1 - it / max_iters) ** cfg['poly_power'] + cfg['min_lr']
    if it < cfg['warmup_iters']:
        ratio = cfg['warmup_ratio']
        lr *= ratio + (1 - ratio) * it / cfg['warmup_iters']
    return lr


def build_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW with ``weight_decay`` on matrices and kernels, none on 1-d parameters (norms, biases)."""
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
        return _config_device(cfg['device'])
    return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')


def _config_device(text: str) -> torch.device:
    """The ``device`` config value as a torch device this machine has (a UserError names it otherwise)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f'device={text!r} is not a torch device (e.g. cpu, cuda, cuda:1)') from None
    if device.type != 'cpu':
        accelerator = torch.accelerator.current_accelerator()
        count = torch.accelerator.device_count() if accelerator and accelerator.type == device.type else 0
        if (device.index or 0) >= count:
            raise UserError(f'device={text!r}: this machine has {count} {device.type} device(s)'
                            + (f' ({device.type}:0 to {device.type}:{count - 1})' if count else '; use device=cpu'))
    return device


def _check_loss_kwargs(model: SegmentationModel, loss_kwargs: dict) -> None:
    """``loss_kwargs`` must be keyword-only arguments of the model's training_loss that the trainer does not set
    itself from config keys (aux_weight, kd_weight, kd_temperature)."""
    params = inspect.signature(model.training_loss).parameters
    takes = [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY
             and name not in ('aux_weight', 'kd_weight', 'kd_temperature')]
    unknown = [str(key) for key in loss_kwargs if key not in takes]
    if unknown:
        raise UserError(f'loss_kwargs: unknown keyword(s) {", ".join(unknown)} of {type(model).__name__}.training_loss'
                        f' (it takes {", ".join(takes)}; aux_weight, kd_weight and kd_temperature are config keys)')


def _next_batch(data_iter: Iterator) -> tuple:
    """The next batch. A bad sample's UserError raised in a loader worker comes back as torch re-raises it, the
    worker's traceback in its message: keep the one line the worker raised."""
    try:
        return next(data_iter)
    except UserError as exc:
        last = str(exc).strip().splitlines()[-1]
        raise UserError(last.partition('UserError: ')[2] or last) from None


def _seed_everything(seed, deterministic):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True   # fixed crop size: cuDNN's timed kernel choice pays once


def _save(obj, path):
    tmp = Path(f'{path}.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _mean(values):
    return float(sum(values) / len(values)) if values else float('nan')


class Trainer:
    """One training run (one process of it under torchrun); ``Trainer(cfg).run()``."""

    def __init__(self, cfg: dict, stop_after: int | None = None):
        self.cfg = cfg
        self.stop_after = stop_after
        self.rank, self.local_rank, self.world_size = _setup_distributed()
        self.main = self.rank == 0
        self.device = _device(cfg, self.local_rank)
        self.out = Path(cfg['out'])

    def log(self, message: str) -> None:
        if self.main:
            from tqdm import tqdm
            tqdm.write(message)

    def run(self) -> dict | None:
        """Train; returns the final metrics dict (rank 0; other ranks return None)."""
        try:
            result = self._run()
            if self.world_size > 1:
                # every rank past its last collective before any tears the group down: one clean-clone CI run
                # (session 40) saw rank 1 abort in gloo's teardown ("terminate called without an active exception")
                # after a run that had finished
                dist.barrier()
            return result
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

        torch.manual_seed(cfg['seed'])
        model = create_model(cfg['arch'], num_classes=self.num_classes)
        if not isinstance(model, SegmentationModel):
            raise TypeError(f'{cfg["arch"]} ({type(model).__name__}) is not a nets.SegmentationModel: it declares '
                            'no training_loss')
        _check_loss_kwargs(model, cfg['loss_kwargs'])
        if cfg['init']:
            load_init_weights(model, cfg['init'], self.log, cfg['init_new_classes_from'])
        if cfg['freeze']:
            try:
                model.freeze([name.strip() for name in cfg['freeze'].split(',') if name.strip()])
            except ValueError as exc:
                raise UserError(f'freeze={cfg["freeze"]!r}: {exc}') from None
            self.log(f'frozen: {", ".join(model.frozen)}')
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
            drop_last=True, pin_memory=self.device.type == 'cuda', worker_init_fn=worker_init,
            generator=torch.Generator().manual_seed(cfg['seed'] + self.rank), persistent_workers=cfg['workers'] > 0)

    def _resume(self, model, path):
        if not path.exists():
            raise FileNotFoundError(f'resume: {path} not found')
        from ...nets.checkpoint import torch_load_weights
        ckpt = torch_load_weights(path)
        if (not isinstance(ckpt, dict) or ckpt.get('arch') != self.cfg['arch']
                or ckpt.get('num_classes') != self.num_classes):
            raise ValueError(f'resume: {path} holds {ckpt.get("arch")} with {ckpt.get("num_classes")} classes, '
                             f'the config asks for {self.cfg["arch"]} with {self.num_classes}')
        model.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.start_iter = int(ckpt['iter'])
        self.best_miou, self.best_iter = float(ckpt['best_miou']), int(ckpt['best_iter'])
        self.history = ckpt['history']
        self.log(f'resumed from {path} at iteration {self.start_iter}')

    def checkpoint(self, it: int) -> dict:
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
            'resize_mode': cfg['resize_mode'],
            'white_balance': cfg['white_balance'],
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
            torch.manual_seed(mix_seed(cfg['seed'], it, self.rank))
            lr = lr_at(it, cfg, self.max_iters)
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            unwrap(model).set_threshold_schedule(it, self.max_iters)
            images, labels = _next_batch(data_iter)
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            teacher_logits = None
            if self.teacher is not None and cfg['kd_weight'] > 0:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
            loss, parts = unwrap(model).training_loss(
                model(images), labels, teacher_logits, aux_weight=None if cfg['aux_weight'] < 0 else cfg['aux_weight'],
                kd_weight=cfg['kd_weight'], kd_temperature=cfg['kd_temperature'], **cfg['loss_kwargs'])
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


def save_curves(history: dict, path: str | Path) -> str | Path:
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


def train(cfg: dict | str | Path, stop_after: int | None = None) -> dict | None:
    """Run one training from a config dict (checked here) or a path; ``stop_after`` ends this call after that
    many iterations (``last.pt`` is written, so ``resume=true`` continues). Returns the report (rank 0)."""
    cfg = load_config(cfg) if isinstance(cfg, (str, Path)) else check_config(cfg)
    return Trainer(cfg, stop_after=stop_after).run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='flat YAML config (see config/train/)')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='override config keys, values parsed as YAML (e.g. lr=0.001 crop_size=[192,256])')
    parser.epilog = config_keys_help()


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, TypeError) as exc:  # config mistakes; a missing file reaches the CLI as it is
        raise UserError(str(exc)) from None
    report = train(cfg)
    return 0 if report is None or report['finished'] else 1
