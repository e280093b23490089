"""Domain-shift monitor: a per-frame score of how unlike the model's training data the input is.

The score is the Mahalanobis distance of a small per-frame feature vector, computed from the network's coarse
logits (no extra graph output), to the mean and covariance of the same vector over the training frames
(stored in the model's metadata as ``shift_stats`` by ``seg-perception calibrate --shift``). The features
(``FEATURES``): per class the spatial mean and standard deviation of the logit and the share of pixels
predicted, plus the mean max-softmax, mean normalised entropy and mean energy (-logsumexp) over the frame; the
statistics use a selection of them (``select``, chosen by measuring AUROC; the shipped scene model uses none,
its internal features below separate better). Confidence statistics alone miss scenes the model is wrongly sure
about (mean max-softmax: AUROC 0.56 own vs independent renderer).

Optionally (``calibrate --taps``) the graph itself also outputs ``shift_features``: pooled statistics of internal
feature maps, centred and whitened with training statistics, one block per tap, so each block's length is that
tap's Mahalanobis distance (``seg_perception.offline.deploy.shift_features``). The frame score is then the sum of
the distances, each divided by its median over the training frames (``scale``): the logits term (none when
``select`` is empty) and one term per block (metadata ``graph_groups``: name, stat, size, scale).

With ``knn`` K (``calibrate --tap-knn K``) a tap's term is instead the distance from the frame's whitened block to
its K-th nearest training frame's (metadata ``reference``: the training frames' whitened blocks, float16): a
frame near any training frame scores low even where their mean and covariance describe the training set poorly.
The node smooths the per-frame score over a window of frames (mean) and warns above the metadata's threshold.
Robot side: numpy only.
"""
import base64
import collections

import numpy as np

FEATURES = 'logit_stats_v1'


def feature_names(num_classes: int) -> list[str]:
    """Names of :func:`frame_features`' entries: mean<c>, std<c>, share<c> per class c, maxsoftmax, entropy,
    energy."""
    return ([f'{kind}{c}' for kind in ('mean', 'std', 'share') for c in range(num_classes)]
            + ['maxsoftmax', 'entropy', 'energy'])


def frame_features(logits: np.ndarray) -> np.ndarray:
    """(C, h, w) logits -> (3C + 3,) float64 feature vector (see the module docstring, :func:`feature_names`)."""
    c = logits.shape[0]
    flat = logits.reshape(c, -1).astype(np.float64, copy=False)
    top = flat.max(axis=0)
    shifted = np.exp(flat - top)
    denom = shifted.sum(axis=0)
    prob = shifted / denom
    entropy = -(prob * np.log(np.maximum(prob, 1e-12))).sum(axis=0) / np.log(c)
    energy = -(top + np.log(denom))
    share = np.bincount(flat.argmax(axis=0), minlength=c) / flat.shape[1]
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1), share,
                           [(1.0 / denom).mean(), entropy.mean(), energy.mean()]])


def mahalanobis(selected: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of (..., k) selected feature vectors to ``mean`` under ``precision`` (k, k)."""
    d = np.asarray(selected, np.float64) - mean
    return np.sqrt(np.maximum(np.einsum('...i,ij,...j->...', d, precision, d), 0.0))


def fit_statistics(features: np.ndarray, select: list[str], shrinkage: float = 0.05) -> dict:
    """Mean and precision (inverse of the shrunk covariance) of the ``select``-ed features (names, see
    :func:`feature_names`) of (N, 3C + 3) training-frame features. An empty ``select``: no logits term (a score
    of graph taps only; :class:`ShiftScorer` then needs ``graph_groups``)."""
    names = feature_names((np.asarray(features).shape[1] - 3) // 3)
    unknown = [n for n in select if n not in names]
    if unknown:
        raise ValueError(f'unknown shift features {unknown}; choose from {", ".join(names)}')
    if not select:
        return {'features': FEATURES, 'select': [], 'mean': [], 'precision': []}
    features = np.asarray(features, np.float64)[:, [names.index(n) for n in select]]
    mean = features.mean(axis=0)
    cov = np.atleast_2d(np.cov(features, rowvar=False))   # one feature: a 1x1 matrix
    cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(mean))
    return {'features': FEATURES, 'select': list(select), 'mean': mean.tolist(),
            'precision': np.linalg.inv(cov).tolist()}


def encode_reference(vectors: np.ndarray) -> dict:
    """(N, D) reference vectors -> metadata ``reference`` (float16, base64); read back by
    :func:`decode_reference`, which is what the scorer compares with, so fit on ``decode_reference(encode(x))``."""
    vectors = np.ascontiguousarray(vectors, np.float16)
    return {'shape': list(vectors.shape), 'float16_base64': base64.b64encode(vectors.tobytes()).decode('ascii')}


def decode_reference(reference: dict) -> np.ndarray:
    """Metadata ``reference`` -> (N, D) float64; ValueError when it is malformed."""
    try:
        n, d = (int(v) for v in reference['shape'])
        raw = base64.b64decode(reference['float16_base64'], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f'shift_stats reference is malformed ({exc})') from None
    if n < 1 or d < 1 or len(raw) != 2 * n * d:
        raise ValueError(f'shift_stats reference holds {len(raw)} bytes, not {n} x {d} float16 values')
    return np.frombuffer(raw, np.float16).reshape(n, d).astype(np.float64)


def kth_nearest(queries: np.ndarray, reference: np.ndarray, k: int, leave_one_out: bool = False,
                reference_lengths: np.ndarray | None = None) -> np.ndarray:
    """(M, d) queries, (N, d) reference -> (M,) Euclidean distance of each query to its ``k``-th nearest reference
    row; ``leave_one_out``: the queries are the reference rows themselves, each not counted as its own neighbour;
    ``reference_lengths``: the rows' squared lengths, when already known."""
    queries, reference = np.atleast_2d(queries), np.atleast_2d(reference)
    if reference_lengths is None:
        reference_lengths = (reference ** 2).sum(1)
    queries = queries.astype(reference.dtype, copy=False)
    d2 = (queries ** 2).sum(1)[:, None] + reference_lengths[None, :] - 2.0 * queries @ reference.T
    if leave_one_out:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0.0))


class ShiftScorer:
    """Scores frames against ``shift_stats`` metadata ({'features', 'select', 'mean', 'precision', 'threshold',
    'window'}, optionally 'logits_scale', 'graph_groups', 'knn' and 'reference'); :meth:`update` adds one frame's
    logits (and the graph's ``shift_features``) and returns (frame score, smoothed score)."""

    def __init__(self, stats: dict, window: int | None = None):
        if stats.get('features') != FEATURES:
            raise ValueError(f'shift_stats features {stats.get("features")!r} are not {FEATURES!r}; refit them '
                             'with `seg-perception calibrate --shift`')
        self.select = list(stats['select'])
        self.mean = np.asarray(stats['mean'], np.float64)
        if len(self.select) != len(self.mean):
            raise ValueError('shift_stats select and mean differ in length')
        self._index = None   # positions of the selected features, once the number of classes is known
        self.precision = np.asarray(stats['precision'], np.float64)
        if not self.select:   # no logits term: graph taps only
            self.precision = self.precision.reshape(0, 0)
        if self.precision.shape != (len(self.mean), len(self.mean)):
            raise ValueError('shift_stats precision must be a DxD matrix for a D-long mean')
        self.threshold = float(stats.get('threshold', np.inf))
        self.window = int(window or stats.get('window', 1))
        self._recent = collections.deque(maxlen=max(1, self.window))
        self.logits_scale = float(stats.get('logits_scale', 1.0))
        self.groups = [(str(g['name']), int(g['size']), float(g['scale'])) for g in stats.get('graph_groups', ())]
        if self.logits_scale <= 0 or any(size < 1 or scale <= 0 for _, size, scale in self.groups):
            raise ValueError('shift_stats scales and group sizes must be positive')
        if not self.select and not self.groups:
            raise ValueError('shift_stats select no logit statistics and no graph taps: nothing to score')
        self.graph_size = sum(size for _, size, _ in self.groups)
        self._group_starts = np.cumsum([size for _, size, _ in self.groups])[:-1]   # where each block begins
        self.knn = int(stats.get('knn', 0))
        self._reference = None   # per tap: the training frames' whitened blocks (N, size)
        if self.knn:
            reference = decode_reference(stats.get('reference') or {})
            if not self.groups or reference.shape[1] != self.graph_size or not 1 <= self.knn <= len(reference):
                raise ValueError(f'shift_stats knn {self.knn} needs graph taps and a reference of at least that many '
                                 f'frames x {self.graph_size} values, got {reference.shape[0]} x {reference.shape[1]}')
            # per tap: the reference rows (float32) and their squared lengths, computed once
            self._reference = [(np.ascontiguousarray(r, np.float32), (r * r).sum(axis=1).astype(np.float32))
                               for r in np.split(reference, self._group_starts, axis=1)]

    def score(self, logits: np.ndarray, graph_features: np.ndarray | None = None) -> float:
        """One frame's score: the Mahalanobis distance of its logits features to the training statistics, plus,
        for a model with ``graph_groups``, the lengths of its ``shift_features`` blocks (each term scaled). Without
        logit statistics (``select`` empty) the logits are not read."""
        return self.distance(frame_features(logits) if self.select else None, graph_features)

    def distance(self, features: np.ndarray | None, graph_features: np.ndarray | None = None) -> float:
        """The score of a full :func:`frame_features` vector (its selected entries; unused, may be None, without
        logit statistics) and the graph's ``shift_features`` (required when the statistics have ``graph_groups``)."""
        total = 0.0
        if self.select:
            if self._index is None or len(features) != self._index[0]:
                names = feature_names((len(features) - 3) // 3)
                missing = [n for n in self.select if n not in names]
                if missing:
                    raise ValueError(f'shift_stats use features {missing} this model\'s logits do not have')
                self._index = (len(features), [names.index(n) for n in self.select])
            distance = mahalanobis(np.asarray(features)[self._index[1]], self.mean, self.precision)
            total = float(distance) / self.logits_scale
        if self.groups:
            blocks = None if graph_features is None else np.asarray(graph_features, np.float64).reshape(-1)
            if blocks is None or len(blocks) != self.graph_size:
                raise ValueError(f'shift_stats need the graph output shift_features ({self.graph_size} values), got '
                                 f'{"none" if blocks is None else len(blocks)}')
            for i, (block, (_, _, scale)) in enumerate(zip(np.split(blocks, self._group_starts), self.groups)):
                if self._reference is None:
                    distance = np.sqrt(block @ block)
                else:
                    rows, lengths = self._reference[i]
                    distance = kth_nearest(block, rows, self.knn, reference_lengths=lengths)[0]
                total += float(distance) / scale
        return total

    def update(self, logits: np.ndarray, graph_features: np.ndarray | None = None) -> tuple[float, float]:
        frame = self.score(logits, graph_features)
        self._recent.append(frame)
        return frame, float(np.mean(self._recent))

    def alarmed(self, smoothed: float | np.ndarray) -> np.bool_ | np.ndarray:
        """The alarm rule: a smoothed score (or an array of them) above the threshold."""
        return np.greater(smoothed, self.threshold)


def smooth(scores: np.ndarray, window: int) -> np.ndarray:
    """The running mean the node publishes (over the last ``window`` frames, fewer at the start)."""
    scores = np.asarray(scores, np.float64)
    cumsum = np.concatenate([[0.0], np.cumsum(scores)])
    idx = np.arange(1, len(scores) + 1)
    lo = np.maximum(idx - int(window), 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)
