"""``seg-perception replay``: replay a rosbag2 through the engine the node runs and write a report people read.

    seg-perception replay BAG --model A.onnx [--model B.onnx ...] [--out DIR]
    seg-perception replay BAG --model A.onnx --live [--rate 2] [--record OUT_BAG]

Offline (always): every camera frame of the bag goes through :class:`seg_perception.runtime.engine
.SegmentationEngine` of each model (the node's engine, same preprocessing), one frame at a time, in bag order;
with ground-truth labels in the bag it scores mIoU, per-class IoU and pixel accuracy (summed over the bag, see
:mod:`.metrics`) and per-frame mIoU; with CameraInfo, ground-truth occupancy and the camera pose on /tf it
scores each model's costmap (:mod:`.occupancy`). ``--live`` then starts the real node (``segmentation_node``)
in its own process and DDS domain once per model, plays the bag's camera, CameraInfo and /tf messages onto their
topics at the recorded speed (``--rate``) and measures what the node publishes (see :mod:`.replay_live`).

Bags users bring: the camera topic is found from the bag when not given (raw ``sensor_msgs/Image`` in a colour
encoding, or ``CompressedImage``; a raw topic and its ``/compressed`` twin count as one camera, raw preferred);
ground-truth labels are a mono8/mono16 Image topic named like labels (label, semantic, segment, ground_truth),
CameraInfo and ground-truth occupancy are found by type. Topics not used are listed with their message counts
(types the reader does not know marked as such). Each camera frame is paired with the side message of the same
header stamp, else the nearest within ``--sync-tolerance-ms``.

Written to ``--out``: ``report.md``, ``report.json`` (the same numbers), PNG plots and ``overlay.mp4`` /
``strip.png`` (see :mod:`.replay_report`).
"""
import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ...runtime import imgmsg
from ...runtime.engine import SegmentationEngine, SegResult
from ..argtypes import non_negative_float, non_negative_int, positive_float, ros_domain_id, share
from ..data import bags

if TYPE_CHECKING:
    from .replay_report import OverlayWriter

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
OCCUPANCY = 'nav_msgs/msg/OccupancyGrid'
TF = 'tf2_msgs/msg/TFMessage'
COLOUR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8')
LABEL_ENCODINGS = ('mono8', '8UC1', 'mono16', '16UC1')
LABEL_WORDS = ('label', 'semantic', 'segment', 'ground_truth', 'groundtruth')
NOT_CAMERA_WORDS = LABEL_WORDS + ('depth', 'disparity', 'mask')


# ----------------------------------------------------------------------------------------------- bag topics
@dataclasses.dataclass
class BagTopics:
    """What a bag holds and which of its topics the replay uses."""
    path: str
    types: dict                 # topic -> message type
    counts: dict                # topic -> message count
    image: str = None
    gt: str = None
    camera_info: str = None
    occupancy: str = None
    tf: list = dataclasses.field(default_factory=list)      # /tf, /tf_static: camera pose (costmap, live node)
    notes: list = dataclasses.field(default_factory=list)   # how topics were chosen

    @property
    def image_type(self) -> str:
        return self.types[self.image]

    def listing(self) -> str:
        return ', '.join(f'{t} ({self.types[t]})' for t in sorted(self.types))

    def used(self) -> list[str]:
        return [t for t in (self.image, self.gt, self.camera_info, self.occupancy, *self.tf) if t]

    def skipped(self) -> dict:
        """{topic: {'type', 'messages', 'known_type'}} of the topics the replay does not use."""
        known = bags.typestore().types
        return {t: {'type': self.types[t], 'messages': self.counts[t], 'known_type': self.types[t] in known}
                for t in sorted(self.types) if t not in self.used()}


def _first_encoding(reader, topic):
    """Encoding of the first message of an Image topic (None if it cannot be read)."""
    conns = [c for c in reader.connections if c.topic == topic]
    for _, _, raw in reader.messages(conns):
        try:
            return bags.typestore().deserialize_cdr(raw, IMAGE).encoding
        except Exception:  # a message the Image definition cannot read: not usable as a camera or labels
            return None
    return None


def _looks_like(topic, words):
    name = topic.lower()
    return any(w in name for w in words)


def _pick(kind, candidates, option, bag):
    if len(candidates) > 1:
        raise UserError(f'{bag}: several {kind} topics ({", ".join(sorted(candidates))}); choose one with {option}')
    return candidates[0] if candidates else None


def _check_given(info, topic, allowed, option):
    if topic not in info.types:
        raise UserError(f'{info.path}: no topic {topic} in this bag ({option}); its topics: {info.listing()}')
    if info.types[topic] not in allowed:
        raise UserError(f'{info.path}: {option} {topic} is {info.types[topic]}, expected {" or ".join(allowed)}')
    return topic


def resolve_topics(bag: str | os.PathLike, image_topic: str | None = None, gt_topic: str | None = None,
                   camera_info_topic: str | None = None, occupancy_topic: str | None = None) -> BagTopics:
    """Open ``bag`` and choose its camera, ground-truth, CameraInfo and occupancy topics (given or discovered).

    A given topic must exist with a suitable type; ``''`` turns an optional topic off. Raises UserError (one line,
    listing the bag's topics or the candidates) for anything a user must fix."""
    path = str(bag)
    reader = bags._open_reader(path)
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        counts = {}
        for c in reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + int(c.msgcount)
        info = BagTopics(path, types, counts)
        encodings = {t: _first_encoding(reader, t) for t, ty in types.items() if ty == IMAGE}
    finally:
        reader.close()
    if not types:
        raise UserError(f'{path}: the bag has no topics')

    if image_topic:
        info.image = _check_given(info, image_topic, (IMAGE, COMPRESSED), '--image-topic')
    else:
        raw = [t for t, e in encodings.items() if e in COLOUR_ENCODINGS or (
            e in ('mono8', '8UC1') and not _looks_like(t, NOT_CAMERA_WORDS))]
        # a driver's undecoded frames (YUV 4:2:2, Bayer) only where no decoded colour topic is there
        raw = raw or [t for t, e in encodings.items() if e in imgmsg.PACKED]
        compressed = [t for t, ty in types.items() if ty == COMPRESSED and not _looks_like(t, NOT_CAMERA_WORDS)]
        cameras = raw + [t for t in compressed if t.rsplit('/', 1)[0] not in raw]
        if not cameras:
            raise UserError(f'{path}: no camera image topic found (Image in '
                            f'{", ".join(COLOUR_ENCODINGS + imgmsg.PACKED)} or '
                            f'CompressedImage); its topics: {info.listing()}; give one with --image-topic')
        info.image = _pick('camera image', cameras, '--image-topic', path)
        info.notes.append(f'camera topic {info.image} found by type')

    if gt_topic:
        info.gt = _check_given(info, gt_topic, (IMAGE,), '--gt-topic')
    elif gt_topic is None:
        labels = [t for t, e in encodings.items() if e in LABEL_ENCODINGS and _looks_like(t, LABEL_WORDS)
                  and t != info.image]
        info.gt = _pick('ground-truth label', labels, '--gt-topic', path)
        if info.gt:
            info.notes.append(f'ground-truth labels {info.gt} found by type and name')

    if camera_info_topic:
        info.camera_info = _check_given(info, camera_info_topic, (CAMERA_INFO,), '--camera-info-topic')
    elif camera_info_topic is None:
        infos = [t for t, ty in types.items() if ty == CAMERA_INFO]
        base = info.image[:-len('/compressed')] if info.image.endswith('/compressed') else info.image
        same_ns = [t for t in infos if t.rsplit('/', 1)[0] == base.rsplit('/', 1)[0]]
        chosen = same_ns if len(same_ns) == 1 else infos
        info.camera_info = chosen[0] if len(chosen) == 1 else None
        if info.camera_info:
            info.notes.append(f'camera info {info.camera_info} found by type')
        elif infos:
            info.notes.append(f'several CameraInfo topics ({", ".join(infos)}), none used; give --camera-info-topic')

    if occupancy_topic:
        info.occupancy = _check_given(info, occupancy_topic, (OCCUPANCY,), '--occupancy-topic')
    elif occupancy_topic is None:
        grids = [t for t, ty in types.items() if ty == OCCUPANCY]
        if len(grids) > 1:
            grids = [t for t in grids if _looks_like(t, ('ground_truth', 'groundtruth', 'gt'))] or grids
        info.occupancy = _pick('occupancy grid', grids, '--occupancy-topic', path)
        if info.occupancy:
            info.notes.append(f'ground-truth occupancy {info.occupancy} found by type')
    info.tf = [t for t in ('/tf', '/tf_static') if types.get(t) == TF]
    return info


# ----------------------------------------------------------------------------------------------- frames
@dataclasses.dataclass
class Frame:
    index: int
    stamp_ns: int               # header stamp
    bag_ns: int                 # bag (receive) timestamp
    frame_id: str
    image: np.ndarray           # HxWx3 RGB (HxW for a grey camera)
    label: np.ndarray = None    # ground truth class ids
    camera_info: object = None  # deserialized sensor_msgs/CameraInfo (rosbags type)
    occupancy: object = None    # deserialized nav_msgs/OccupancyGrid (rosbags type)


def _stamps(reader, topic):
    conns = [c for c in reader.connections if c.topic == topic]
    return [(bags.header_stamp(raw), t) for _, t, raw in reader.messages(conns)]


def _nearest(stamps, targets, tolerance_ns):
    """Index into ``stamps`` per target: exact, else nearest within tolerance, else None."""
    if not stamps:
        return [None] * len(targets)
    order = np.argsort(stamps, kind='stable')
    ordered = np.asarray(stamps, np.int64)[order]
    out = []
    for s in targets:
        k = int(np.searchsorted(ordered, s))
        best = min((j for j in (k - 1, k) if 0 <= j < len(ordered)), key=lambda j: abs(int(ordered[j]) - s))
        out.append(int(order[best]) if abs(int(ordered[best]) - s) <= tolerance_ns else None)
    return out


class FrameSource:
    """Camera frames of a bag with their ground truth, CameraInfo and occupancy, streamed in bag order.

    A first pass reads only header stamps (to pair side messages with frames); the second decodes each frame
    and only the side messages some frame uses, holding them until their last frame is out. When the camera's
    header stamps repeat (drivers that leave them at 0), frames and side messages are paired by bag time instead
    and each frame takes its bag time as its stamp (``restamped``; the live player stamps the messages so too)."""

    SIDES = ('gt', 'camera_info', 'occupancy')

    def __init__(self, topics: BagTopics, tolerance_ns: int = 20_000_000, limit: int = 0):
        self.topics = topics
        reader = bags._open_reader(topics.path)
        try:
            images = _stamps(reader, topics.image)
            if limit and limit > 0:
                images = images[:limit]
            self.restamped = len({s for s, _ in images}) < len(images)
            key = 1 if self.restamped else 0
            self.stamps = [pair[key] for pair in images]
            self.matches = {}
            for side in self.SIDES:
                topic = getattr(topics, side)
                if topic:
                    self.matches[side] = _nearest([pair[key] for pair in _stamps(reader, topic)], self.stamps,
                                                  tolerance_ns)
        finally:
            reader.close()
        self.unmatched = {side: sum(m is None for m in match) for side, match in self.matches.items()}
        self.unusable = {}      # reason -> messages left out (filled while iterating)

    def __len__(self):
        return len(self.stamps)

    def _decode_image(self, raw, msgtype, bag_ns):
        """(stamp, bag time, frame_id, RGB or grey uint8 image), or None for a frame no model can use (counted by
        reason in ``unusable``, as the node counts such frames as rejected)."""
        try:
            stamp, frame_id, image = bags.decode(raw, msgtype)
        except ValueError as exc:    # unsupported encoding, truncated data, undecodable jpeg/png
            reason = str(exc)
        else:
            if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
                return stamp, bag_ns, frame_id, image
            reason = f'{image.dtype} {"x".join(map(str, image.shape))} image (needs 8-bit RGB or grey)'
        self.unusable[reason] = self.unusable.get(reason, 0) + 1
        return None

    def _decode_side(self, side, raw, msgtype):
        """A ground-truth image or deserialized message; None (counted in ``unusable``) if it cannot be read."""
        try:
            return bags.decode(raw, msgtype)[2] if side == 'gt' else bags.typestore().deserialize_cdr(raw, msgtype)
        except ValueError as exc:
            reason = f'{side}: {exc}'
            self.unusable[reason] = self.unusable.get(reason, 0) + 1
            return None

    def __iter__(self):
        topic_side = {getattr(self.topics, s): s for s in self.matches}
        users = {s: {} for s in self.matches}          # side -> {message index: frames left to use it}
        for side, match in self.matches.items():
            for m in match:
                if m is not None:
                    users[side][m] = users[side].get(m, 0) + 1
        held = {s: {} for s in self.matches}           # side -> {message index: decoded}
        seen = dict.fromkeys(self.matches, 0)
        pending = {}
        next_frame, image_count = 0, 0
        reader = bags._open_reader(self.topics.path)
        try:
            conns = [c for c in reader.connections if c.topic in (self.topics.image, *topic_side)]
            for conn, timestamp, raw in reader.messages(conns):
                if next_frame >= len(self):
                    break
                if conn.topic == self.topics.image:
                    if image_count < len(self):
                        pending[image_count] = self._decode_image(raw, conn.msgtype, timestamp)
                    image_count += 1
                else:
                    side = topic_side[conn.topic]
                    k = seen[side]
                    seen[side] += 1
                    if k in users[side]:
                        held[side][k] = self._decode_side(side, raw, conn.msgtype)
                while next_frame in pending and all(
                        self.matches[s][next_frame] is None or self.matches[s][next_frame] in held[s]
                        for s in self.matches):
                    frame = self._frame(next_frame, pending.pop(next_frame), held, users)
                    next_frame += 1
                    if frame is not None:
                        yield frame
        finally:
            reader.close()

    def _frame(self, index, item, held, users):
        sides = {}
        for side in self.matches:
            m = self.matches[side][index]
            if m is None:
                continue
            sides[side] = held[side][m]
            users[side][m] -= 1
            if not users[side][m]:
                del held[side][m]
        if item is None:
            return None
        stamp, bag_ns, frame_id, image = item
        stamp = bag_ns if self.restamped else stamp
        return Frame(index, stamp, bag_ns, frame_id, image, label=sides.get('gt'),
                     camera_info=sides.get('camera_info'), occupancy=sides.get('occupancy'))


# ----------------------------------------------------------------------------------------------- offline run
def difficulty(frame: Frame) -> float:
    """How busy a frame is, model-independent: the share of ground-truth pixels on a class boundary (or, without
    ground truth, of image pixels on a Canny edge)."""
    if frame.label is not None:
        lab = frame.label
        return float(((lab[:, 1:] != lab[:, :-1]).mean() + (lab[1:] != lab[:-1]).mean()) / 2)
    import cv2
    grey = frame.image if frame.image.ndim == 2 else cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)
    return float((cv2.Canny(grey, 100, 200) > 0).mean())


def frame_miou(pred: np.ndarray, label: np.ndarray, num_classes: int,
               ignore_index: int = 255) -> tuple[float | None, float | None]:
    """(mIoU over the classes present in prediction or ground truth, pixel accuracy) of one frame."""
    from .metrics import ConfusionMatrix, compute_metrics
    m = compute_metrics(ConfusionMatrix(num_classes, ignore_index).update(pred, label).matrix)
    return m['mIoU'], m['aAcc']


class ModelRun:
    """One model's engine and everything measured on it during the offline pass."""

    def __init__(self, path, name, threads, providers, exit_threshold, merge=None):
        from .calibration import ReliabilityStats
        from .metrics import ConfusionMatrix
        self.path, self.name = str(path), name
        self.engine = SegmentationEngine(self.path, providers=providers, intra_op_threads=threads)
        self.exit_threshold = exit_threshold
        # ``merge`` {class: class}: the model's classes it has are scored as the other (the ground truth knows only
        # the model's other classes, e.g. no covered_floor); the costmap keeps the model's own labels
        names = list(self.engine.names)
        self.merged = {k: v for k, v in (merge or {}).items() if k in names}
        for name, into in self.merged.items():
            if into not in names or into in self.merged:
                raise UserError(f'--merge {name}:{into}: {self.name} has no class {into!r} to score {name!r} as '
                                f'(its classes: {", ".join(names)})')
        # the bag's ground truth is class ids without names, the model's other classes in its order: a merged
        # class listed before a kept one would shift every id after it
        misplaced = [n for n in names[:len(names) - len(self.merged)] if n in self.merged]
        if misplaced:
            raise UserError(f'--merge {misplaced[0]}:{self.merged[misplaced[0]]}: {self.name} lists {misplaced[0]!r} '
                            f'before classes it keeps ({", ".join(names)}); replay compares class ids with the '
                            f"bag's ground truth, so a merged class must come after the others")
        self.score_as = np.array([names.index(self.merged.get(n, n)) for n in names], np.uint16)
        self.confusion = ConfusionMatrix(self.engine.num_classes, self.engine.meta.get('ignore_index', 255))
        self.reliability = ReliabilityStats()   # the published confidence against the labels' correctness (ECE)
        self.per_frame = []         # dicts, one per frame
        self.label_digest = {}      # header stamp -> digest of the labels (live mode compares the node's)

    def scored(self, labels: np.ndarray) -> np.ndarray:
        """The labels as scored against the ground truth (``--merge`` applied); the costmap keeps the model's."""
        return self.score_as[labels] if self.merged else labels

    def warm_up(self, image: np.ndarray) -> None:
        for _ in range(2):
            self.engine.infer(image, exit_threshold=self.exit_threshold)

    def step(self, frame: Frame, level: float) -> SegResult:
        result = self.engine.infer(frame.image, exit_threshold=self.exit_threshold)
        row = {'stamp_ns': frame.stamp_ns, 'latency_ms': result.latency_ms, 'model_ms': result.model_ms,
               'difficulty': level, 'gmacs': None if result.macs is None else result.macs / 1e9,
               'kept_fraction': None if result.kept_fraction is None else float(result.kept_fraction[-1]),
               'refined_fraction': None if result.refined_fraction is None else float(result.refined_fraction),
               'mIoU': None, 'pixel_accuracy': None}
        if frame.label is not None:
            if frame.label.shape != result.labels.shape:
                raise UserError(f'frame {frame.index}: ground truth {frame.label.shape[1]}x{frame.label.shape[0]}'
                                  f' and image {result.labels.shape[1]}x{result.labels.shape[0]} differ in size')
            labels = self.scored(result.labels)
            self.confusion.update(labels, frame.label)
            self.reliability.add(result.confidence, labels, frame.label, self.confusion.ignore_index)
            row['mIoU'], row['pixel_accuracy'] = frame_miou(labels, frame.label, self.engine.num_classes,
                                                            self.confusion.ignore_index)
        self.per_frame.append(row)
        self.label_digest[frame.stamp_ns] = label_digest(result.labels)
        return result


def label_digest(labels: np.ndarray) -> str:
    import hashlib
    return hashlib.blake2b(np.ascontiguousarray(labels).tobytes(), digest_size=8).hexdigest()


def model_names(paths: list) -> list:
    """Short unique names for the models (file stems, numbered when two share one)."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f'{s}#{i + 1}' for i, s in enumerate(stems)]


class CostmapScores:
    """Each model's costmap (the node's own GroundCostmap, through :class:`.occupancy.OccupancyEvaluator`) against
    the bag's ground-truth occupancy, on frames that have CameraInfo, occupancy and a base_link -> camera
    transform on /tf (what ``seg-perception render`` writes)."""

    def __init__(self, topics: BagTopics, models: list, out: Path, tolerance_ns: int):
        from .occupancy import OccupancyEvaluator, camera_poses
        poses = {}
        for topic in topics.tf:
            poses.update(camera_poses(topics.path, topic))
        self.stamps = sorted(poses)
        self.poses = [poses[s] for s in self.stamps]
        self.tolerance_ns = tolerance_ns
        self.note = None if poses else f'no base_link -> camera transform on {" or ".join(topics.tf) or "/tf"}'
        self.evaluators = [OccupancyEvaluator(m.engine.names, meta=m.engine.meta, max_png=6,
                                              out_dir=out / 'costmap' / m.name.replace('#', '_')) for m in models]
        self.skipped = 0

    def add(self, frame: Frame, results: list) -> None:
        k = _nearest(self.stamps, [frame.stamp_ns], self.tolerance_ns)[0]
        if frame.camera_info is None or frame.occupancy is None or k is None:
            self.skipped += 1
            return
        for evaluator, result in zip(self.evaluators, results):
            evaluator.add_frame(result.labels, result.confidence, frame.camera_info, self.poses[k], frame.occupancy,
                                frame.stamp_ns, frame.image)

    def summary(self, models: list) -> dict:
        keys = ('obstacle_recall', 'obstacle_recall_1cell', 'false_free_rate', 'free_recall', 'occupied_iou')
        rows = {m.name: e.summary() for m, e in zip(models, self.evaluators)}
        lines = ['| model | frames | min confidence | ' + ' | '.join(k.replace('_', ' ') + ' %' for k in keys) + ' |',
                 '|---|---:|---:|' + '---:|' * len(keys)]
        for name, r in rows.items():
            lines.append(f'| {name} | {r["frames"]} | {r["min_confidence"]:.2f} | ' + ' | '.join(
                '-' if r[k] is None else f'{100 * r[k]:.1f}' for k in keys) + ' |')
        return {'models': rows, 'frames_skipped': self.skipped, 'note': self.note, 'table': '\n'.join(lines)}


def run_offline(models: list, source: FrameSource, writer: 'OverlayWriter', costmaps: CostmapScores | None = None,
                progress: bool = True) -> None:
    """Every frame through every model (same frames, same order); ``writer`` gets the frames for the video,
    ``costmaps`` (a :class:`CostmapScores`, optional) the results for the costmap metrics."""
    from tqdm import tqdm

    for frame in tqdm(source, total=len(source), desc='replay', unit='frame', disable=not progress,
                      dynamic_ncols=True):
        if not models[0].per_frame:
            for m in models:
                m.warm_up(frame.image)
        level = difficulty(frame)
        results = [m.step(frame, level) for m in models]
        writer.add(frame, results)
        if costmaps is not None:
            costmaps.add(frame, results)


# ----------------------------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag', help='rosbag2 folder (sqlite3 or mcap) or a single .mcap/.db3 file')
    parser.add_argument('--model', action='append', default=None, metavar='M.onnx',
                        help='ONNX model; repeat to compare several on the same frames (default: the shipped model)')
    parser.add_argument('--image-topic', default=None,
                        help='camera topic, Image or CompressedImage (default: found from the bag)')
    parser.add_argument('--gt-topic', default=None,
                        help="ground-truth label topic (default: found from the bag; '' = none)")
    parser.add_argument('--camera-info-topic', default=None,
                        help="CameraInfo topic (default: found from the bag; '' = none)")
    parser.add_argument('--occupancy-topic', default=None,
                        help="ground-truth nav_msgs/OccupancyGrid topic (default: found from the bag; '' = none)")
    parser.add_argument('--out', default=None, help='report folder (default: out/replay/<bag name>)')
    parser.add_argument('--limit', type=non_negative_int, default=0,
                        help='replay the first N camera frames only (0 = all)')
    parser.add_argument('--threads', type=non_negative_int, default=1,
                        help='ONNX Runtime intra-op threads, offline and in the live node (0 = ONNX Runtime\'s choice)')
    parser.add_argument('--providers', default=None,
                        help='comma list of ONNX Runtime execution providers (default: the engine\'s)')
    parser.add_argument('--exit-threshold', type=share, default=None,
                        help="token-pass models' stopping threshold (default: the model's own)")
    parser.add_argument('--merge', action='append', default=[], metavar='MODEL_CLASS:CLASS',
                        help="score a model's class the ground truth lacks as another of its classes (e.g. "
                             'covered_floor:floor); the costmap scores keep it')
    parser.add_argument('--sync-tolerance-ms', type=non_negative_float, default=20.0,
                        help='pair side messages (ground truth, CameraInfo, occupancy) with a frame within this (ms)')
    parser.add_argument('--no-video', action='store_true', help='skip overlay.mp4 (strip.png is always written)')
    parser.add_argument('--live', action='store_true',
                        help='also run the real node in its own process and DDS domain on the bag')
    parser.add_argument('--rate', type=positive_float, default=1.0, help='--live: playback speed (1 = as recorded)')
    parser.add_argument('--record', default=None, metavar='OUT_BAG',
                        help='--live: write what the node publishes (labels, colour, costmap) to this new bag')
    parser.add_argument('--warmup', type=non_negative_int, default=2,
                        help='--live: send the first frame this many times before the bag (not counted), so the '
                             'node\'s cold first inferences do not drop frames of the measurement')
    parser.add_argument('--domain-id', type=ros_domain_id, default=None,
                        help='--live: ROS_DOMAIN_ID for the node and the player (default: a random free one)')
    parser.add_argument('--timeout', type=positive_float, default=120.0,
                        help='--live: give up on a node that does not come up (or answer its warm-up frames) '
                             'within this many seconds')


def prepare_out(out: str | os.PathLike) -> Path:
    """Create the report folder; an existing one is reused only if it holds an earlier replay report."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UserError(f'{out}: exists and is not a folder; choose another --out')
        if any(out.iterdir()) and not (out / 'report.json').is_file():
            raise UserError(f'{out}: exists and is not a replay report folder; choose another --out')
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_args(args):
    if (args.record or args.domain_id is not None) and not args.live:
        raise UserError('--record and --domain-id need --live')
    if args.record and Path(args.record).exists():
        raise UserError(f'{args.record}: exists; --record writes a new bag, choose another path')
    import importlib.util
    for name in ('matplotlib', 'tqdm'):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"replay needs {name}: pip install 'seg_perception[replay]'")
    if args.live and importlib.util.find_spec('rclpy') is None:
        raise UserError("--live needs the ROS 2 Python packages: pip install 'seg_perception[ros]' or source ROS 2")


def run(args: argparse.Namespace) -> int:
    from ...paths import default_model_path
    from . import replay_report
    from .evaluate import parse_merge

    _check_args(args)
    model_paths = args.model or [default_model_path()]
    for path in model_paths:
        if not os.path.isfile(path):
            raise UserError(f'{path}: model not found')
    topics = resolve_topics(args.bag, args.image_topic, args.gt_topic, args.camera_info_topic, args.occupancy_topic)
    source = FrameSource(topics, int(args.sync_tolerance_ms * 1e6), args.limit)
    if not len(source):
        raise UserError(f'{args.bag}: no messages on {topics.image}')
    providers = [p.strip() for p in args.providers.split(',') if p.strip()] if args.providers else None
    names = model_names(model_paths)
    merge = parse_merge(args.merge)
    models = [ModelRun(p, n, args.threads, providers, args.exit_threshold, merge) for p, n in zip(model_paths, names)]
    unused = [k for k in merge if not any(k in m.merged for m in models)]
    if unused:
        raise UserError(f'--merge {unused[0]}:{merge[unused[0]]}: no model has a class {unused[0]!r}')
    out = prepare_out(args.out or os.path.join('out', 'replay', Path(args.bag).name.split('.')[0]))
    for line in topics.notes:
        print(line, file=sys.stderr)
    writer = replay_report.OverlayWriter(out, models, len(source), source_rate_hz(source), video=not args.no_video)
    costmaps = None
    if topics.occupancy and topics.camera_info:
        costmaps = CostmapScores(topics, models, out, int(args.sync_tolerance_ms * 1e6))
    try:
        run_offline(models, source, writer, costmaps)
    finally:
        writer.close()
    if not models[0].per_frame:
        raise UserError(f'{args.bag}: no usable frame on {topics.image} ('
                        + '; '.join(f'{n} x {reason}' for reason, n in source.unusable.items()) + ')')
    occupancy = costmaps.summary(models) if costmaps is not None else None
    live = None
    if args.live:
        from . import replay_live
        live = replay_live.run_live(args, topics, source, models, out)
    report = replay_report.write_report(out, args, topics, source, models, writer, live, occupancy)
    print(report)
    print(f'report: {out / "report.md"}')
    if live is not None and not all(r['ok'] for r in live):
        return 1
    return 0


def source_rate_hz(source: FrameSource) -> float:
    """Camera rate of the bag from its header stamps (10 Hz when it cannot tell)."""
    if len(source) < 2:
        return 10.0
    span = (source.stamps[-1] - source.stamps[0]) / 1e9
    return (len(source) - 1) / span if span > 0 else 10.0
