"""Confidence calibration and domain-shift statistics: measuring and fitting (the command is
``seg-perception calibrate``, :mod:`seg_perception.offline.deploy.calibrate`).

* :class:`ReliabilityStats`: pixel-level expected calibration error (ECE, 15 equal-width confidence bins:
  sum over bins of |accuracy - mean confidence| weighted by the bin's share of pixels) of the engine's published
  confidence against the correctness of its published labels, and the reliability diagram (PNG).
* :func:`fit_temperature`: temperature scaling (one temperature, or one per class) minimising the pixel
  negative log-likelihood of the ground truth under ``softmax(logits / T)``; the logits are the engine's own
  coarse logits interpolated bilinearly at randomly sampled pixels (:func:`sample_pixels`), exactly the logits
  the engine's labels come from.
* :func:`collect`: runs the engine over a dataset and gathers sampled pixels, per-frame shift features
  (:func:`seg_perception.runtime.shift.frame_features`) and reliability statistics in one pass.
"""
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...runtime.engine import SegmentationEngine, compute_geometry
from ...runtime.shift import frame_features
from ...runtime.upsample import LogitsUpsampler, max_softmax

if TYPE_CHECKING:
    from ..data.datasets import SegDataset

N_BINS = 15


class ReliabilityStats:
    """Per-bin pixel counts, confidence sums and correct counts (15 equal-width bins over [0, 1])."""

    def __init__(self, n_bins: int = N_BINS):
        self.n_bins = n_bins
        self.count = np.zeros(n_bins, np.int64)
        self.conf_sum = np.zeros(n_bins, np.float64)
        self.correct = np.zeros(n_bins, np.int64)

    def add(self, confidence: np.ndarray, labels: np.ndarray, gt: np.ndarray, ignore_index: int = 255) -> None:
        valid = gt != ignore_index
        conf = confidence[valid].astype(np.float64)
        right = (labels[valid] == gt[valid])
        bins = np.minimum((conf * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.count += np.bincount(bins, minlength=self.n_bins)
        self.conf_sum += np.bincount(bins, weights=conf, minlength=self.n_bins)
        self.correct += np.bincount(bins, weights=right, minlength=self.n_bins).astype(np.int64)

    @classmethod
    def from_summary(cls, summary: dict) -> 'ReliabilityStats':
        """Rebuild the statistics from :meth:`summary`'s dict (e.g. read back from a report's JSON)."""
        stats = cls(summary['bins'])
        stats.count = np.asarray(summary['bin_count'], np.int64)
        stats.conf_sum = np.asarray(summary['bin_confidence'], np.float64) * stats.count
        stats.correct = np.rint(np.asarray(summary['bin_accuracy'], np.float64) * stats.count).astype(np.int64)
        return stats

    @property
    def pixels(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float | None:
        if not self.pixels:
            return None
        nonempty = self.count > 0
        gap = np.abs(self.correct[nonempty] / self.count[nonempty] - self.conf_sum[nonempty] / self.count[nonempty])
        return float((gap * self.count[nonempty]).sum() / self.pixels)

    def summary(self) -> dict:
        pixels = max(self.pixels, 1)
        return {'ece': self.ece(), 'pixels': self.pixels, 'mean_confidence': float(self.conf_sum.sum() / pixels),
                'pixel_accuracy': float(self.correct.sum() / pixels), 'bins': self.n_bins,
                'bin_count': self.count.tolist(), 'bin_accuracy': (self.correct / np.maximum(self.count, 1)).tolist(),
                'bin_confidence': (self.conf_sum / np.maximum(self.count, 1)).tolist()}

    def save_png(self, path: str | os.PathLike, title: str = 'reliability') -> None:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        edges = np.linspace(0, 1, self.n_bins + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        acc = np.where(self.count > 0, self.correct / np.maximum(self.count, 1), np.nan)
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.5, 5.5), gridspec_kw={'height_ratios': [3, 1]}, sharex=True)
        ax.bar(centers, acc, width=1 / self.n_bins, edgecolor='k', color='tab:blue', label='pixel accuracy')
        ax.plot([0, 1], [0, 1], 'k--', lw=1, label='perfect calibration')
        ax.set_ylabel('accuracy')
        ece = self.ece()
        ax.set_title(f'{title}\nECE {100 * ece:.2f} % ({self.pixels} px)' if ece is not None else title, fontsize=9)
        ax.legend(fontsize=8, loc='upper left')
        ax2.bar(centers, self.count / max(self.pixels, 1), width=1 / self.n_bins, color='tab:gray', edgecolor='k')
        ax2.set_xlabel('confidence')
        ax2.set_ylabel('share of pixels')
        ax2.set_xlim(0, 1)
        fig.tight_layout()
        fig.savefig(str(path), dpi=90)
        plt.close(fig)


def sample_pixels(logits: np.ndarray, upsampler: LogitsUpsampler, gt: np.ndarray, count: int,
                  rng: np.random.Generator, ignore_index: int = 255) -> tuple:
    """Up to ``count`` labelled pixels of one frame: their bilinearly interpolated logits (n, C) float32 (the
    logits the engine's labels are the argmax of), ground-truth classes (n,) int64, and the four coarse corner
    logits (4, n, C) with their bilinear weights (n, 4) (the engine's confidence interpolates the corners' max
    softmax)."""
    ys, xs = np.nonzero(gt != ignore_index)
    if len(ys) > count:
        pick = rng.choice(len(ys), count, replace=False)
        ys, xs = ys[pick], xs[pick]
    r, c = upsampler.rows, upsampler.cols
    fy, fx = r.frac[ys][:, None], c.frac[xs][:, None]
    lt = logits.transpose(1, 2, 0)
    corners = np.stack([lt[r.i0[ys], c.i0[xs]], lt[r.i0[ys], c.i1[xs]], lt[r.i1[ys], c.i0[xs]],
                        lt[r.i1[ys], c.i1[xs]]]).astype(np.float32)
    weights = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    z = np.einsum('qnc,nq->nc', corners, weights)
    return z.astype(np.float32), gt[ys, xs].astype(np.int64), corners, weights.astype(np.float32)


def nll(z: np.ndarray, y: np.ndarray, inv_t: float | np.ndarray) -> float:
    """Mean negative log-likelihood of classes ``y`` under ``softmax(z * inv_t)``."""
    s = z * np.asarray(inv_t, np.float32)
    top = s.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
    return float(np.mean(lse - s[np.arange(len(y)), y]))


def sample_ece(z: np.ndarray, y: np.ndarray, inv_t: float | np.ndarray = 1.0, corners: np.ndarray | None = None,
               weights: np.ndarray | None = None) -> float:
    """ECE of the sampled pixels with the labels of the raw logits ``z`` and, as confidence, the max softmax of
    ``z * inv_t`` or, given the corner logits and weights of :func:`sample_pixels`, what the engine publishes:
    the corners' max softmax of ``corners * inv_t``, interpolated."""
    pred = z.argmax(axis=1)
    if corners is None:
        s = z * np.asarray(inv_t, np.float32)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        conf = p[np.arange(len(y)), pred] / p.sum(axis=1)
    else:
        conf = np.einsum('qn,nq->n', max_softmax(corners * np.asarray(inv_t, np.float32), axis=-1), weights)
    stats = ReliabilityStats()
    stats.add(conf, pred, y, ignore_index=-1)
    return stats.ece()


def fit_temperature(z: np.ndarray, y: np.ndarray, per_class: bool = False, iters: int = 300) -> np.ndarray:
    """Inverse temperature(s) minimising the pixel NLL: a (1,) array (one temperature: golden-section search
    on log T in [-3, 3]) or a (C,) array (per class: Adam on log 1/T_c from the best single temperature)."""
    lo, hi = -3.0, 3.0
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(z, y, np.exp(a)), nll(z, y, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(z, y, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(z, y, np.exp(b))
    scalar = np.array([np.exp((lo + hi) / 2)])
    if not per_class:
        return scalar
    theta = np.full(z.shape[1], np.log(scalar[0]))
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    onehot = np.eye(z.shape[1], dtype=np.float32)[y]
    for t in range(1, iters + 1):
        inv = np.exp(theta).astype(np.float32)
        s = z * inv
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        # d NLL / d inv_c = mean over pixels of z_c * (p_c - onehot_c); chain rule to log inv
        grad = ((p - onehot) * z).mean(axis=0) * inv
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad ** 2
        theta -= 0.02 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return np.exp(theta)


def collect(engine: SegmentationEngine, dataset: 'SegDataset', limit: int = 0, pixels_per_frame: int = 2000,
            seed: int = 0, progress: bool = True, pixels: bool = True, labels: bool = True) -> dict:
    """One engine pass over ``dataset`` (a logits model): sampled pixels ``z``/``y`` (when ``pixels``), per-frame
    shift ``features`` (N, D), the graph's ``shift_features`` as ``graph`` (N, G) when the model has them, and
    the :class:`ReliabilityStats` of the engine's published confidence (not with ``labels=False``: frames whose
    labels are in another class set)."""
    from tqdm import tqdm

    if engine.meta['output_kind'] != 'logits':
        raise ValueError(f'{engine.model_path}: calibration needs a logits model (output_kind is '
                         f'{engine.meta["output_kind"]!r}); convert it with python -m '
                         'seg_perception.offline.graph.logits_head')
    rng = np.random.default_rng(seed)
    ignore = getattr(dataset, 'ignore_index', 255)
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    if count == 0:
        raise ValueError('no labelled frames in the data')
    zs, ys, cs, ws, feats, graph, stats = [], [], [], [], [], [], ReliabilityStats()
    for i in tqdm(range(count), desc='calibration data', disable=not progress, dynamic_ncols=True):
        image, gt = dataset[i]
        result = engine.infer(image)
        feats.append(frame_features(result.logits))
        if result.shift_features is not None:
            graph.append(result.shift_features)
        if labels:
            stats.add(result.confidence, result.labels, gt, ignore)
        if pixels:
            g = compute_geometry(image.shape[:2], engine.net_hw, engine.meta['resize_mode'], engine.meta['stride'],
                                 engine.meta['dynamic_hw'])
            up = LogitsUpsampler.for_geometry(result.logits.shape[1:], g.net_hw, g.content_hw, g.offset_yx,
                                              g.src_hw)
            z, y, corners, weights = sample_pixels(result.logits, up, gt, pixels_per_frame, rng, ignore)
            zs.append(z)
            ys.append(y)
            cs.append(corners)
            ws.append(weights)
    out = {'features': np.stack(feats), 'reliability': stats, 'frames': count}
    if graph:
        out['graph'] = np.stack(graph)
    if pixels:
        out['z'], out['y'] = np.concatenate(zs), np.concatenate(ys)
        out['corners'], out['weights'] = np.concatenate(cs, axis=1), np.concatenate(ws)
    return out


def auroc(negatives: Sequence[float] | np.ndarray, positives: Sequence[float] | np.ndarray) -> float:
    """Probability that a positive (shifted) frame scores above a negative (own) one; ties count half."""
    neg, pos = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    _, inverse, counts = np.unique(np.concatenate([neg, pos]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]   # 1-based ranks, ties at their average rank
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))
