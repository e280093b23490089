"""Calibrate a logits model's confidence and fit its domain-shift statistics; both go into its metadata.

    seg-perception calibrate --model models/topformer_tiny_scenes.onnx --data data/scenes --split val \\
        --per-class --shift data/scenes --in-place

* Temperature scaling: the temperature (``--per-class``: also one per class) minimising the pixel NLL of the
  ground truth on ``--data`` (held-out frames, never the training split); whichever of none (1), one or per class
  has the lowest pixel ECE on the held-out half of the sampled pixels is stored as metadata ``temperature``. The
  engine divides the logits by it: labels unchanged, confidence calibrated.
* Shift statistics (``--shift TRAIN_SPEC``): mean and precision of the per-frame features of
  :mod:`seg_perception.runtime.shift` over training frames (``--shift-split``), and the alarm threshold: the
  largest smoothed score (window ``--window``) on the held-out ``--data`` frames, times ``--margin``, so those
  frames raise no alarm (``--quantile Q``: the Q-quantile instead, so that degenerate held-out views, such as a
  wall filling the frame, do not set it). Stored as metadata ``shift_stats``. ``--taps stem:std,trans:mean``
  also adds pooled statistics of internal tensors to the graph, whitened with the same training frames
  (:mod:`.shift_features`, output ``shift_features``); the score adds their distances.

``--choose-features SPEC[:SPLIT][@AUROC] ...`` picks the features by measuring instead: every set of one to
three of them, scored by its per-frame AUROC between the held-out ``--data`` frames and each of the given frames
unlike the training data (never the sets the model will be judged on); the set whose smallest margin above the
sets' target AUROCs (``@AUROC``, default 0: then the highest worst AUROC) is largest wins. With ``--taps`` it
also chooses which of the taps (none to three) the score adds, the same way; the graph keeps only those.
``--tap-shrinkage`` sets how far each tap's covariance is shrunk towards its average variance. ``--tap-knn K``
scores each tap by the distance to its K-th nearest training frame in the whitened space instead of the distance
to the training mean (the training frames' whitened blocks then go into the metadata; K = 0: the mean).

The ECE before and after (pixel level, 15 bins) is printed; ``--report DIR`` also writes reliability diagrams
and ``calibration.json``.
"""
import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ..argtypes import non_negative_int, positive_float, positive_int
from .shift_features import parse_taps

if TYPE_CHECKING:
    from ..data.datasets import SegDataset

# measured on topformer_tiny_scenes (README, shift monitor): floor-logit spread, floor share, energy
DEFAULT_FEATURES = ('std0', 'share0', 'energy')


def choose_features(train: np.ndarray, held: np.ndarray, foreign: dict, max_size: int = 3,
                    graph: dict | None = None, max_taps: int = 3, keep: int = 15, margin: float = 0.005,
                    targets: dict | None = None) -> tuple:
    """The shift features (names) whose score separates best: every set of 1..``max_size`` features, fitted on
    ``train`` (N, D) frame features, scored by its per-frame AUROC between ``held`` (own held-out frames) and
    each ``foreign`` {name: (M, D)}; the set with the largest worst margin above ``targets`` {name: AUROC}
    (missing: 0, so without targets the highest worst AUROC) wins.

    ``graph`` (candidate taps): {'train': (N, G), 'held': (N', G), name of each foreign set: (M, G)} distances of
    each of G tap blocks, each divided by its median on the training frames. Then the ``keep`` best feature sets
    are each combined with every set of 0..``max_taps`` taps (the score the node computes: the sum of the terms,
    the logits term also divided by its training median), and so is no logits term at all (taps only): the fewest
    taps whose best combination comes within ``margin`` of the best of any number wins (each tap costs graph time;
    a smaller gain is noise on a few dozen frames).

    Returns (features, indices of the chosen taps, {foreign name: AUROC})."""
    import itertools

    from ...runtime.shift import feature_names, fit_statistics, mahalanobis
    from ..evaluation.calibration import auroc

    names = feature_names((train.shape[1] - 3) // 3)
    targets = targets or {}

    def worst(scores: dict[str, float]) -> float:
        return min(v - targets.get(name, 0.0) for name, v in scores.items())

    ranked = []
    for size in range(1, max_size + 1):
        for chosen in itertools.combinations(names, size):
            stats = fit_statistics(train, list(chosen))
            index, fitted = [names.index(n) for n in chosen], (stats['mean'], np.asarray(stats['precision']))
            scale = float(np.median(mahalanobis(train[:, index], *fitted)))
            own = mahalanobis(held[:, index], *fitted) / scale
            other = {name: mahalanobis(np.asarray(frames)[:, index], *fitted) / scale
                     for name, frames in foreign.items()}
            scores = {name: auroc(own, far) for name, far in other.items()}
            ranked.append((worst(scores), list(chosen), own, other, scores))
    ranked.sort(key=lambda r: -r[0])   # stable: among equals the smaller, earlier set
    best_worst, best, _, _, best_scores = ranked[0]
    best_taps = ()
    if graph is not None:   # the best combination per number of taps; fewer taps unless more gain > ``margin``
        by_count = [(best_worst, best, best_taps, best_scores)]
        taps = range(np.asarray(graph['held']).shape[1])
        # the candidate without logit statistics: a logits term of zero on every frame
        no_logits = (None, [], np.zeros(len(held)), {name: np.zeros(len(f)) for name, f in foreign.items()}, None)
        for count in range(1, max_taps + 1):
            top = (-2.0,)
            for _, chosen, own, other, _ in ranked[:keep] + [no_logits]:
                for subset in itertools.combinations(taps, count):
                    cols = list(subset)
                    scores = {name: auroc(own + graph['held'][:, cols].sum(1),
                                          far + np.asarray(graph[name])[:, cols].sum(1))
                              for name, far in other.items()}
                    if worst(scores) > top[0]:
                        top = (worst(scores), chosen, subset, scores)
            by_count.append(top)
        highest = max(entry[0] for entry in by_count)
        best_worst, best, best_taps, best_scores = next(e for e in by_count if e[0] >= highest - margin)
    return best, list(best_taps), best_scores


def parse_foreign(item: str) -> tuple[str, str, float]:
    """``SPEC[:SPLIT][@AUROC]`` -> (spec, split or '', target AUROC, 0 when not given); ValueError names a
    target that is not a number in [0, 1]."""
    where, at, target = item.rpartition('@')
    if not at:
        where, target = item, '0'
    try:
        value = float(target)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'--choose-features {item!r}: the target AUROC after @ must be a number in [0, 1], '
                         f'not {target!r}')
    spec, _, part = where.partition(':')
    return spec, part, value


def _blocks(graph: np.ndarray, groups: list[dict]) -> list[np.ndarray]:
    """(N, G) graph statistics -> one (N, size) block per tap."""
    return np.split(np.asarray(graph), np.cumsum([g['size'] for g in groups])[:-1], axis=1)


def _whitened(graph: np.ndarray, groups: list[dict], fits: list[tuple]) -> list[np.ndarray]:
    """(N, G) raw graph statistics -> each tap's block centred and whitened, as the graph outputs it."""
    return [(block - center) @ whiten for block, (center, whiten) in zip(_blocks(graph, groups), fits)]


def _tap_distances(graph: np.ndarray, groups: list[dict], fits: list[tuple], reference: list | None = None,
                   knn: int = 0, leave_one_out: bool = False) -> np.ndarray:
    """(N, G) raw graph statistics -> (N, taps): each tap's whitened (Mahalanobis) distance, or with ``knn`` its
    distance to the ``knn``-th nearest of the tap's ``reference`` rows (``leave_one_out``: the frames are the
    reference's own)."""
    from ...runtime.shift import kth_nearest

    blocks = _whitened(graph, groups, fits)
    if not knn:
        return np.stack([np.linalg.norm(block, axis=1) for block in blocks], axis=1)
    return np.stack([kth_nearest(block, ref, knn, leave_one_out) for block, ref in zip(blocks, reference)], axis=1)


def calibrate(model: str | os.PathLike, data: str | os.PathLike, split: str | None = None, per_class: bool = False,
              limit: int = 0, pixels_per_frame: int = 2000, shift: str | os.PathLike | None = None,
              shift_split: str = 'train', shift_limit: int = 400, features: Sequence[str] = DEFAULT_FEATURES,
              window: int = 10, margin: float = 1.1, out: str | os.PathLike | None = None,
              report: str | os.PathLike | None = None, seed: int = 0, progress: bool = True, measure: bool = True,
              taps: list[tuple[str, str]] | None = None, choose_against: Sequence[str] = (), quantile: float = 1.0,
              tap_shrinkage: float = 0.2, costmap_min_confidence: float | None = None, tap_knn: int = 0) -> dict:
    """Fit (and write to ``out`` when given) the calibration of ``model``; returns what was fitted and measured
    (``measure``: also the ECE of the written file on ``data``, one more pass). ``split``: of ``data`` (None: a
    dataset YAML's, else val). ``costmap_min_confidence``: also store the costmap's confidence threshold, chosen
    for the calibrated confidence. ``taps`` ([(name, stat)], with ``shift``): also whitened pooled features of
    internal tensors in the graph (:mod:`.shift_features`). ``choose_against`` (SPEC[:SPLIT][@AUROC] strings,
    with ``shift``): choose ``features`` by :func:`choose_features` against these frames (and target AUROCs).
    ``tap_shrinkage``: of each tap's covariance (:func:`.shift_features.fit_whitening`). ``tap_knn`` K > 0: each
    tap scored by the distance to its K-th nearest training frame (whitened), the training frames' blocks stored
    as the metadata's reference."""
    import tempfile

    import onnx

    from ...runtime.engine import SegmentationEngine
    from ...runtime.shift import ShiftScorer, decode_reference, encode_reference, fit_statistics, smooth
    from ..data.datasets import open_dataset
    from ..evaluation.calibration import collect, fit_temperature, nll, sample_ece
    from ..graph.onnx_graph import read_metadata, set_metadata
    from . import shift_features as sf

    engine = SegmentationEngine(str(model))
    proto = onnx.load(str(model))
    groups = None
    if engine.has_shift_features and shift:   # refit the model's own taps (or replace them with ``taps``)
        taps = taps or [(g['name'], g['stat']) for g in engine.meta['shift_stats'].get('graph_groups', ())]
        sf.remove_shift_features(proto)
    if tap_knn and not taps:
        raise UserError('--tap-knn scores graph taps: give --taps (or a model that has them) and --shift')
    if taps:
        if not shift:
            raise UserError('--taps need --shift (the training frames their statistics come from)')
        untapped = onnx.ModelProto()   # the graph without taps, for the chosen ones (--choose-features)
        untapped.CopyFrom(proto)
        probe = np.zeros((1, 3, *(engine.net_hw or engine.meta['input_size'])), np.float32)
        channels = sf.tap_channels(proto, taps, probe)
        groups = sf.add_shift_features(proto, taps, channels)
        with tempfile.TemporaryDirectory(prefix='seg_calibrate_') as tmp:   # the session keeps the graph
            onnx.save(proto, str(Path(tmp) / 'tapped.onnx'))
            engine = SegmentationEngine(str(Path(tmp) / 'tapped.onnx'))   # identity whitening: raw statistics
    if engine.meta['output_kind'] != 'logits':
        raise UserError(f'{model}: calibration needs a logits model (output_kind is '
                        f'{engine.meta["output_kind"]!r}); convert it first: python -m '
                        f'seg_perception.offline.graph.logits_head {model} -o OUT.onnx')
    if engine.calibrated:   # fit on the raw logits: drop a stored temperature for this run
        engine.inv_temperature = None
    def dataset(spec: str | os.PathLike, part: str, labelled: bool = True) -> 'SegDataset':
        """``labelled=False``: frames whose labels are not used (their class set may differ from the model's)."""
        frames = open_dataset(str(spec), split=part)
        if labelled and len(frames.classes) != engine.num_classes:
            raise UserError(f'{spec} ({part}) has {len(frames.classes)} classes {list(frames.classes)}, the model '
                            f'{engine.num_classes} {engine.names}')
        return frames

    held_out = dataset(data, split)
    held = collect(engine, held_out, limit, pixels_per_frame, seed, progress)
    z, y, corners, weights = held['z'], held['y'], held['corners'], held['weights']
    half = np.random.default_rng(seed).permutation(len(y)) < len(y) // 2
    fit = {'none': np.ones(1, np.float32), 'scalar': fit_temperature(z[half], y[half])}
    if per_class:
        fit['per_class'] = fit_temperature(z[half], y[half], per_class=True)
    # chosen by the ECE of the confidence the engine publishes (the corners' max softmax, interpolated)
    scores = {name: sample_ece(z[~half], y[~half], inv, corners[:, ~half], weights[~half])
              for name, inv in fit.items()}
    chosen = min(scores, key=scores.get)   # 'none': the raw confidence is the better calibrated (temperature 1)
    inv_t = fit['none'] if chosen == 'none' else fit_temperature(z, y, per_class=chosen == 'per_class')
    result = {'model': str(model),
              'data': f'{data} ({held_out.split or "bag"}, {held["frames"]} frames, {len(y)} pixels)',
              'chosen': chosen, 'temperature': [float(v) for v in 1.0 / inv_t],
              'ece_check_half': {name: float(v) for name, v in scores.items()},
              'sample_ece_before': sample_ece(z, y, 1.0, corners, weights),
              'sample_ece_after': sample_ece(z, y, inv_t, corners, weights),
              'nll_before': nll(z, y, 1.0), 'nll_after': nll(z, y, inv_t),
              'ece_before': held['reliability'].ece()}
    meta = dict(engine.meta)
    meta['temperature'] = result['temperature']
    if shift:
        train = collect(engine, dataset(shift, shift_split), shift_limit, progress=progress,
                        pixels=False)
        if groups:   # whitening of each tap's statistics, and its distance's median on the training frames
            fits = [sf.fit_whitening(block, tap_shrinkage) for block in _blocks(train['graph'], groups)]
            if tap_knn >= train['frames']:
                raise UserError(f'--tap-knn {tap_knn} needs more training frames than that ({train["frames"]}; '
                                '--shift-limit)')
            # the neighbours as the node will read them back (float16)
            reference = ([decode_reference(encode_reference(block)) for block in
                          _whitened(train['graph'], groups, fits)] if tap_knn else None)

            # the training frames' own terms: their median is each tap's scale, and the choice below reuses them
            train_terms = _tap_distances(train['graph'], groups, fits, reference, tap_knn, leave_one_out=True)
            for group, distances in zip(groups, train_terms.T):
                group['scale'] = float(np.median(distances))
        if choose_against:
            foreign, targets = {}, {}
            for item in choose_against:
                spec, part, targets[item] = parse_foreign(item)
                foreign[item] = collect(engine, dataset(spec, part or split, labelled=False), shift_limit,
                                        progress=progress, pixels=False, labels=False)
            terms = None
            if groups:
                scales = [g['scale'] for g in groups]
                terms = {'train': train_terms / scales, **{
                    name: _tap_distances(frames['graph'], groups, fits, reference, tap_knn) / scales
                    for name, frames in {'held': held, **foreign}.items()}}
            features, chosen_taps, chosen_by = choose_features(
                np.asarray(train['features']), np.asarray(held['features']),
                {name: frames['features'] for name, frames in foreign.items()}, graph=terms, targets=targets)
            result['features_chosen'] = {'features': features, 'auroc': chosen_by}
            if groups:   # keep only the chosen taps in the graph
                result['features_chosen']['taps'] = [f'{groups[i]["name"]}:{groups[i]["stat"]}' for i in chosen_taps]
                for frames in (train, held):
                    blocks = _blocks(frames['graph'], groups)
                    frames['graph'] = np.concatenate([blocks[i] for i in chosen_taps] or [blocks[0][:, :0]], axis=1)
                proto = untapped
                kept = [taps[i] for i in chosen_taps]
                fits = [fits[i] for i in chosen_taps]
                reference = None if reference is None else [reference[i] for i in chosen_taps]
                groups = [groups[i] for i in chosen_taps]
                if kept:
                    groups = [{**new, 'scale': old['scale']} for new, old in
                              zip(sf.add_shift_features(proto, kept, [channels[i] for i in chosen_taps]), groups)]
        stats = fit_statistics(train['features'], features)
        held_graph = [None] * len(held['features'])
        if groups:   # each term divided by its median on the training frames, so the terms weigh alike
            if features:   # (a score of taps only has no logits term)
                stats['logits_scale'] = float(np.median([ShiftScorer(stats).distance(f) for f in train['features']]))
            sf.set_whitening(proto, [c for c, _ in fits], [w for _, w in fits])
            stats['graph_groups'] = groups
            if tap_knn:
                stats.update({'knn': int(tap_knn), 'reference': encode_reference(np.concatenate(reference, axis=1))})
            held_graph = np.concatenate(_whitened(held['graph'], groups, fits), axis=1)
        scorer = ShiftScorer({**stats, 'window': window})
        held_scores = [scorer.distance(f, g) for f, g in zip(held['features'], held_graph)]
        smoothed = smooth(held_scores, window)
        base = float(np.quantile(smoothed, quantile))   # quantile 1: the largest
        stats.update({'threshold': base * margin, 'window': int(window)})
        meta['shift_stats'] = stats
        result['shift'] = {'train': f'{shift} ({shift_split}, {train["frames"]} frames)', 'window': int(window),
                           'threshold': stats['threshold'], 'held_out_max_smoothed': float(np.max(smoothed)),
                           'quantile': float(quantile),
                           'held_out_quantile_smoothed': base,
                           'held_out_mean_frame_score': float(np.mean(held_scores)),
                           'taps': [f'{g["name"]}:{g["stat"]} ({g["size"]} channels)' for g in groups or ()]}
    if not out:
        return result
    read_metadata(proto)   # still a seg_perception model
    if costmap_min_confidence is not None:
        meta['costmap_min_confidence'] = float(costmap_min_confidence)
    set_metadata(proto, meta)
    onnx.save(proto, str(out))
    if not measure:
        return result
    # measure the written file exactly as the robot runs it
    after = collect(SegmentationEngine(str(out)), dataset(data, split), limit, progress=progress,
                    pixels=False)
    result['ece_after'] = after['reliability'].ece()
    if report:
        report = Path(report)
        report.mkdir(parents=True, exist_ok=True)
        held['reliability'].save_png(report / 'reliability_before.png', f'{Path(model).name} uncalibrated')
        after['reliability'].save_png(report / 'reliability_after.png', f'{Path(out).name} calibrated')
        (report / 'calibration.json').write_text(json.dumps(result, indent=2))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='a logits .onnx model (metadata output_kind logits)')
    parser.add_argument('--data', required=True,
                        help='held-out labelled frames (dataset folder, YAML or bag) to fit the temperature on and '
                             'to set the shift threshold with; never the training split')
    parser.add_argument('--split', default=None, help="split of --data (default: the dataset YAML's split, else val)")
    parser.add_argument('--per-class', action='store_true',
                        help='also fit one temperature per class; kept only when its ECE on held-out pixels is lower')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='use the first N frames of --data (0 = all)')
    parser.add_argument('--pixels-per-frame', type=positive_int, default=2000, help='labelled pixels sampled per frame')
    parser.add_argument('--shift', default=None, metavar='TRAIN_SPEC',
                        help='training frames (dataset folder or YAML) for the shift statistics (none: keep the '
                             "model's shift_stats as they are)")
    parser.add_argument('--shift-split', default='train', help='split of --shift')
    parser.add_argument('--shift-limit', type=non_negative_int, default=400,
                        help='use the first N training frames (0 = all)')
    parser.add_argument('--features', default=','.join(DEFAULT_FEATURES),
                        help='comma list of shift features (mean<c>, std<c>, share<c> of class c; maxsoftmax, entropy, '
                             "energy); '' with --taps: the score adds the taps' distances only")
    parser.add_argument('--choose-features', nargs='+', default=(), metavar='SPEC[:SPLIT][@AUROC]',
                        help='choose --features by measuring: the set of 1-3 features with the largest worst margin of '
                             'its per-frame AUROC between --data and these frames unlike the training data above '
                             'their targets (@AUROC, default 0: the highest worst AUROC; needs --shift); with --taps, '
                             'also which of the taps (0-3) the score adds (the others leave the graph)')
    parser.add_argument('--taps', default='',
                        help='also score pooled statistics of internal tensors, computed in the graph: comma list '
                             'of NAME:mean|std, NAME a TopFormer short name (stem, tpm1-tpm9, ppa, trans, fuse) or '
                             'a node-name prefix; needs --shift')
    parser.add_argument('--tap-shrinkage', type=float, default=0.2,
                        help="shrink each tap's covariance this far towards its average variance (0-1] before "
                             'whitening')
    parser.add_argument('--tap-knn', type=non_negative_int, default=0,
                        help="score each tap by the distance to its K-th nearest training frame (whitened) instead of "
                             "to the training mean; the training frames' blocks go into the metadata (0: the mean)")
    parser.add_argument('--window', type=positive_int, default=10, help='frames the node averages the shift score over')
    parser.add_argument('--margin', type=positive_float, default=1.1,
                        help='shift threshold = margin x the --quantile of the smoothed scores on the held-out frames')
    parser.add_argument('--quantile', type=float, default=1.0,
                        help='quantile of the held-out smoothed scores the threshold is set from (1 = the largest; '
                             'lower lets that share of held-out frames, such as a wall filling the view, alarm)')
    parser.add_argument('--costmap-min-confidence', type=float, default=None,
                        help="also store the costmap's confidence threshold in the model (0-1; pixels below it "
                             'are never free): chosen for the calibrated confidence, so set here')
    parser.add_argument('--report', default=None, help='folder for reliability diagrams and calibration.json')
    parser.add_argument('--seed', type=non_negative_int, default=0, help='pixel sampling seed')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('-o', '--output', default=None, help='write the calibrated model here')
    target.add_argument('--in-place', action='store_true', help='overwrite --model')


def run(args: argparse.Namespace) -> int:
    if not (0 < args.quantile <= 1 and 0 < args.tap_shrinkage <= 1):
        raise UserError(f'--quantile ({args.quantile}) and --tap-shrinkage ({args.tap_shrinkage}) must be in (0, 1]')
    if args.costmap_min_confidence is not None and not 0 <= args.costmap_min_confidence < 1:
        raise UserError(f'--costmap-min-confidence {args.costmap_min_confidence}: must be in [0, 1)')
    if not Path(args.model).is_file():
        raise FileNotFoundError(f'model {args.model} not found')
    out = args.model if args.in_place else args.output
    try:
        taps = parse_taps(args.taps) if args.taps else None
        if args.choose_features and not args.shift:
            raise UserError('--choose-features needs --shift (the training frames the features are fitted on)')
        for item in args.choose_features:   # a bad target is named before the long passes
            parse_foreign(item)
        features = [f.strip() for f in args.features.split(',') if f.strip()]
        if args.shift and not (features or taps or args.choose_features):
            raise UserError('--features is empty and there are no --taps: the shift score would have no terms')
        result = calibrate(args.model, args.data, args.split, args.per_class, args.limit, args.pixels_per_frame,
                           args.shift, args.shift_split, args.shift_limit,
                           features, args.window, args.margin, out,
                           args.report, args.seed, taps=taps, choose_against=args.choose_features,
                           quantile=args.quantile, tap_shrinkage=args.tap_shrinkage,
                           costmap_min_confidence=args.costmap_min_confidence, tap_knn=args.tap_knn)
    except ValueError as exc:   # data that does not fit the model (classes, empty split, labels model)
        raise UserError(str(exc)) from None
    temps = ', '.join(f'{t:.3f}' for t in result['temperature'])
    print(f'temperature ({result["chosen"]}): {temps}')
    print(f'pixel NLL {result["nll_before"]:.4f} -> {result["nll_after"]:.4f}; ECE on {result["data"]}: '
          f'{100 * result["ece_before"]:.2f} % -> {100 * result["ece_after"]:.2f} %')
    if 'features_chosen' in result:
        c = result['features_chosen']
        taps = f' + taps {",".join(c["taps"]) or "none"}' if 'taps' in c else ''
        print(f'shift features chosen: {",".join(c["features"]) or "no logit statistics"}{taps} (per-frame AUROC '
              + ', '.join(f'{v:.3f} vs {k}' for k, v in c['auroc'].items()) + ')')
    if 'shift' in result:
        s = result['shift']
        quantile = f'; quantile {s["quantile"]:g}: {s["held_out_quantile_smoothed"]:.3f}' if s['quantile'] < 1 else ''
        print(f'shift statistics from {s["train"]}: threshold {s["threshold"]:.3f} (window {s["window"]}; largest '
              f'smoothed held-out score {s["held_out_max_smoothed"]:.3f}{quantile})'
              + (f'; taps in the graph: {", ".join(s["taps"])}' if s['taps'] else '')
              + (f'; each tap scored by the distance to its k-th nearest training frame, k = {args.tap_knn}'
                 if args.tap_knn else ''))
    print(f'written: {out}')
    return 0
