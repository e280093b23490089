"""The camera costmap against ground-truth occupancy: ``seg-perception occupancy`` and the evaluator replay uses.

Every frame of a bag (``/camera/image_raw``, ``/camera/camera_info``, ``/tf`` base_link -> camera frame,
``/ground_truth/occupancy``: what ``seg-perception render`` writes) is segmented by the node's engine and turned
into a costmap by the node's own :class:`~seg_perception.runtime.costmap.GroundCostmap`, on the ground truth's
grid. Scored cells: the camera's visible ground (cells whose floor point falls inside the image and below the
horizon, occluded or not) where the ground truth knows the answer (not -1). Counted per frame and summed:

``obstacle_recall``   occupied cells published occupied (cost >= 50) / occupied cells
``false_free_rate``   cells published free (cost 0..49) that are occupied / cells published free (safety: < 2 %)
``free_recall``       free cells published free / free cells
``occupied_iou``      occupied in both / occupied in either
``obstacle_recall_1cell`` the same as obstacle_recall, an occupied cell counting as found when an occupied cell
                      was published within one cell of it

Occluded footprint cells (the back of a box, a room behind a wall) count as missed obstacles: a camera cannot see
them; ``obstacle_recall`` is therefore well below 1 even for a perfect segmentation. With ``thresholds`` the
same frames are scored at several confidence thresholds (issue 18: the safety/recall trade-off as a table and a
curve). PNGs: published costmap | ground truth | camera image, forward up, robot at the centre.

    seg-perception occupancy data/costmap_eval_bag --out out/occupancy [--model M.onnx] [--sweep 0,0.5,0.9]
"""
import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...runtime.costmap import (
    STANDING_COST,
    GridSpec,
    GroundCostmap,
    PinholeCamera,
    class_cost_table,
    resolve_min_confidence,
)
from ..argtypes import non_negative_float, non_negative_int, positive_int, share
from ..data.covered import COVERED_FLOOR, covered_floor

COUNT_KEYS = ('gt_occupied', 'gt_free', 'pred_free', 'hit_occupied', 'hit_occupied_1cell', 'false_free',
              'hit_free', 'union_occupied', 'visible_cells')
DEFAULT_SWEEP = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TOPICS = {'image': '/camera/image_raw', 'depth': '/camera/depth', 'camera_info': '/camera/camera_info',
          'gt': '/ground_truth/occupancy',
          'tf': '/tf', 'labels': '/ground_truth/labels'}


def grid_spec_of(msg: Any) -> GridSpec:
    """:class:`GridSpec` of a nav_msgs/OccupancyGrid (its origin must not be rotated)."""
    info = msg.info
    q = info.origin.orientation
    if abs(q.z) > 1e-6 or abs(q.x) > 1e-6 or abs(q.y) > 1e-6:
        raise ValueError('ground-truth grids with a rotated origin are not supported')
    return GridSpec(float(info.resolution), int(info.width), int(info.height), float(info.origin.position.x),
                    float(info.origin.position.y))


def grid_of(msg: Any) -> np.ndarray:
    """int8 (height, width) array of a nav_msgs/OccupancyGrid."""
    return np.asarray(msg.data, np.int8).reshape(msg.info.height, msg.info.width)


def frame_counts(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> dict:
    """Cell counts of one frame within ``visible`` where the ground truth is known."""
    scored = visible & (gt >= 0)
    gt_occ, gt_free = scored & (gt >= STANDING_COST), scored & (gt >= 0) & (gt < STANDING_COST)
    pred_occ = scored & (pred >= STANDING_COST)
    pred_free = scored & (pred >= 0) & (pred < STANDING_COST)
    near_occ = cv2.dilate((pred >= STANDING_COST).view(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return {'gt_occupied': int(gt_occ.sum()), 'gt_free': int(gt_free.sum()), 'pred_free': int(pred_free.sum()),
            'hit_occupied': int((pred_occ & gt_occ).sum()), 'hit_occupied_1cell': int((near_occ & gt_occ).sum()),
            'false_free': int((pred_free & gt_occ).sum()), 'hit_free': int((pred_free & gt_free).sum()),
            'union_occupied': int((pred_occ | gt_occ).sum()), 'visible_cells': int(scored.sum())}


def rates(counts: dict) -> dict:
    """The metrics of summed counts (None where the denominator is 0)."""
    def ratio(num: str, den: str) -> float | None:
        return counts[num] / counts[den] if counts[den] else None
    return {'obstacle_recall': ratio('hit_occupied', 'gt_occupied'),
            'obstacle_recall_1cell': ratio('hit_occupied_1cell', 'gt_occupied'),
            'false_free_rate': ratio('false_free', 'pred_free'), 'free_recall': ratio('hit_free', 'gt_free'),
            'occupied_iou': ratio('hit_occupied', 'union_occupied')}


def _forward_up(array):
    """A grid (rows = y, columns = x) as seen from above with forward (x) up and left (y) left."""
    return np.ascontiguousarray(array[::-1, ::-1].swapaxes(0, 1))


def _display(grid, visible):
    """Grid -> RGB: free white, low cost khaki, occupied black, unknown grey; outside ``visible`` darker."""
    rgb = np.full(grid.shape + (3,), 150, np.uint8)
    rgb[grid == 0] = 255
    rgb[(grid > 0) & (grid < STANDING_COST)] = (200, 200, 120)
    rgb[grid >= STANDING_COST] = 0
    rgb[~visible] = (rgb[~visible] * 0.55).astype(np.uint8)
    return rgb


def side_by_side(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, rgb: np.ndarray | None = None,
                 scale: int = 2) -> np.ndarray:
    """RGB image: costmap (false-free cells red, missed obstacles orange) | ground truth | camera image."""
    scored = visible & (gt >= 0)
    gt_occ = scored & (gt >= STANDING_COST)
    left = _display(pred, visible)
    left[gt_occ & (pred < STANDING_COST)] = (255, 160, 0)
    left[gt_occ & (pred >= 0) & (pred < STANDING_COST)] = (255, 0, 0)
    panels = [cv2.resize(_forward_up(p), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
              for p in (left, _display(gt, visible))]
    height = panels[0].shape[0]
    if rgb is not None:
        panels.append(cv2.resize(rgb, (int(rgb.shape[1] * height / rgb.shape[0]), height),
                                 interpolation=cv2.INTER_AREA))
    out = np.concatenate([np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=255) for p in panels], axis=1)
    for x, text in ((4, 'costmap (red: false free, orange: missed)'), (panels[0].shape[1] + 8, 'ground truth')):
        cv2.putText(out, text, (x, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 90, 255), 1, cv2.LINE_AA)
    return out


class OccupancyEvaluator:
    """Scores costmaps made from labels against ground-truth grids, frame by frame; see the module docstring.

    ``names`` are the model's classes; ``class_costs`` ({name: cost}) and ``min_confidence`` override the model
    metadata ``meta`` (and the built-in defaults); ``thresholds`` adds a confidence sweep; ``out_dir`` gets up to
    ``max_png`` side-by-side PNGs under ``occupancy/``."""

    def __init__(self, names, class_costs=None, min_confidence=None, thresholds=(), out_dir=None, meta=None,
                 max_png=20, max_range=0.0, **costmap_options):
        meta = meta or {}
        self.min_confidence = resolve_min_confidence(-1.0 if min_confidence is None else min_confidence, meta)
        self.class_costs = class_cost_table(list(names), class_costs, meta.get('class_costs'))
        self.costmap_options = dict(max_range=max_range, **costmap_options)
        self.costmap = None
        self.thresholds = tuple(float(t) for t in thresholds)
        self.out_dir = Path(out_dir) if out_dir else None
        self.max_png = max_png
        self.frames = []
        self.totals = dict.fromkeys(COUNT_KEYS, 0)
        self.sweep_totals = {t: dict.fromkeys(COUNT_KEYS, 0) for t in self.thresholds}

    def _costmap_for(self, spec):
        if self.costmap is None or self.costmap.grid != spec:
            self.costmap = GroundCostmap(spec, self.class_costs, **self.costmap_options)
        return self.costmap

    def add_frame(self, labels: np.ndarray, confidence: np.ndarray | None, camera_info: Any,
                  camera_to_robot: np.ndarray, gt_occupancy: Any, stamp_ns: int | None = None,
                  rgb: np.ndarray | None = None, depth: np.ndarray | None = None, trust_free: bool = True) -> dict:
        """Score one frame: labels/confidence (H, W) of the image, its CameraInfo message, the 4x4 camera optical
        frame -> robot transform, the ground-truth OccupancyGrid message (+ a depth image in metres: pixels placed
        in 3-D; ``trust_free=False``: the shift alarm is raised, no free cells). Returns the frame's metrics."""
        gt = grid_of(gt_occupancy)
        costmap = self._costmap_for(grid_spec_of(gt_occupancy))
        costmap.set_camera(PinholeCamera.from_msg(camera_info, labels.shape[:2]), camera_to_robot)
        costmap.min_confidence = self.min_confidence
        pred = costmap.update(labels, confidence, depth, trust_free).grid
        counts = frame_counts(pred, gt, costmap.visible)
        for key, value in counts.items():
            self.totals[key] += value
        for t in self.thresholds:
            costmap.min_confidence = t
            grid = costmap.update(labels, confidence, depth, trust_free).grid
            for key, value in frame_counts(grid, gt, costmap.visible).items():
                self.sweep_totals[t][key] += value
        costmap.min_confidence = self.min_confidence
        row = {'index': len(self.frames), 'stamp_ns': stamp_ns, 'free_withheld': not trust_free, **rates(counts),
               **counts}
        self.frames.append(row)
        if self.out_dir is not None and len(self.frames) <= self.max_png:
            folder = self.out_dir / 'occupancy'
            folder.mkdir(parents=True, exist_ok=True)
            image = side_by_side(pred, gt, costmap.visible, rgb)
            cv2.imwrite(str(folder / f'{row["index"]:04d}.png'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return row

    def summary(self) -> dict:
        return {'frames': len(self.frames), 'min_confidence': self.min_confidence, **rates(self.totals),
                **self.totals,
                'sweep': [{'min_confidence': t, **rates(c)} for t, c in self.sweep_totals.items()]}

    def table_markdown(self) -> str:
        """Overall metrics, then the confidence sweep (if any), as markdown tables."""
        def pct(v: float | None) -> str:
            return '-' if v is None else f'{100 * v:.1f}'
        s = self.summary()
        keys = ('obstacle_recall', 'obstacle_recall_1cell', 'false_free_rate', 'free_recall', 'occupied_iou')
        lines = ['| frames | min confidence | ' + ' | '.join(k.replace('_', ' ') + ' %' for k in keys) + ' |',
                 '|---:|---:|' + '---:|' * len(keys),
                 f'| {s["frames"]} | {s["min_confidence"]:.2f} | ' + ' | '.join(pct(s[k]) for k in keys) + ' |']
        if s['sweep']:
            lines += ['', '| min confidence | false free % | free recall % | obstacle recall % | occupied IoU % |',
                      '|---:|---:|---:|---:|---:|']
            lines += [f'| {r["min_confidence"]:.2f} | {pct(r["false_free_rate"])} | {pct(r["free_recall"])} | '
                      f'{pct(r["obstacle_recall"])} | {pct(r["occupied_iou"])} |' for r in s['sweep']]
        return '\n'.join(lines)

    def save_sweep_png(self, path: str | os.PathLike) -> None:
        """False-free rate and free-space recall against the confidence threshold (matplotlib)."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        rows = [r for r in self.summary()['sweep'] if r['false_free_rate'] is not None]
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        ts = [r['min_confidence'] for r in rows]
        ax.plot(ts, [100 * r['false_free_rate'] for r in rows], 'o-', color='tab:red', label='false free %')
        ax.plot(ts, [100 * r['free_recall'] for r in rows], 's-', color='tab:blue', label='free-space recall %')
        ax.axhline(2.0, color='tab:red', ls=':', lw=1)
        ax.set_xlabel('costmap min_confidence')
        ax.set_ylabel('%')
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


# ---------------------------------------------------------------------------------------------- bags
def camera_poses(bag: str | os.PathLike, topic: str = '/tf', child: str | None = None,
                 parent: str = 'base_link') -> dict:
    """{stamp_ns: 4x4 camera -> ``parent``} of the transforms to ``child`` (any child when None) on ``topic``."""
    from ...runtime.pose import quat_to_matrix, transform_matrix
    from ..data.bags import read_raw_messages, typestore

    poses = {}
    for _, msgtype, raw, _ in read_raw_messages(bag, [topic]):
        for tf in typestore().deserialize_cdr(raw, msgtype).transforms:
            if tf.header.frame_id.lstrip('/') != parent or (child and tf.child_frame_id != child):
                continue
            t, q = tf.transform.translation, tf.transform.rotation
            stamp = tf.header.stamp.sec * 10**9 + tf.header.stamp.nanosec
            poses[stamp] = transform_matrix((t.x, t.y, t.z), quat_to_matrix(q.x, q.y, q.z, q.w))
    return poses


def _by_stamp(bag, topic):
    from ..data.bags import read_raw_messages, typestore
    out = {}
    for _, msgtype, raw, _ in read_raw_messages(bag, [topic]):
        msg = typestore().deserialize_cdr(raw, msgtype)
        out[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = msg
    return out


def _with_covered_floor(labels, depth, info, camera_to_robot, gt_msg, covered_id, floor_id):
    """The ground-truth labels with floor inside the ground-truth footprints as ``covered_id``."""
    k = np.asarray(info.k, np.float64).reshape(3, 3)
    mask = covered_floor(labels, depth, {'fx': k[0, 0], 'fy': k[1, 1], 'cx': k[0, 2], 'cy': k[1, 2]},
                         np.asarray(camera_to_robot), grid_of(gt_msg), grid_spec_of(gt_msg), floor_id)
    return np.where(mask, np.uint8(covered_id), labels)


def evaluate_bag(model: str | os.PathLike, bag: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 thresholds: Sequence[float] = (), min_confidence: float | None = None,
                 class_costs: Mapping | None = None, limit: int = 0, threads: int = 1, max_png: int = 20,
                 topics: dict[str, str] | None = None, gt_labels: bool = False, depth: bool = False,
                 overhang_margin: float | None = None, shift_gate: bool = False,
                 pool: int | None = None) -> OccupancyEvaluator:
    """Segment every image of ``bag`` that has a CameraInfo, a pose and a ground-truth grid of the same stamp
    with the engine, and score its costmap; frames missing one of them are counted in ``skipped``.
    ``gt_labels``: use the bag's ground-truth labels (confidence 1) instead of the model's: the geometry's own
    limit, what a perfect segmentation would score (for a model with a ``covered_floor`` class, the floor
    under footprints relabelled from the bag's depth images, as ``seg-perception cover`` does for training).
    ``depth``: place pixels in 3-D with the bag's depth images (the node's ``costmap.use_depth``);
    ``overhang_margin``, ``pool``: the costmap's (None = its default).
    ``shift_gate``: as the node's ``costmap.unknown_on_shift``, the model's shift score over the bag's frames in
    order, and no free cells while its smoothed value is above the threshold (needs shift statistics)."""
    from ...errors import UserError
    from ...runtime.engine import SegmentationEngine
    from ...runtime.shift import ShiftScorer
    from ..data.bags import iter_bag_images

    if shift_gate and gt_labels:
        raise UserError('--shift-gate scores the model\'s frames; with --gt-labels there are none')
    topics = {**TOPICS, **(topics or {})}
    engine = SegmentationEngine(model, intra_op_threads=threads)
    infos, gts = _by_stamp(bag, topics['camera_info']), _by_stamp(bag, topics['gt'])
    poses = camera_poses(bag, topics['tf'])
    if not poses:
        raise UserError(f'{bag}: no base_link -> camera transform on {topics["tf"]} (render the bag again with '
                        'this version of `seg-perception render`)')
    options = {key: value for key, value in (('overhang_margin', overhang_margin), ('pool', pool)) if value is not None}
    evaluator = OccupancyEvaluator(engine.names, class_costs=class_costs, min_confidence=min_confidence,
                                   thresholds=thresholds, out_dir=out_dir, meta=engine.meta, max_png=max_png,
                                   **options)
    evaluator.skipped = 0
    scorer = None
    if shift_gate:
        if not engine.meta.get('shift_stats'):
            raise UserError(f'{model} has no shift statistics (seg-perception calibrate --shift): no shift gate')
        scorer = ShiftScorer(engine.meta['shift_stats'])
    truth = {stamp: label for stamp, _, label in iter_bag_images(bag, topics['labels'])} if gt_labels else {}
    covered = engine.names.index(COVERED_FLOOR) if gt_labels and COVERED_FLOOR in engine.names else None
    depths = ({stamp: d for stamp, _, d in iter_bag_images(bag, topics['depth'])}
              if depth or covered is not None else {})
    if covered is not None and not depths:
        raise UserError(f'{bag}: no depth images on {topics["depth"]}: the ground truth of {COVERED_FLOOR!r} needs '
                        'them (render the bag with --depth)')
    for stamp, _, rgb in iter_bag_images(bag, topics['image']):
        if limit and len(evaluator.frames) >= limit:
            break
        if stamp not in infos or stamp not in gts or stamp not in poses or \
                ((depth or covered is not None) and stamp not in depths):
            evaluator.skipped += 1
            continue
        trust_free = True
        if gt_labels:
            labels, confidence = truth[stamp], None
            if covered is not None:
                labels = _with_covered_floor(labels, depths[stamp], infos[stamp], poses[stamp], gts[stamp], covered,
                                             engine.names.index('floor'))
        else:
            result = engine.infer(rgb)
            labels, confidence = result.labels, result.confidence
            if scorer is not None:
                trust_free = not scorer.alarmed(scorer.update(result.logits, result.shift_features)[1])
        evaluator.add_frame(labels, confidence, infos[stamp], poses[stamp], gts[stamp], stamp, rgb,
                            depths.get(stamp) if depth else None, trust_free)
    return evaluator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag', help='rosbag2 with images, CameraInfo, /tf and ground-truth occupancy '
                        '(seg-perception render --bag)')
    parser.add_argument('--model', default='', help='ONNX model (default: the shipped scene model)')
    parser.add_argument('--out', default='', help='folder for report.md, report.json, PNGs (none: print only)')
    parser.add_argument('--min-confidence', type=share, default=None,
                        help="costmap confidence threshold (default: the model's, else the built-in default)")
    parser.add_argument('--sweep', default=','.join(str(t) for t in DEFAULT_SWEEP),
                        help='comma list of confidence thresholds to score too ("" = none)')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='score at most N frames (0 = all)')
    parser.add_argument('--png', type=non_negative_int, default=20, help='side-by-side PNGs to write')
    parser.add_argument('--threads', type=non_negative_int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--depth', action='store_true',
                        help="place pixels in 3-D with the bag's depth images (the node's costmap.use_depth)")
    parser.add_argument('--overhang-margin', type=non_negative_float, default=None,
                        help='metres of floor in front of a floor contact kept unknown (default: the costmap\'s)')
    parser.add_argument('--shift-gate', action='store_true',
                        help="as the node's costmap.unknown_on_shift: no free cells while the model's smoothed shift "
                             'score is above its threshold')
    parser.add_argument('--pool', type=positive_int, default=None,
                        help="image pixels per costmap sample side (the node's costmap.pool; default: the costmap's)")
    parser.add_argument('--gt-labels', action='store_true',
                        help="score the bag's ground-truth labels instead of the model's (the geometry's limit)")


def run(args: argparse.Namespace) -> int:
    from ...errors import UserError
    from ...paths import default_model_path

    try:
        thresholds = tuple(share(t.strip()) for t in args.sweep.split(',') if t.strip())
    except argparse.ArgumentTypeError as exc:   # names the entry: 'abc' is not a number, 7 must be in [0, 1]
        raise UserError(f'--sweep {args.sweep!r}: {exc} (a comma list of confidence thresholds)') from None
    out = Path(args.out) if args.out else None
    evaluator = evaluate_bag(args.model or default_model_path(), args.bag, out, thresholds, args.min_confidence,
                             limit=args.limit, threads=args.threads, max_png=args.png, gt_labels=args.gt_labels,
                             depth=args.depth, overhang_margin=args.overhang_margin, shift_gate=args.shift_gate,
                             pool=args.pool)
    if not evaluator.frames:
        raise UserError(f'{args.bag}: no frame has an image, CameraInfo, pose and ground truth of one stamp')
    table = evaluator.table_markdown()
    print(table)
    withheld = sum(f['free_withheld'] for f in evaluator.frames)
    print(f'{len(evaluator.frames)} frames scored, {evaluator.skipped} skipped (missing CameraInfo, pose or '
          'ground truth)' + (f'; {withheld} without free cells (shift alarm)' if args.shift_gate else ''))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report = {'bag': str(args.bag), 'model': str(args.model or default_model_path()),
                  'summary': evaluator.summary(), 'frames': evaluator.frames, 'skipped': evaluator.skipped}
        (out / 'report.json').write_text(json.dumps(report, indent=1))
        (out / 'report.md').write_text(f'# Costmap vs ground truth: {args.bag}\n\n{table}\n')
        if thresholds:
            evaluator.save_sweep_png(out / 'sweep.png')
        print(f'-> {out}')
    return 0
