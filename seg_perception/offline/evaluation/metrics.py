"""Segmentation metrics from a confusion matrix (numpy only), mmseg-style.

Intersections and unions are summed over the whole dataset before dividing (not averaged per image):
``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; ``mIoU`` is the mean over classes whose union is non-zero (a class
absent from both the ground truth and the predictions is NaN and left out); pixel accuracy is
``sum(TP) / labelled pixels``. Ground-truth pixels equal to ``ignore_index`` (or outside ``[0, C)``) are not
counted.
"""
import os
from collections.abc import Iterable, Sequence

import numpy as np

from ...classes import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulate a ``(C, C)`` matrix, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray) -> 'ConfusionMatrix':
        """Add one prediction / ground-truth pair (integer arrays of the same shape)."""
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f'prediction shape {pred.shape} != label shape {label.shape}')
        label = label.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        valid = (label != self.ignore_index) & (label >= 0) & (label < self.num_classes)
        label, pred = label[valid], pred[valid]
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f'predicted class ids must lie in [0, {self.num_classes}), got '
                             f'[{pred.min()}, {pred.max()}]')
        n = self.num_classes
        self.matrix += np.bincount(label * n + pred, minlength=n * n).reshape(n, n)
        return self

    def merge(self, other: 'ConfusionMatrix | np.ndarray') -> 'ConfusionMatrix':
        self.matrix += other.matrix if isinstance(other, ConfusionMatrix) else np.asarray(other, np.int64)
        return self

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        return compute_metrics(self.matrix, class_names)


def compute_metrics(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Metrics dict (JSON-ready) from a confusion matrix: ``mIoU``, ``aAcc`` (pixel accuracy), ``mAcc``,
    per-class ``IoU`` / ``Acc`` (None where undefined) and the pixel counts."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f'{len(names)} class names for a {n}x{n} confusion matrix')
    intersect = np.diag(matrix).astype(np.float64)
    area_label = matrix.sum(axis=1).astype(np.float64)
    area_pred = matrix.sum(axis=0).astype(np.float64)
    union = area_label + area_pred - intersect
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, intersect / union, np.nan)
        acc = np.where(area_label > 0, intersect / area_label, np.nan)
    total = area_label.sum()
    return {
        'mIoU': _nanmean(iou),
        'aAcc': float(intersect.sum() / total) if total > 0 else None,
        'mAcc': _nanmean(acc),
        'IoU': {name: _float_or_none(v) for name, v in zip(names, iou)},
        'Acc': {name: _float_or_none(v) for name, v in zip(names, acc)},
        'pixels': {name: int(v) for name, v in zip(names, area_label)},
        'num_pixels': int(total),
    }


class FrameAreas:
    """Per-frame class areas (intersection, ground truth, prediction: (3, C) per frame, not a C x C matrix, so
    that thousands of frames of 150 classes stay small) for :func:`bootstrap_miou`."""

    def __init__(self):
        self.frames = []

    def add(self, matrix: np.ndarray) -> None:
        """One frame's confusion matrix."""
        matrix = np.asarray(matrix, np.int64)
        self.frames.append(np.stack([np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)]))


def _resampled_miou(areas: FrameAreas, weights: np.ndarray) -> np.ndarray:
    """The dataset mIoU of each resample: ``weights`` (R, F) says how often each frame is drawn."""
    per_frame = np.stack(areas.frames).astype(np.float64)                   # (F, 3, C)
    sums = (weights @ per_frame.reshape(len(per_frame), -1)).reshape(len(weights), *per_frame.shape[1:])
    inter, label, pred = sums[:, 0], sums[:, 1], sums[:, 2]                 # each (R, C)
    union = label + pred - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, inter / union, np.nan)
    return np.nanmean(iou, axis=1)


def bootstrap_miou(areas: FrameAreas, baseline: FrameAreas | None = None, resamples: int = 1000,
                   level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """The ``level`` interval (lo, hi) of the dataset mIoU over frames drawn with replacement (``resamples``
    times, a fixed ``seed``): how much the mIoU of this many frames moves with the choice of frames. With a
    ``baseline`` (another model on the same frames, in the same order): the interval of the difference
    mIoU - baseline mIoU, both scored on the same draws (paired, so what the frames share cancels). None with
    fewer than 2 frames."""
    n = len(areas.frames)
    if n < 2:
        return None
    if baseline is not None and len(baseline.frames) != n:
        raise ValueError(f'{n} frames against {len(baseline.frames)} of the baseline')
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(np.float64)
    miou = _resampled_miou(areas, weights)
    if baseline is not None:
        miou -= _resampled_miou(baseline, weights)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(miou, [tail, 100 - tail])
    return float(lo), float(hi)


def _nanmean(values):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def _float_or_none(value):
    return None if np.isnan(value) else float(value)


def save_confusion_png(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, normalize: bool = True,
                       title: str = 'Confusion matrix (rows: ground truth)') -> str | os.PathLike:
    """Write a confusion-matrix heat map (row-normalised by default) with matplotlib's Agg backend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    n = matrix.shape[0]
    size = 1.5 + 0.6 * n
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(shown, cmap='Blues', vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), class_names, rotation=45, ha='right')
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel('prediction')
    ax.set_ylabel('ground truth')
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                value = shown[i, j]
                ax.text(j, i, f'{value:.2f}' if normalize else f'{int(value)}', ha='center', va='center',
                        fontsize=7, color='white' if value > 0.5 * (shown.max() or 1) else 'black')
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return path


def metrics_table(metrics: dict, extra_rows: Iterable[tuple[str, object]] = ()) -> str:
    """Markdown table: one row per class (IoU, Acc, pixels), then the summary rows."""
    lines = ['| class | IoU | Acc | pixels |', '|---|---:|---:|---:|']
    for name, iou in metrics['IoU'].items():
        lines.append(f'| {name} | {_pct(iou)} | {_pct(metrics["Acc"][name])} | {metrics["pixels"][name]} |')
    lines.append(f'| **mean** | **{_pct(metrics["mIoU"])}** | {_pct(metrics["mAcc"])} | {metrics["num_pixels"]} |')
    lines.append('')
    lines.append('| metric | value |')
    lines.append('|---|---:|')
    lines.append(f'| mIoU | {_pct(metrics["mIoU"])} |')
    lines.append(f'| pixel accuracy | {_pct(metrics["aAcc"])} |')
    for key, value in extra_rows:
        lines.append(f'| {key} | {value} |')
    return '\n'.join(lines)


def _pct(value):
    return '-' if value is None else f'{100 * value:.2f}'
