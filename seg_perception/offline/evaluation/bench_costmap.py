"""``seg-perception bench costmap``: what the costmap adds to the node's per-frame time, in one run.

On the same frames (the shipped sample bag, 640x480) and in the same process, interleaved so both
see the same machine load:

* node frame: what the node's worker does for one frame without the costmap: sensor_msgs/Image -> array, the
  engine (pre-processing, network, post-processing), confidence -> mono8, colour mask, three serialized output
  messages (not their publication);
* costmap: CameraInfo check, the (cached) pixel<->cell table, :meth:`GroundCostmap.update` on the engine's labels
  and confidence, the nav_msgs/OccupancyGrid and sensor_msgs/PointCloud2 messages;
* geometry: rebuilding the pixel<->cell tables (only when the camera or its pose changes).

Frames come from the shipped sample bag, or ``--bag`` (a bag of ``seg-perception render --bag``); ``--depth``
passes the bag's depth images to the costmap (the node's ``costmap.use_depth``: pixels placed in 3-D).

Times are CPU time of the process by default (``--clock cpu``: other load on the machine does not count; every
thread of the process does), or elapsed time (``--clock wall``). The costmap is ``--grid`` metres square at
``--resolution`` (default 10 m at 5 cm: 200 x 200 cells), the camera ``--camera-z`` metres up, pitched
``--camera-pitch`` radians down, with the bag's CameraInfo.
"""
import argparse
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..argtypes import finite_float, positive_float, positive_int
from .bench_common import add_common_arguments, emit, fmt, interleaved_medians, markdown_table, ratio

if TYPE_CHECKING:
    from ...runtime.costmap import GridSpec

CLOCKS = {'cpu': time.process_time, 'wall': time.perf_counter}


def _candidates(engine, costmap, info, pose, rgb, depth=None) -> dict:
    """The timed steps for one frame (``depth``: its depth image in metres, or None): {'node': fn, 'costmap': fn,
    'geometry': fn}."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from ...costmap_msgs import occupancy_grid_msg, point_cloud_msg
    from ...runtime.costmap import PinholeCamera
    from ...runtime.engine import colorize, confidence_to_mono8
    from ...runtime.imgmsg import array_to_image_fields, image_cdr, image_to_rgb

    msg = Image(**array_to_image_fields(rgb, 'rgb8'))
    header = Header(frame_id='base_link')
    result = engine.infer(rgb)
    camera = PinholeCamera.from_msg(info, result.labels.shape)
    costmap.set_camera(camera, pose)

    def node_frame() -> None:
        out = engine.infer(image_to_rgb(msg))
        conf = confidence_to_mono8(out.confidence)
        image_cdr(out.labels, 'mono8', msg.header)
        image_cdr(conf, 'mono8', msg.header)
        image_cdr(colorize(out.labels, engine.palette), 'rgb8', msg.header)

    def costmap_frame() -> None:
        costmap.set_camera(camera, pose)
        frame = costmap.update(result.labels, result.confidence, depth)
        occupancy_grid_msg(frame.grid, costmap.grid, header)
        point_cloud_msg(frame.obstacles, header)

    def geometry() -> None:
        costmap.set_camera(camera, pose @ np.diag([1.0, 1.0, 1.0, 1.0 + 1e-6]))   # a new pose: tables rebuilt
        costmap.set_camera(camera, pose)

    return {'node': node_frame, 'costmap': costmap_frame, 'geometry': geometry}


def bench_costmap(model: str | os.PathLike, frames: Sequence[np.ndarray], info: Any, grid: 'GridSpec',
                  camera_z: float = 1.0, camera_pitch: float = 0.35, threads: int = 1,
                  warmup: int = 2, repeat: int = 7, clock: str = 'cpu', pool: int = 3,
                  depths: Sequence[np.ndarray] | None = None) -> dict:
    """Medians (ms) per frame of the node's frame work and of the costmap on ``grid``, and of a geometry rebuild
    (two rebuilds timed together, halved). ``depths``: one depth image (metres) per frame, or None."""
    from ...runtime.costmap import OPTICAL_IN_BODY, GroundCostmap, class_cost_table
    from ...runtime.engine import SegmentationEngine
    from ...runtime.pose import pose_matrix

    engine = SegmentationEngine(model, intra_op_threads=threads)
    costmap = GroundCostmap(grid, class_cost_table(engine.names),
                            min_confidence=0.5, overhang_margin=0.5, pool=pool)
    pose = pose_matrix(0.0, 0.0, camera_z, 0.0, camera_pitch, 0.0) @ OPTICAL_IN_BODY
    rows = []
    for rgb, depth in zip(frames, depths or [None] * len(frames)):
        fns = _candidates(engine, costmap, info, pose, rgb, depth)
        times = interleaved_medians({'node': fns['node'], 'costmap': fns['costmap']}, warmup, repeat, CLOCKS[clock])
        times['geometry'] = interleaved_medians({'geometry': fns['geometry']}, 0, 1, CLOCKS[clock])['geometry'] / 2
        rows.append(times)
    return {'frames': len(rows), 'size': frames[0].shape[:2], 'pool': pool, 'depth': depths is not None,
            'cells': costmap.grid.width * costmap.grid.height,
            'node_ms': float(np.median([r['node'] for r in rows])),
            'costmap_ms': float(np.median([r['costmap'] for r in rows])),
            'geometry_ms': float(np.median([r['geometry'] for r in rows])),
            'ratio_of_sums': sum(r['costmap'] for r in rows) / sum(r['node'] for r in rows)}


def costmap_table(report: dict) -> str:
    h, w = report['size']
    side = int(round(math.sqrt(report['cells'])))
    return markdown_table(
        ['frames', 'image', 'depth', 'pool', 'grid cells', 'node frame ms (median)', 'costmap ms (median)',
         'costmap / node frame', 'geometry rebuild ms'],
        [[report['frames'], f'{w}x{h}', 'yes' if report['depth'] else 'no', report['pool'], f'{side}x{side}',
          fmt(report['node_ms']),
          fmt(report['costmap_ms']),
          f'{ratio(report["costmap_ms"], report["node_ms"], 3)} (sums: {report["ratio_of_sums"]:.3f})',
          fmt(report['geometry_ms'], 1)]])


def add_costmap_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default='', help='ONNX model (default: the shipped scene model)')
    parser.add_argument('--frames', type=positive_int, default=8, help='frames, spread over the bag')
    parser.add_argument('--bag', default='', help='a rendered bag (seg-perception render --bag) to take frames and '
                                                  'CameraInfo from (default: the shipped sample bag, 640x480)')
    parser.add_argument('--depth', action='store_true',
                        help="give the costmap the bag's depth images (the node's costmap.use_depth)")
    parser.add_argument('--grid', type=positive_float, default=10.0, help='grid side in metres')
    parser.add_argument('--resolution', type=positive_float, default=0.05, help='cell size in metres')
    parser.add_argument('--camera-z', type=positive_float, default=1.0, help='camera height in metres')
    parser.add_argument('--camera-pitch', type=finite_float, default=0.35,
                        help='camera pitch in radians (> 0 looks down)')
    parser.add_argument('--threads', type=positive_int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--pool', type=positive_int, default=3,
                        help='image pixels per costmap sample side (costmap.pool)')
    parser.add_argument('--clock', choices=tuple(CLOCKS), default='cpu',
                        help='cpu: CPU time of this process (robust to other load on the machine); wall: elapsed')
    add_common_arguments(parser)


def _bag_frames(bag: str, count: int, depth: bool) -> tuple:
    """``count`` RGB frames spread over ``bag`` (with their depth images when ``depth``) and its first
    CameraInfo; a missing bag, topic or depth image is a UserError."""
    from ...errors import UserError
    from ..data.bags import TOPICS, iter_bag_images, read_raw_messages, typestore
    from .bench_models import spread

    try:
        images = [(stamp, image) for stamp, _, image in iter_bag_images(bag, TOPICS['image'][0])]
        infos = read_raw_messages(bag, [TOPICS['camera_info'][0]])
        _, msgtype, raw, _ = next(infos, (None, None, None, None))
        infos.close()
        depths = {stamp: d for stamp, _, d in iter_bag_images(bag, TOPICS['depth'][0])} if depth else {}
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f'--bag {bag}: {exc}') from exc
    if not images or raw is None:
        raise UserError(f'--bag {bag}: no {TOPICS["image"][0]} images or no {TOPICS["camera_info"][0]}')
    images = spread(images, count)
    missing = [stamp for stamp, _ in images if depth and stamp not in depths]
    if missing:
        raise UserError(f'--depth: {len(missing)} of {len(images)} frames of {bag} have no {TOPICS["depth"][0]} '
                        'image (render the bag with --depth)')
    return ([image for _, image in images], [depths[stamp] for stamp, _ in images] if depth else None,
            typestore().deserialize_cdr(raw, msgtype))


def run_costmap(args: argparse.Namespace) -> int:
    from ...errors import UserError
    from ...paths import default_model_path
    from ...runtime.costmap import GridSpec
    from .bench_models import SAMPLE_BAG

    if args.depth and not args.bag:
        raise UserError('--depth needs --bag: the shipped sample bag has no depth images')
    for flag in ('grid', 'camera_z'):   # positive_float lets infinity through
        if not math.isfinite(getattr(args, flag)):
            raise UserError(f'--{flag.replace("_", "-")} {getattr(args, flag)}: give a finite number of metres')
    try:
        grid = GridSpec.from_size(args.grid, args.grid, args.resolution)
    except (ValueError, OverflowError) as exc:   # OverflowError: side / resolution overflows to infinity
        raise UserError(f'--grid {args.grid:g} --resolution {args.resolution:g}: {exc}') from None
    frames, depths, info = _bag_frames(args.bag or str(SAMPLE_BAG), args.frames, args.depth)
    report = bench_costmap(args.model or default_model_path(), frames, info, grid, args.camera_z, args.camera_pitch,
                           args.threads, args.warmup, args.repeat, args.clock, args.pool, depths)
    emit(args, 'Costmap share of the node frame', costmap_table(report))
    return 0
