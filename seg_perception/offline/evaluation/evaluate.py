"""Evaluate a model on a labelled dataset or bag: mIoU, per-class IoU, pixel accuracy, latency.

    seg-perception evaluate --model model.onnx --data data/scenes_val [--out runs/eval]
    seg-perception evaluate --model runs/topformer_tiny_scenes/best.pt --data data/scenes_val
    seg-perception evaluate --model model.onnx --data bag_dir --image-topic /camera/image_raw \
        --gt-topic /camera/semantic

``--data`` is a dataset folder, a dataset YAML or a rosbag2 path (with ``--image-topic`` and ``--gt-topic``),
opened by :func:`seg_perception.offline.data.datasets.open_dataset`.

An ``.onnx`` model runs through :class:`seg_perception.runtime.engine.SegmentationEngine`, the engine the ROS
node runs, so the numbers are those of the robot (latency is the engine's ``latency_ms``; token-pass models
also report their kept-token fraction and MACs per frame). A training checkpoint (``.pt``) runs in torch with
the engine's geometry (:func:`seg_perception.offline.predict.predict`): the image is fitted to the checkpoint's
``input_size`` by its ``resize_mode``, so a checkpoint scores what its export scores. ``--input-size`` overrides
the size for both (``0 0`` = whole image rounded up to a multiple of 32 and padded; .onnx files with a dynamic
input only).

Intersections and unions are summed over the whole dataset (see :mod:`.metrics`); ``mIoU_interval95`` is the
95 % interval of that mIoU over frames drawn with replacement (:func:`.metrics.bootstrap_miou`): on a few dozen
frames, differences between models inside it are not told apart by these frames. ``--baseline`` runs a second
model on the same frames and reports the paired interval of the difference (both scored on the same draws).
Written to ``--out``:
``metrics.json``, ``report.md`` and ``confusion.png`` (and ``reliability.png``, the reliability diagram of the
engine's confidence, for .onnx models); the Markdown table is printed in any case. ONNX models also report the
pixel-level expected calibration error (``ece``, 15 equal-width bins) and whether the model is calibrated.
"""
import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..argtypes import non_negative_int, positive_int, share
from .calibration import ReliabilityStats
from .metrics import ConfusionMatrix, FrameAreas, bootstrap_miou, metrics_table, save_confusion_png


class OnnxPredictor:
    """An exported model through the runtime engine."""

    def __init__(self, path, providers=None, threads=None, exit_threshold=None, refine_threshold=None,
                 input_size=None):
        from ...runtime.engine import SegmentationEngine

        self.engine = SegmentationEngine(str(path), providers=providers, intra_op_threads=threads or 0,
                                         input_size=input_size)
        if input_size is not None and not self.engine.meta['dynamic_hw']:
            raise UserError(f'--input-size {input_size[0]} {input_size[1]}: {Path(path).name} has a fixed input '
                            f'size ({self.engine.net_hw[0]}x{self.engine.net_hw[1]})')
        self.exit_threshold = exit_threshold
        self.refine_threshold = refine_threshold
        self.names = list(self.engine.meta['names'])
        self.description = f'onnx ({self.engine.provider})'
        self.static_macs = self.engine.meta.get('static_macs')
        self.calibration = ('temperature ' + ' '.join(f'{t:.3f}' for t in self.engine.meta['temperature'])
                            if self.engine.calibrated else 'uncalibrated')

    def __call__(self, image):
        result = self.engine.infer(image, exit_threshold=self.exit_threshold, refine_threshold=self.refine_threshold)
        return {'labels': result.labels, 'latency_ms': result.latency_ms, 'kept_fraction': result.kept_fraction,
                'macs': result.macs, 'refined_fraction': result.refined_fraction, 'confidence': result.confidence}


class TorchPredictor:
    """A training checkpoint run in torch (eval mode, one image at a time)."""

    def __init__(self, path, input_size=None, threads=None):
        import torch

        from ..predict import checkpoint_preprocessing, load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.model, ckpt = load_checkpoint(path)
        self.names = list(ckpt.get('classes') or [str(i) for i in range(ckpt['num_classes'])])
        prep = checkpoint_preprocessing(ckpt)
        self.mean, self.std, self.resize_mode = prep['mean'], prep['std'], prep['resize_mode']
        self.white_balance = prep['white_balance']
        if input_size is not None and tuple(input_size) != (0, 0) and min(input_size) <= 0:
            raise UserError(f'--input-size {input_size[0]} {input_size[1]}: give two positive sizes (or 0 0: the '
                            'whole image)')
        self.input_size = prep['input_size'] if input_size is None else (input_size if min(input_size) > 0
                                                                         else None)
        self.description = (f'torch {ckpt["arch"]} ('
                            f'{"whole image" if self.input_size is None else self.input_size}, {self.resize_mode})')
        self.static_macs = None
        self.calibration = None   # no confidence: no ECE

    def __call__(self, image):
        from ..predict import predict

        tic = time.perf_counter()
        labels = predict(self.model, image, self.input_size, self.mean, self.std, self.resize_mode,
                         white_balance=self.white_balance)
        return {'labels': labels, 'latency_ms': 1000 * (time.perf_counter() - tic), 'kept_fraction': None,
                'macs': None, 'refined_fraction': None}


def open_predictor(path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None,
                   exit_threshold: float | None = None, input_size: Sequence[int] | None = None,
                   refine_threshold: float | None = None) -> OnnxPredictor | TorchPredictor:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'model {path} not found')
    if path.suffix == '.onnx':
        return OnnxPredictor(path, providers, threads, exit_threshold, refine_threshold, input_size)
    return TorchPredictor(path, input_size, threads)


def _percentiles(values):
    if not values:
        return {}
    p50, p90, p99 = np.percentile(np.asarray(values, np.float64), [50, 90, 99])
    return {'mean': float(np.mean(values)), 'p50': float(p50), 'p90': float(p90), 'p99': float(p99)}


def parse_merge(items: list) -> dict:
    """``--merge`` values ``MODEL_CLASS:DATASET_CLASS`` -> {model class: dataset class}; a malformed one is a
    UserError."""
    merge = {}
    for item in items:
        name, sep, into = item.partition(':')
        if not (sep and name and into):
            raise UserError(f"--merge {item}: expected MODEL_CLASS:DATASET_CLASS, e.g. covered_floor:floor")
        merge[name] = into
    return merge


def merge_table(model_names: Sequence[str], dataset_names: Sequence[str], merge: dict[str, str],
                merge_hint: bool = True) -> np.ndarray:
    """Model class id -> dataset class id, with ``merge`` {model class: dataset class} (e.g. covered_floor:
    floor): the model's other classes must be the dataset's, in its order; a mismatch is a UserError (which
    suggests ``--merge`` for a class the dataset lacks unless ``merge_hint`` is False: commands without it)."""
    from ...errors import UserError

    for name, into in merge.items():
        if name not in model_names or into not in dataset_names:
            raise UserError(f'--merge {name}:{into}: the model has no class {name!r} or the dataset no class '
                            f'{into!r} (model: {", ".join(model_names)}; dataset: {", ".join(dataset_names)})')
    kept = [n for n in model_names if n not in merge]
    if kept != list(dataset_names):
        hint = ''
        extra = [n for n in model_names if n not in dataset_names and n not in merge]
        if merge_hint and extra and len(model_names) - len(extra) == len(dataset_names):
            hint = f' (--merge {extra[0]}:CLASS scores its pixels as a dataset class)'
        raise UserError(f'the model predicts {len(model_names)} classes {list(model_names)}, the dataset has '
                        f'{len(dataset_names)} {list(dataset_names)}{hint}')
    return np.array([list(dataset_names).index(merge.get(n, n)) for n in model_names], np.uint8)


def check_classes(model_names: Sequence[str], dataset_names: Sequence[str], merge_hint: bool = True) -> None:
    """Refuse a model whose classes differ in number from the dataset's (:func:`merge_table`'s UserError); one
    with as many is scored in the dataset's classes as they are."""
    if len(model_names) != len(dataset_names):
        merge_table(model_names, dataset_names, {}, merge_hint)


class Scores:
    """One model's labels scored against the dataset's: the summed confusion matrix and each frame's class areas.
    A model whose classes differ from the dataset's is mapped onto them (``merge``) or refused (``merge_table``)."""

    def __init__(self, names, classes, merge, ignore_index):
        if not merge:
            check_classes(names, classes)
        self.to_dataset = merge_table(names, classes, merge) if merge else None
        self.num_classes, self.ignore_index = len(classes), ignore_index
        self.confusion = ConfusionMatrix(self.num_classes, ignore_index)
        self.areas = FrameAreas()

    def add(self, labels: np.ndarray, label: np.ndarray, index: int) -> tuple:
        """Score frame ``index``'s predicted ``labels``; returns them in the dataset's classes and the frame's
        :class:`ConfusionMatrix`."""
        labels = labels if self.to_dataset is None else self.to_dataset[labels]
        if labels.shape != label.shape:
            raise ValueError(f'image {index}: prediction {labels.shape} and label {label.shape} differ in size')
        frame = ConfusionMatrix(self.num_classes, self.ignore_index).update(labels, label)
        self.confusion.merge(frame)
        self.areas.add(frame.matrix)
        return labels, frame


def evaluate(model: str | os.PathLike, data: str | os.PathLike, layout: str | None = None, split: str | None = None,
             image_topic: str | None = None, gt_topic: str | None = None, out: str | os.PathLike | None = None,
             limit: int = 0, providers: list[str] | None = None, threads: int | None = None,
             exit_threshold: float | None = None, input_size: Sequence[int] | None = None, warmup: int = 2,
             progress: bool = True, refine_threshold: float | None = None, merge: dict[str, str] | None = None,
             baseline: str | os.PathLike | None = None, by_camera: bool = False) -> dict:
    """Evaluate ``model`` (.onnx or checkpoint path) on ``data``; returns the metrics dict (and writes ``out``).
    ``split``: of a dataset folder or YAML (None: the YAML's, else val).
    ``merge`` {model class: dataset class}: score a class the dataset lacks as one it has. ``baseline``: a second
    model run on the same frames (each frame through the model, then through it), reported with its mIoU and the
    paired interval of the difference. ``by_camera``: also ``camera_groups``, the mIoU of the thirds of the frames
    by their camera's vertical field of view and by its height (rendered frames' metadata; :func:`camera_groups`).

    Adaptive-cost models also get ``groups``: frames, GMACs, latency, refined / kept fraction and mIoU of the
    easy and the cluttered half (by the renderer's clutter level when every frame has one, else by the
    model's own refined or kept fraction)."""
    from tqdm import tqdm

    from ..data.datasets import open_dataset

    kwargs = {k: v for k, v in (('image_topic', image_topic), ('gt_topic', gt_topic)) if v}
    dataset = open_dataset(str(data), split=split, layout=layout, **kwargs)
    predictor = open_predictor(model, providers, threads, exit_threshold, input_size, refine_threshold)
    classes = [str(c) for c in dataset.classes]
    names = [str(n) for n in predictor.names]
    # a model whose classes differ in number from the dataset's is refused by Scores (with a --merge hint)
    ignore_index = getattr(dataset, 'ignore_index', 255)
    scores = Scores(names, classes, merge, ignore_index)
    if baseline is not None:
        other = open_predictor(baseline, providers, threads, exit_threshold, input_size, refine_threshold)
        try:
            other_scores = Scores([str(n) for n in other.names], classes, merge, ignore_index)
        except UserError as exc:
            raise UserError(f'--baseline {baseline}: {exc}') from None
    count = len(dataset) if not limit or limit <= 0 else min(limit, len(dataset))
    if count == 0:
        raise ValueError(f'{data}: no labelled images')
    if by_camera:   # refused before the run: too few frames for thirds, or no camera metadata
        if count < 3:
            raise UserError(f'--by-camera needs at least 3 frames, got {count} from {data}')
        camera_values(dataset.sample_meta(0), data)
    reliability = ReliabilityStats()
    latencies, kept, macs, refined, per_frame, cameras = [], [], [], [], [], []
    for _ in range(warmup):
        predictor(dataset[0][0])
        if baseline is not None:
            other(dataset[0][0])
    for i in tqdm(range(count), desc='evaluate', disable=not progress, dynamic_ncols=True):
        image, label = dataset[i]
        result = predictor(image)
        labels, frame = scores.add(result['labels'], label, i)
        if baseline is not None:
            other_scores.add(other(image)['labels'], label, i)
        if result.get('confidence') is not None:
            reliability.add(result['confidence'], labels, label, ignore_index)
        latencies.append(result['latency_ms'])
        if by_camera:
            cameras.append((frame.matrix, camera_values(dataset.sample_meta(i), data)))
        if result['kept_fraction'] is not None:
            kept.append(np.atleast_1d(np.asarray(result['kept_fraction'], np.float64)))
        if result['refined_fraction'] is not None:
            refined.append(result['refined_fraction'])
        if result['macs'] is not None:
            macs.append(float(result['macs']))
            cost = result['refined_fraction'] if result['refined_fraction'] is not None else \
                float(np.mean(result['kept_fraction'])) if result['kept_fraction'] is not None else None
            per_frame.append({'confusion': frame.matrix, 'macs': float(result['macs']), 'ms': result['latency_ms'],
                              'clutter': dataset.sample_meta(i).get('clutter'), 'fraction': cost})

    metrics = scores.confusion.compute(classes)
    report = {
        'model': str(model),
        'runner': predictor.description,
        'data': str(data),
        'split': dataset.split,
        'images': count,
        **metrics,
        'mIoU_interval95': bootstrap_miou(scores.areas),
        'latency_ms': _percentiles(latencies),
        'kept_fraction': None,
        'kept_fraction_per_stage': None,
        'gmacs_per_frame': None,
        'exit_threshold': exit_threshold,
        'refine_threshold': refine_threshold,
        'refined_fraction': None,
        'refined_frames_fraction': None,
        'groups': None,
        'confusion_matrix': scores.confusion.matrix.tolist(),
        'calibration': predictor.calibration,
        'ece': reliability.ece(),
        'reliability': reliability.summary() if reliability.pixels else None,
    }
    if kept:
        per_stage = np.mean(np.stack(kept), axis=0)
        report['kept_fraction_per_stage'] = [float(v) for v in per_stage]
        report['kept_fraction'] = float(per_stage.mean())
    if macs:
        report['gmacs_per_frame'] = float(np.mean(macs)) / 1e9
        if predictor.static_macs:
            report['macs_vs_static'] = float(np.mean(macs)) / float(predictor.static_macs)
    if refined:
        report['refined_fraction'] = float(np.mean(refined))
        report['refined_frames_fraction'] = float(np.mean(np.asarray(refined) > 0))
    if baseline is not None:
        other_miou = other_scores.confusion.compute(classes)['mIoU']
        report['baseline'] = {'model': str(baseline), 'mIoU': other_miou,
                              'difference': None if None in (metrics['mIoU'], other_miou) else
                              metrics['mIoU'] - other_miou,
                              'difference_interval95': bootstrap_miou(scores.areas, other_scores.areas)}
    if len(per_frame) >= 2:
        report['groups'] = complexity_groups(per_frame, classes, ignore_index)
    if by_camera:
        report['camera_groups'] = camera_groups(cameras, classes, ignore_index)
    table = markdown_report(report)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / 'metrics.json', 'w') as f:
            json.dump(report, f, indent=2)
        (out / 'report.md').write_text(f'# Evaluation of `{model}`\n\n'
                                       f'Data: `{data}` ({count} images), runner: {predictor.description}\n\n'
                                       f'{table}\n\n![confusion matrix](confusion.png)\n'
                                       + ('\n![reliability diagram](reliability.png)\n' if reliability.pixels else ''))
        save_confusion_png(scores.confusion.matrix, classes, out / 'confusion.png')
        if reliability.pixels:
            reliability.save_png(out / 'reliability.png', f'{Path(model).name} ({predictor.calibration})')
    report['table'] = table
    return report


def pooled_miou(matrices: list[np.ndarray], classes: Sequence[str], ignore_index: int) -> float | None:
    """mIoU of a group of frames: their confusion matrices summed."""
    confusion = ConfusionMatrix(len(classes), ignore_index)
    confusion.matrix = sum(matrices)
    return confusion.compute(classes)['mIoU']


def complexity_groups(frames: list[dict], classes: Sequence[str], ignore_index: int) -> dict:
    """Cost and accuracy of the easy and the cluttered half of ``frames`` (dicts with 'confusion', 'macs',
    'ms', 'clutter', 'fraction'): halves by clutter when every frame has one, else by 'fraction'."""
    by_clutter = all(f['clutter'] is not None for f in frames)
    key = np.array([f['clutter'] if by_clutter else (f['fraction'] or 0.0) for f in frames], np.float64)
    order = np.argsort(key, kind='stable')
    half = len(frames) // 2
    groups = {}
    for name, members in (('easy half', order[:half]), ('cluttered half', order[half:])):
        fractions = [frames[i]['fraction'] for i in members if frames[i]['fraction'] is not None]
        groups[name] = {'frames': len(members), 'split_by': 'clutter' if by_clutter else 'cost fraction',
                        'gmacs_per_frame': float(np.mean([frames[i]['macs'] for i in members])) / 1e9,
                        'latency_ms_mean': float(np.mean([frames[i]['ms'] for i in members])),
                        'fraction': float(np.mean(fractions)) if fractions else None,
                        'mIoU': pooled_miou([frames[i]['confusion'] for i in members], classes, ignore_index)}
    return groups


CAMERA_KEYS = {'vertical field of view (deg)': lambda meta: meta['intrinsics']['fov_y_deg'],
               'camera height (m)': lambda meta: meta['pose']['position'][2]}


def camera_values(meta: dict, data: object = '') -> list[float]:
    """A rendered frame's :data:`CAMERA_KEYS` values from its metadata; a UserError when it has none."""
    try:
        return [float(read(meta)) for read in CAMERA_KEYS.values()]
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError(f'--by-camera: {data} has frames without camera metadata (intrinsics.fov_y_deg and '
                        'pose.position, as `seg-perception render` writes in meta/)') from None


def camera_groups(frames: list[tuple], classes: Sequence[str], ignore_index: int) -> dict:
    """mIoU of the thirds of ``frames`` ((confusion matrix, :func:`camera_values`) pairs) by each of
    :data:`CAMERA_KEYS`: ``{key: [{'range': (lo, hi), 'frames': n, 'mIoU': m}, ...]}``, thirds in increasing order
    of the key."""
    groups = {}
    for k, key in enumerate(CAMERA_KEYS):
        values = np.array([camera[k] for _, camera in frames])
        order = np.argsort(values, kind='stable')
        groups[key] = []
        for members in np.array_split(order, 3):
            groups[key].append({'range': (float(values[members].min()), float(values[members].max())),
                                'frames': len(members),
                                'mIoU': pooled_miou([frames[i][0] for i in members], classes, ignore_index)})
    return groups


def markdown_report(report: dict) -> str:
    rows = []
    if report.get('mIoU_interval95') is not None:
        lo, hi = report['mIoU_interval95']
        rows.append(('mIoU 95 % interval over the frames (bootstrap)', f'{100 * lo:.2f} - {100 * hi:.2f}'))
    if report.get('baseline') and report['baseline']['difference'] is not None:
        base = report['baseline']
        interval = base['difference_interval95']
        paired = f' (95 % paired interval {100 * interval[0]:+.2f} - {100 * interval[1]:+.2f})' if interval else ''
        rows.append((f'baseline `{Path(base["model"]).name}` mIoU', f'{100 * base["mIoU"]:.2f}'))
        rows.append(('mIoU - baseline', f'{100 * base["difference"]:+.2f}{paired}'))
    lat = report['latency_ms']
    if lat:
        rows.append(('latency p50 / p90 / p99 (ms)', f'{lat["p50"]:.1f} / {lat["p90"]:.1f} / {lat["p99"]:.1f}'))
    if report['kept_fraction'] is not None:
        stages = ', '.join(f'{v:.3f}' for v in report['kept_fraction_per_stage'])
        rows.append(('mean kept fraction (per stage)', f'{report["kept_fraction"]:.3f} ({stages})'))
    if report['gmacs_per_frame'] is not None:
        ratio = f' ({100 * report["macs_vs_static"]:.1f} % of static)' if 'macs_vs_static' in report else ''
        rows.append(('GMACs per frame', f'{report["gmacs_per_frame"]:.3f}{ratio}'))
    if report.get('refined_fraction') is not None:
        rows.append(('tiles refined (mean) / frames with any', f'{report["refined_fraction"]:.3f} / '
                                                                f'{report["refined_frames_fraction"]:.3f}'))
    for name, g in (report.get('groups') or {}).items():
        miou = f'{100 * g["mIoU"]:.1f}' if g['mIoU'] is not None else 'n/a'
        fraction = f', refined/kept {g["fraction"]:.3f}' if g['fraction'] is not None else ''
        rows.append((f'{name} ({g["frames"]} frames, by {g["split_by"]})',
                     f'{g["gmacs_per_frame"]:.3f} GMACs, {g["latency_ms_mean"]:.1f} ms mean{fraction}, mIoU {miou}'))
    for key, thirds in (report.get('camera_groups') or {}).items():
        for name, g in zip(('lowest', 'middle', 'highest'), thirds):
            miou = f'{100 * g["mIoU"]:.2f}' if g['mIoU'] is not None else 'n/a'
            rows.append((f'{key}: {name} third, {g["range"][0]:.2f} - {g["range"][1]:.2f} ({g["frames"]} frames)',
                         f'mIoU {miou}'))
    if report.get('ece') is not None:
        rows.append(('pixel ECE, 15 bins (confidence)', f'{100 * report["ece"]:.2f} % ({report["calibration"]})'))
    rows.append(('images', str(report['images'])))
    return metrics_table(report, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='exported .onnx model or training checkpoint (.pt)')
    parser.add_argument('--data', required=True, help='dataset folder, dataset YAML or rosbag2 path')
    parser.add_argument('--layout', default=None, help='dataset layout (default: detect)')
    parser.add_argument('--split', default=None, help="dataset split (default: the dataset YAML's split, else val)")
    parser.add_argument('--image-topic', default=None, help='rosbag: image topic (default: /camera/image_raw)')
    parser.add_argument('--gt-topic', default=None,
                        help='rosbag: ground-truth label topic (default: /ground_truth/labels)')
    parser.add_argument('--out', default=None, help='folder for metrics.json, report.md and confusion.png')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='evaluate the first N images only')
    parser.add_argument('--threads', type=positive_int, default=None, help='intra-op threads (onnxruntime or torch)')
    parser.add_argument('--providers', default=None, help='comma list of onnxruntime execution providers')
    parser.add_argument('--exit-threshold', type=share, default=None, help='token-pass: stopping threshold')
    parser.add_argument('--refine-threshold', type=share, default=None,
                        help="adaptive TopFormer: refine threshold (0 = never refine, 1 = always; default: the "
                             "model's stored one)")
    parser.add_argument('--input-size', type=non_negative_int, nargs=2, default=None, metavar=('H', 'W'),
                        help="network input size, multiples of 32 (default: the model's; 0 0 = whole image; "
                             '.onnx files with a dynamic input)')
    parser.add_argument('--warmup', type=non_negative_int, default=2, help='untimed inferences before measuring')
    parser.add_argument('--baseline', default=None, metavar='MODEL',
                        help='a second model on the same frames: its mIoU and the difference with its 95 %% paired '
                             'bootstrap interval (the two take turns on each frame, so latencies include that)')
    parser.add_argument('--merge', action='append', default=[], metavar='MODEL_CLASS:DATASET_CLASS',
                        help='score a model class the dataset lacks as one it has (e.g. covered_floor:floor)')
    parser.add_argument('--by-camera', action='store_true',
                        help="also the mIoU of the thirds of the frames by their camera's vertical field of view and "
                             'by its height (rendered datasets: their meta/ files)')


def run(args: argparse.Namespace) -> int:
    providers = [p.strip() for p in args.providers.split(',') if p.strip()] if args.providers else None
    merge = parse_merge(args.merge)
    report = evaluate(args.model, args.data, layout=args.layout, split=args.split, image_topic=args.image_topic,
                      gt_topic=args.gt_topic, out=args.out, limit=args.limit, providers=providers,
                      threads=args.threads, exit_threshold=args.exit_threshold, input_size=args.input_size,
                      warmup=args.warmup, refine_threshold=args.refine_threshold, merge=merge,
                      baseline=args.baseline, by_camera=args.by_camera)
    print(report['table'])
    if args.out:
        extra = ', reliability.png' if report.get('ece') is not None else ''
        print(f'\nwritten: {Path(args.out) / "metrics.json"}, report.md, confusion.png{extra}')
    return 0
