"""Costmaps from a monocular camera: a label image -> a robot-centred occupancy grid (numpy and OpenCV only).

No ROS in here: the node converts messages at its edge (``seg_perception/costmap_msgs.py``), and the offline
evaluation runs this very code against ground truth.

Geometry
  The camera is a pinhole (:class:`PinholeCamera`, made from CameraInfo fields). Binning and ROI follow
  ``image_geometry``: image pixel (u, v) is full-sensor pixel (u * binning_x + roi.x_offset,
  v * binning_y + roi.y_offset). Distortion is *undone*, once per camera geometry, in the pixel->ray table
  (``plumb_bob`` and ``rational_polynomial`` with ``cv2.undistortPoints``, ``equidistant`` with
  ``cv2.fisheye.undistortPoints``); with ``rectified=True`` (labels of an ``image_rect``) the projection
  matrix P is used and D ignored. ``camera_to_robot`` is the 4x4 mapping points in the camera's *optical* frame
  (x right, y down, z forward; what the image's ``header.frame_id`` names) to the robot frame (REP 103: x forward,
  y left, z up), whose z = 0 plane is the ground.

Grid
  :class:`GridSpec`: ``width`` x ``height`` cells of ``resolution`` metres, cell [r, c] covering
  x in origin_x + c * res, y in origin_y + r * res (``nav_msgs/OccupancyGrid`` order); robot-centred by default.
  Values: -1 unknown (never seen, outside the field of view, behind obstacles, unsure), 0 free, 1..100 cost.

Classes
  Every class has a cost (:func:`class_cost_table`): -1 unknown (e.g. background/sky), 0..49 *ground* classes
  that lie on the floor (floor = 0 free; grass could be 30), 50..100 *standing* classes that rise from it
  (wall, obstacle, person, robot = 100 lethal). The table comes from configuration, else from the model's
  metadata (``class_costs``), else from :data:`DEFAULT_CLASS_COSTS` by class name; classes none of them name
  are unknown.

Per frame (:meth:`GroundCostmap.update`)
  * ground-class pixels are projected onto the ground plane: each lands in its cell;
  * standing-class pixels are *not* projected (their ground projection lies behind them, smeared towards the
    horizon); only their floor contact is: the lowest pixel of each run of standing pixels along a world-vertical
    line (the next pixel down is not a standing class, or it is the image's bottom edge), i.e. the floor/non-floor
    boundary of each "column". Columns are vertical lines of the world, not of the image: the image is sampled
    along lines of constant azimuth (perspective slants verticals; any camera roll works), so a box's vertical
    edge does not smear contacts towards the horizon;
  * cells behind an obstacle receive no pixel and stay unknown; with ``see_past_obstacles`` (default) floor
    visible above an obstacle (seen over it) still counts, otherwise everything above the lowest contact of a
    column is dropped;
  * pixels with confidence below ``min_confidence``, and pixels of unknown classes, make their cells unknown —
    never free;
  * nothing at or above the horizon (rays not pointing down) is projected, nor anything beyond ``max_range``;
  * floor seen less than ``overhang_margin`` (m) in front of a contact stays unknown: the contact of a table
    top or a vehicle body lies beyond the floor under it, which the camera sees (0.5 m by default);
  * ``pool`` (default 3) works on pool x pool blocks of the image: standing classes by the block's maximum (a
    contact errs towards the robot), ground classes by the block's centre pixel, confidence by the block's
    minimum (one unsure pixel makes its block unsure). 1 = every pixel; at 640x480, 3 scores as well as 2
    against ground truth (README, "Costmap") for 0.7x its cost; smaller images and depth want 2.
  Combine rule in a cell: the highest cost among its contact pixels and ground pixels of cost >= 1 wins; else
  unknown if any pixel in it is unknown or unsure; else free if it holds a confident free-floor pixel; else
  unknown (unseen). Pixels are gathered through a table built once per geometry (pixel -> cell, sorted by cell,
  plus one sample pixel per visible cell so that far cells, smaller than a pixel, are not left as holes), so a
  frame costs lookup tables, one gather and one ``np.maximum.reduceat``.

  With a depth image (metres along the optical axis, REP 117) pixels are placed in 3-D instead: ground classes
  at their point's cell, standing classes where their point is between ``min_obstacle_height`` and
  ``max_obstacle_height``; pixels without a valid depth are dropped. Floor is free only where it can be: a
  floor pixel lower in its image column than a standing point and farther away (by more than a cell) is seen
  beneath that point, under a table top or a vehicle body, and a "floor" pixel whose point is
  ``min_obstacle_height`` or more above the ground is not on the floor: both make their cells unknown.

  ``fusion_decay`` > 0 blends frames: each cell keeps a decayed weighted mean of what it was given (weight
  ``decay ** age``) and is published while that weight is >= 0.5; 0 (default) publishes each frame alone. The
  grid is robot-centred, so fusion suits a robot standing or moving slowly relative to the decay.
"""
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

UNKNOWN = -1
FREE = 0
LETHAL = 100
STANDING_COST = 50          # classes with cost >= this stand on the floor (placed at their floor contact)
DEFAULT_MIN_CONFIDENCE = 0.5
LINE_SPACING = 1  # (pooled) pixels between neighbouring vertical lines
CONTACT_GAP = 12   # gaps between standing samples up to this long along a vertical line are closed
DEFAULT_CLASS_COSTS = {
    # ground
    'floor': 0, 'road': 0, 'sidewalk': 0, 'pavement': 0, 'ground': 0,
    # standing
    'wall': LETHAL, 'obstacle': LETHAL, 'person': LETHAL, 'pedestrian': LETHAL, 'robot': LETHAL,
    'car': LETHAL, 'vehicle': LETHAL, 'bicyclist': LETHAL, 'building': LETHAL, 'fence': LETHAL, 'pole': LETHAL,
    'tree': LETHAL,
    # unknown; covered_floor: floor seen under a table top or a shelf (inside a footprint): never free
    'background': UNKNOWN, 'sky': UNKNOWN, 'void': UNKNOWN, 'covered_floor': UNKNOWN,
}
DISTORTION_MODELS = ('plumb_bob', 'rational_polynomial', 'equidistant')
# how many coefficients each model's D may hold (OpenCV's undistortion takes 4, 5, 8, 12 or 14; the fisheye one 4)
DISTORTION_COUNTS = {'plumb_bob': (4, 5, 8, 12, 14), 'rational_polynomial': (4, 5, 8, 12, 14), 'equidistant': (4,)}
FUSION_MIN_WEIGHT = 0.5
_HORIZON_EPS = 1e-6
# rank of a pixel's contribution to its cell (max wins): 0 nothing, 1 free, 2 unknown, 2 + c cost c (1..100)
_RANK_NONE, _RANK_FREE, _RANK_UNKNOWN = 0, 1, 2
_UNSURE = 255   # a low-confidence pixel in the standing image (above every rank)
_RANK_TO_VALUE = np.array([UNKNOWN, FREE, UNKNOWN] + list(range(1, LETHAL + 1)) + [LETHAL] * (253 - LETHAL), np.int8)
_RANK_TO_VALUE_BITS = _RANK_TO_VALUE.view(np.uint8)   # for cv2.LUT (uint8 in, uint8 out)
# cells are reduced in buckets of similar pixel counts, each padded to its longest by repeating a pixel
_BUCKET_LENGTHS = (1, 2, 4, 8, 16, 32, 64, 128)


# the camera optical frame (x right, y down, z forward) in the camera body frame (REP 103: x forward, y left, z up)
OPTICAL_IN_BODY = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _lookup(labels, table):
    """``table[labels]``; uint8 labels through cv2.LUT, a few times faster than numpy indexing."""
    return cv2.LUT(labels, table[:256]) if labels.dtype == np.uint8 else table.take(labels)


def _running_min_down(image: np.ndarray) -> np.ndarray:
    """``np.minimum.accumulate(image, axis=0)`` (each pixel: the minimum of its column from the top row down to it)
    as a doubling scan: log2(rows) whole-image minimums, a few times faster than numpy's strided accumulate."""
    done, spare = image.copy(), np.empty_like(image)
    step = 1
    while step < image.shape[0]:
        spare[:step] = done[:step]
        np.minimum(done[step:], done[:-step], out=spare[step:])
        done, spare = spare, done
        step *= 2
    return done


def _cell_buckets(cells: np.ndarray, pixels: np.ndarray) -> list:
    """(cell, pixel) pairs sorted by cell -> [(cell ids (n,), pixel indices (L, n))]: one bucket per range of pixels
    per cell, a cell's list padded by repeating its last pixel (the maximum does not change), so that a frame's
    per-cell maximum is one gather and one maximum over the first axis per bucket."""
    if not cells.size:
        return []
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
    lengths = np.diff(np.r_[starts, cells.size])
    dtype = np.int32 if pixels.max() < 2**31 else np.int64
    buckets, lower = [], 0
    for upper in (*_BUCKET_LENGTHS, lengths.max()):
        chosen = np.flatnonzero((lengths > lower) & (lengths <= upper))
        lower = upper
        if chosen.size:
            offset = np.minimum(np.arange(lengths[chosen].max())[:, None], lengths[chosen][None] - 1)
            buckets.append((cells[starts[chosen]], pixels[starts[chosen][None] + offset].astype(dtype)))
    return buckets


class CameraInfoError(ValueError):
    """CameraInfo that cannot be used (zero or non-finite K, a size that does not match the image, ...)."""


def parse_class_costs(text: str) -> dict:
    """``'floor:0, grass:30, person:100'`` (the ROS parameter form) -> ``{name: cost}``; a ValueError names a bad
    entry."""
    costs = {}
    for entry in (e.strip() for e in str(text).split(',')):
        if not entry:
            continue
        name, sep, value = entry.rpartition(':')
        try:
            cost = int(value)
        except ValueError:
            cost = None
        if not sep or not name.strip() or cost is None:
            raise ValueError(f"class cost {entry!r} is not 'name:cost'")
        if not UNKNOWN <= cost <= LETHAL:
            raise ValueError(f'class cost {entry!r}: the cost must be in -1..100')
        costs[name.strip()] = cost
    return costs


def class_cost_table(names: Sequence[str], costs: Mapping | None = None, metadata_costs: Mapping | None = None,
                     config_name: str = 'class_costs') -> np.ndarray:
    """Cost (-1 unknown, 0..100) of every class id of a model, from ``costs`` (configuration), else the model's
    ``metadata_costs``, else :data:`DEFAULT_CLASS_COSTS`; names none of them know are unknown.

    A name in ``costs`` that the model does not have, or a cost outside -1..100, is a ValueError (naming
    ``config_name``, where the configuration came from)."""
    for source, table in ((config_name, costs), ('model metadata class_costs', metadata_costs)):
        for name, cost in (table or {}).items():
            if name not in names:
                raise ValueError(f'{source}: the model has no class {name!r} (classes: {", ".join(names)})')
            if not (isinstance(cost, (int, np.integer)) and UNKNOWN <= cost <= LETHAL):
                raise ValueError(f'{source}: cost of {name!r} must be an integer in -1..100, got {cost!r}')
    table = np.full(len(names), UNKNOWN, np.int16)
    for i, name in enumerate(names):
        for source in (costs, metadata_costs, DEFAULT_CLASS_COSTS):
            if source and name in source:
                table[i] = int(source[name])
                break
    return table


def resolve_min_confidence(param_value: float, meta: Mapping) -> float:
    """The confidence threshold in effect: ``param_value`` when >= 0, else the model metadata's
    ``costmap_min_confidence``, else :data:`DEFAULT_MIN_CONFIDENCE`."""
    if param_value >= 0:
        return float(param_value)
    return float(meta.get('costmap_min_confidence', DEFAULT_MIN_CONFIDENCE))


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A grid of ``width`` x ``height`` cells of ``resolution`` m; cell (0, 0)'s corner at (origin_x, origin_y)."""
    resolution: float
    width: int
    height: int
    origin_x: float
    origin_y: float

    def __post_init__(self):
        if not (np.isfinite(self.resolution) and self.resolution > 0):
            raise ValueError(f'grid resolution must be > 0 m, got {self.resolution}')
        if self.width < 1 or self.height < 1 or self.width * self.height > 10_000 * 10_000:
            raise ValueError(f'grid of {self.width}x{self.height} cells: each side needs 1..10000 cells')
        if not (np.isfinite(self.origin_x) and np.isfinite(self.origin_y)):
            raise ValueError(f'grid origin must be finite, got ({self.origin_x}, {self.origin_y})')

    @classmethod
    def from_size(cls, size_x: float, size_y: float, resolution: float, origin: Sequence[float] | None = None
                  ) -> 'GridSpec':
        """A grid of ``size_x`` x ``size_y`` metres; ``origin`` None = centred on the robot."""
        if not (resolution > 0 and size_x >= resolution and size_y >= resolution):
            raise ValueError(f'grid {size_x} x {size_y} m at {resolution} m needs sizes >= resolution > 0')
        width, height = int(round(size_x / resolution)), int(round(size_y / resolution))
        if origin is None:
            origin = (-width * resolution / 2, -height * resolution / 2)
        return cls(float(resolution), width, height, float(origin[0]), float(origin[1]))

    @property
    def shape(self) -> tuple:
        return self.height, self.width

    def cell_index(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Flat cell index (row * width + col) of points (x, y); -1 outside the grid (and for NaN)."""
        return self.index_of_cell_coords(*self.cell_coords(x, y))

    def cell_coords(self, x: float | np.ndarray, y: float | np.ndarray) -> tuple:
        """Points (x, y) in metres -> (col, row) in cells from cell (0, 0)'s corner (fractional)."""
        return (np.asarray(x) - self.origin_x) / self.resolution, (np.asarray(y) - self.origin_y) / self.resolution

    def index_of_cell_coords(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Flat cell index of points given in cells from cell (0, 0)'s corner; -1 outside the grid (and NaN)."""
        inside = (col >= 0) & (col < self.width) & (row >= 0) & (row < self.height)
        with np.errstate(invalid='ignore'):   # truncation is the floor inside the grid; NaN casts are masked out
            return np.where(inside, row.astype(np.int64) * self.width + col.astype(np.int64), -1)

    def cell_centres(self) -> tuple:
        """(x, y) of every cell centre, each (height, width)."""
        xs = self.origin_x + (np.arange(self.width) + 0.5) * self.resolution
        ys = self.origin_y + (np.arange(self.height) + 0.5) * self.resolution
        return np.meshgrid(xs, ys)


@dataclasses.dataclass(frozen=True)
class PinholeCamera:
    """The camera behind a label image of ``width`` x ``height`` (see the module docstring for the conventions)."""
    width: int
    height: int
    k: tuple                       # 3x3 row-major, full-sensor pixels
    d: tuple = ()
    distortion_model: str = 'plumb_bob'
    binning_x: int = 1
    binning_y: int = 1
    x_offset: int = 0
    y_offset: int = 0

    @classmethod
    def from_camera_info(cls, *, k: Sequence[float], d: Sequence[float], distortion_model: str, width: int,
                         height: int, binning_x: int = 0, binning_y: int = 0, roi: Sequence[int] = (0, 0, 0, 0),
                         p: Sequence[float] | None = None, rectified: bool = False,
                         image_size: tuple | None = None) -> 'PinholeCamera':
        """From sensor_msgs/CameraInfo fields (``roi`` = x_offset, y_offset, height, width). The image the labels
        come from is ``image_size`` (H, W); it must be what the CameraInfo describes after binning and ROI.
        Raises :class:`CameraInfoError` naming what is wrong."""
        k = np.asarray(k, np.float64).reshape(-1)
        if rectified:
            if p is None or len(p) != 12:
                raise CameraInfoError('rectified labels need the CameraInfo projection matrix P (12 values)')
            k = np.asarray(p, np.float64).reshape(3, 4)[:, :3].reshape(-1)
            d, distortion_model = (), 'plumb_bob'
        name = 'P' if rectified else 'K'
        if k.size != 9 or not np.all(np.isfinite(k)):
            raise CameraInfoError(f'camera matrix {name} must be 9 finite numbers, got {k.tolist()}')
        if k[0] <= 0 or k[4] <= 0:
            raise CameraInfoError(f'camera matrix {name} has no focal length (fx={k[0]}, fy={k[4]}): an '
                                  f'uncalibrated camera?')
        d = tuple(float(v) for v in d)
        if not np.all(np.isfinite(d)):
            raise CameraInfoError(f'distortion coefficients are not finite: {d}')
        if any(d):
            if distortion_model not in DISTORTION_MODELS:
                raise CameraInfoError(f'distortion model {distortion_model!r} is not supported '
                                      f'(supported: {", ".join(DISTORTION_MODELS)})')
            if len(d) not in DISTORTION_COUNTS[distortion_model]:
                raise CameraInfoError(f'{len(d)} distortion coefficients for {distortion_model} (it takes '
                                      f'{" or ".join(map(str, DISTORTION_COUNTS[distortion_model]))})')
        bx, by = max(1, int(binning_x)), max(1, int(binning_y))
        x_off, y_off, roi_h, roi_w = (int(v) for v in roi)
        if roi_w and roi_h and width and height and (x_off + roi_w > width or y_off + roi_h > height):
            raise CameraInfoError(f'roi {roi_w}x{roi_h} at ({x_off}, {y_off}) lies outside the {width}x{height} '
                                  'sensor')
        full_w, full_h = (roi_w, roi_h) if roi_w and roi_h else (int(width), int(height))
        expect = (full_h // by, full_w // bx)
        if image_size is not None and tuple(image_size) != expect:
            raise CameraInfoError(f'CameraInfo describes a {expect[1]}x{expect[0]} image (size {width}x{height}, '
                                  f'binning {bx}x{by}, roi {roi_w}x{roi_h}) but the image is '
                                  f'{image_size[1]}x{image_size[0]}')
        if min(expect) < 1:
            raise CameraInfoError(f'CameraInfo size {width}x{height} is empty')
        return cls(expect[1], expect[0], tuple(float(v) for v in k), d, distortion_model, bx, by, x_off, y_off)

    @classmethod
    def from_msg(cls, msg: Any, image_size: tuple, rectified: bool = False) -> 'PinholeCamera':
        """From a sensor_msgs/CameraInfo message (rclpy's or a rosbags-deserialized one: fields are read by name)."""
        roi = msg.roi
        return cls.from_camera_info(
            k=list(msg.k), d=list(msg.d), distortion_model=msg.distortion_model, width=msg.width,
            height=msg.height, binning_x=msg.binning_x, binning_y=msg.binning_y,
            roi=(roi.x_offset, roi.y_offset, roi.height, roi.width), p=list(msg.p), rectified=rectified,
            image_size=image_size)

    def pooled(self, pool: int) -> 'PinholeCamera':
        """The camera of this image reduced by ``pool`` x ``pool`` blocks (a pixel per block, at its centre)."""
        if pool == 1:
            return self
        return dataclasses.replace(self, width=self.width // pool, height=self.height // pool,
                                   binning_x=self.binning_x * pool, binning_y=self.binning_y * pool,
                                   x_offset=self.x_offset + (pool - 1) / 2 * self.binning_x,
                                   y_offset=self.y_offset + (pool - 1) / 2 * self.binning_y)

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.k, np.float64).reshape(3, 3)

    def _sensor_pixels(self) -> np.ndarray:
        """(H*W, 2) full-sensor coordinates of every image pixel's centre."""
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        return np.stack([u.ravel() * self.binning_x + self.x_offset, v.ravel() * self.binning_y + self.y_offset], 1)

    def rays(self) -> np.ndarray:
        """(H*W, 3) rays (x/z, y/z, 1) in the optical frame of every pixel, distortion undone."""
        pix = self._sensor_pixels()
        if any(self.d):
            src = pix.reshape(-1, 1, 2)
            if self.distortion_model == 'equidistant':
                norm = cv2.fisheye.undistortPoints(src, self.matrix, np.asarray(self.d, np.float64))
            else:
                norm = cv2.undistortPoints(src, self.matrix, np.asarray(self.d, np.float64))
            xy = norm.reshape(-1, 2)
        else:
            k = self.k
            xy = np.stack([(pix[:, 0] - k[2]) / k[0], (pix[:, 1] - k[5]) / k[4]], 1)
        return np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1)

    def project(self, points: np.ndarray) -> tuple:
        """Image pixel coordinates (u, v) of (N, 3) points in the optical frame, and a mask of those in front."""
        points = np.asarray(points, np.float64)
        front = points[:, 2] > 1e-9
        z = np.where(front, points[:, 2], 1.0)
        xy = np.stack([points[:, 0] / z, points[:, 1] / z], 1)
        if any(self.d):
            obj = np.concatenate([xy, np.ones((len(xy), 1))], 1).reshape(-1, 1, 3)
            zero = np.zeros(3)
            if self.distortion_model == 'equidistant':
                pix, _ = cv2.fisheye.projectPoints(obj, zero, zero, self.matrix, np.asarray(self.d, np.float64))
            else:
                pix, _ = cv2.projectPoints(obj, zero, zero, self.matrix, np.asarray(self.d, np.float64))
            pix = pix.reshape(-1, 2)
        else:
            k = self.k
            pix = np.stack([xy[:, 0] * k[0] + k[2], xy[:, 1] * k[4] + k[5]], 1)
        u = (pix[:, 0] - self.x_offset) / self.binning_x
        v = (pix[:, 1] - self.y_offset) / self.binning_y
        return u, v, front


@dataclasses.dataclass
class CostmapFrame:
    """One frame's output: the grid (height, width) int8 and the obstacles' floor-contact points (N, 3) float32
    in the robot frame (one per occupied cell; 3-D points with a depth image)."""
    grid: np.ndarray
    obstacles: np.ndarray


class GroundCostmap:
    """Label images -> occupancy grids for one grid and class table; geometry set with :meth:`set_camera`."""

    def __init__(self, grid: GridSpec, class_costs: Sequence[int], *, min_confidence: float = 0.0,
                 max_range: float = 0.0, see_past_obstacles: bool = True, fusion_decay: float = 0.0,
                 overhang_margin: float = 0.5, pool: int = 3,
                 min_obstacle_height: float = 0.05, max_obstacle_height: float = 2.0):
        if not 0.0 <= fusion_decay < 1.0:
            raise ValueError(f'fusion_decay must be in [0, 1), got {fusion_decay}')
        costs = np.asarray(class_costs, np.int64)
        if costs.ndim != 1 or costs.size == 0 or costs.min() < UNKNOWN or costs.max() > LETHAL:
            raise ValueError('class_costs must be one cost in -1..100 per class')
        self.grid = grid
        self.class_costs = costs
        self.min_confidence = float(min_confidence)
        self.max_range = float(max_range)
        self.see_past_obstacles = bool(see_past_obstacles)
        self.overhang_margin = float(overhang_margin)
        if int(pool) < 1:
            raise ValueError(f'pool must be >= 1, got {pool}')
        self.pool = int(pool)
        self._pool_kernel = np.ones((self.pool, self.pool), np.uint8)
        self.fusion_decay = float(fusion_decay)
        self.min_obstacle_height = float(min_obstacle_height)
        self.max_obstacle_height = float(max_obstacle_height)
        size = 65536 if costs.size > 255 else 256
        ranks = np.where(costs == UNKNOWN, _RANK_UNKNOWN, np.where(costs == FREE, _RANK_FREE, 2 + costs))
        standing = costs >= STANDING_COST
        # per label id: the rank of a ground pixel (standing classes contribute nothing unless at a contact)
        self._lut_ground = np.full(size, _RANK_UNKNOWN, np.uint8)
        self._lut_ground[:costs.size] = np.where(standing, _RANK_NONE, ranks)
        # per label id: the rank of a standing pixel at a contact (0 for the other classes)
        self._lut_standing = np.zeros(size, np.uint8)
        self._lut_standing[:costs.size] = np.where(standing, ranks, 0)
        self._closing = np.ones((CONTACT_GAP + 1, 1), np.uint8)
        self._key = None
        self._fused = None

    # ------------------------------------------------------------------ geometry (once per camera and pose)
    def set_camera(self, camera: PinholeCamera, camera_to_robot: np.ndarray) -> bool:
        """Use this camera and pose; the pixel<->cell tables are rebuilt only when they change (returns True)."""
        pose = np.asarray(camera_to_robot, np.float64)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError('camera_to_robot must be a finite 4x4 transform')
        key = (camera, pose.round(6).tobytes())
        if key == self._key:
            return False
        self.camera = camera
        camera = self.grid_camera = camera.pooled(self.pool)
        rot, origin = pose[:3, :3], pose[:3, 3]
        self._rot = rot
        rays = camera.rays() @ rot.T                          # (HW, 3) robot-frame directions
        down = rays[:, 2] < -_HORIZON_EPS                    # below the horizon
        scale = np.where(down, -origin[2] / np.where(down, rays[:, 2], -1.0), -1.0)
        down &= scale > 0                                    # the camera is above the ground
        gx = origin[0] + scale * rays[:, 0]
        gy = origin[1] + scale * rays[:, 1]
        if self.max_range > 0:
            down &= np.hypot(gx - origin[0], gy - origin[1]) <= self.max_range
        pix_cell = np.where(down, self.grid.cell_index(gx, gy), -1)
        # one sample pixel per visible cell (cells far away are smaller than a pixel)
        cx, cy = self.grid.cell_centres()
        centres = np.stack([cx.ravel(), cy.ravel(), np.zeros(cx.size)], 1)
        in_cam = (centres - origin) @ rot                    # robot -> optical frame
        u, v, front = camera.project(in_cam)
        ui, vi = np.round(u), np.round(v)
        visible = front & (ui >= 0) & (ui < camera.width) & (vi >= 0) & (vi < camera.height)
        if self.max_range > 0:
            visible &= np.hypot(centres[:, 0] - origin[0], centres[:, 1] - origin[1]) <= self.max_range
        if origin[2] <= 0:
            visible[:] = False
        cell_ids = np.flatnonzero(visible)
        cell_pix = (vi[visible] * camera.width + ui[visible]).astype(np.int64)
        fwd_pix = np.flatnonzero(pix_cell >= 0)
        pixels = np.concatenate([fwd_pix, cell_pix])
        cells = np.concatenate([pix_cell[fwd_pix], cell_ids])
        order = np.argsort(cells, kind='stable')
        cells, pixels = cells[order], pixels[order]
        self._cell_buckets = _cell_buckets(cells, pixels)
        self.pixel_cells = pix_cell
        self._ground_xy = np.stack([gx, gy], 1).astype(np.float32)
        # per pixel, for depth: a point at depth z is origin + z * ray; its ground distance is z * ray_reach
        self._ray_x, self._ray_y, self._ray_z = (np.ascontiguousarray(rays[:, i], np.float32) for i in range(3))
        self._ray_reach = np.hypot(rays[:, 0], rays[:, 1]).astype(np.float32)
        self._origin = origin.astype(np.float32)
        # the same rays and origin in grid cells from cell (0, 0)'s corner: a point's cell without metres
        self._ray_col, self._ray_row = (np.ascontiguousarray(rays[:, i] / self.grid.resolution, np.float32)
                                        for i in range(2))
        self._origin_cells = np.float32(self.grid.cell_coords(origin[0], origin[1]))
        self.visible = visible.reshape(self.grid.shape) | (np.bincount(
            pix_cell[fwd_pix], minlength=self.grid.width * self.grid.height).reshape(self.grid.shape) > 0)
        self._build_verticals(camera, rays, origin)
        self._key = key
        return True

    def _build_verticals(self, camera, rays, origin):
        """Sample the image along world-vertical lines: a virtual image of azimuth (columns) x depression below
        the horizon (rows, growing towards the robot), one image pixel per sample (nearest), about one pixel
        apart. A world-vertical edge is one virtual column, so the floor contact of a standing thing is the lowest
        standing sample of a run in its virtual column, also where perspective slants verticals in the image."""
        horiz = np.hypot(rays[:, 0], rays[:, 1])
        below = rays[:, 2] < -_HORIZON_EPS
        if not below.any() or origin[2] <= 0:
            self._vert_pix = np.zeros((0, 0), np.int32)
            self._vert_ok = np.zeros((0, 0), bool)
            self._shadow_end = np.zeros((0, 1), np.int32)
            self._contact_ok = self._vert_ok
            return
        look = self._rot[:, 2] if np.hypot(*self._rot[:2, 2]) > 1e-3 else -self._rot[:, 1]  # optical z, else up
        heading = np.arctan2(look[1], look[0])
        az = (np.arctan2(rays[below, 1], rays[below, 0]) - heading + np.pi) % (2 * np.pi) - np.pi
        dep = np.arctan2(-rays[below, 2], horiz[below])
        span_az, span_dep = az.max() - az.min(), dep.max() - dep.min()
        step = 1.0 / max(camera.k[0] / camera.binning_x, camera.k[4] / camera.binning_y)   # ~ one pixel
        step *= max(1.0, np.sqrt(span_az * span_dep / step**2 / (2.0 * camera.width * camera.height)))
        azs = az.min() + heading + LINE_SPACING * step * np.arange(int(np.ceil(span_az / step / LINE_SPACING)) + 1)
        deps = dep.min() + step * np.arange(int(np.ceil(span_dep / step)) + 1)
        cd = np.cos(deps)[:, None]
        dirs = np.stack([cd * np.cos(azs)[None], cd * np.sin(azs)[None],
                         np.broadcast_to(-np.sin(deps)[:, None], cd.shape[:1] + azs.shape)], -1).reshape(-1, 3)
        u, v, front = camera.project(dirs @ self._rot)
        ui, vi = np.round(u), np.round(v)
        ok = front & (ui >= 0) & (ui < camera.width) & (vi >= 0) & (vi < camera.height)
        self._vert_pix = np.where(ok, vi * camera.width + ui, 0).astype(np.int32).reshape(deps.size, azs.size)
        self._vert_ok = ok.reshape(deps.size, azs.size)
        # a run that leaves the image ends in a contact only through the bottom row (the nearest ground seen);
        # through a side it is cut by the field of view, not standing on the floor there
        bottom = self._vert_pix >= (camera.height - 1) * camera.width
        self._contact_ok = self._vert_ok & (np.r_[self._vert_ok[1:], np.zeros((1, azs.size), bool)] | bottom)
        # rows below each row whose ground lies within overhang_margin in front of it (distance falls with the row)
        ground = origin[2] / np.tan(deps)
        # (the last row each row shadows)
        last = np.searchsorted(-ground, -(ground - self.overhang_margin), side='right') - 1
        self._shadow_end = last.astype(np.int32)[:, None]

    # ------------------------------------------------------------------ frames
    def update(self, labels: np.ndarray, confidence: np.ndarray | None = None, depth: np.ndarray | None = None,
               trust_free: bool = True) -> CostmapFrame:
        """One label image (H, W) (+ max-softmax confidence, + depth in metres) -> :class:`CostmapFrame`.
        ``trust_free=False`` (e.g. while the domain-shift alarm is raised): no cell is free, floor is unknown;
        obstacles are placed as always."""
        if self._key is None:
            raise RuntimeError('set_camera() first')
        shape = (self.camera.height, self.camera.width)
        for name, array in (('labels', labels), ('confidence', confidence), ('depth', depth)):
            if array is not None and array.shape != shape:
                raise ValueError(f'{name} are {array.shape[1]}x{array.shape[0]} but the camera is '
                                 f'{shape[1]}x{shape[0]}')
        # standing classes: the maximum of each block (contacts err towards the robot); ground classes: the
        # block's centre pixel; a block with one unsure pixel is unsure. Unsure pixels are _UNSURE (above every
        # rank) in the standing image, so one block maximum gives both.
        standing = _lookup(labels, self._lut_standing)
        if confidence is not None and self.min_confidence > 0:
            unsure = cv2.compare(confidence, self.min_confidence, cv2.CMP_LT)   # 255 where unsure, else 0
            standing = self._pooled(cv2.max(standing, unsure), 'max')
            unsure = standing == _UNSURE
            standing[unsure] = 0
        else:
            standing, unsure = self._pooled(standing, 'max'), None
        rank = _lookup(self._pooled(labels, 'sample'), self._lut_ground)
        if unsure is not None:
            rank[unsure & (rank < _RANK_UNKNOWN)] = _RANK_UNKNOWN   # unsure: never free
        if not trust_free:
            rank[rank == _RANK_FREE] = _RANK_UNKNOWN
        if depth is not None:
            return self._finish(*self._update_depth(rank, standing, self._pooled(depth, 'sample')))
        flat = rank.reshape(-1)
        on_line = ((standing.reshape(-1).take(self._vert_pix) > 0) & self._vert_ok).view(np.uint8)
        # close gaps of up to CONTACT_GAP samples along each line: an edge of a thing that is a world vertical
        # runs along one line through a pixel staircase and would flicker, each flicker a false contact
        if on_line.size:
            on_line = cv2.morphologyEx(on_line, cv2.MORPH_CLOSE, self._closing)
        on_line = on_line.view(bool)
        contact = on_line & self._contact_ok
        contact[:-1] &= ~on_line[1:]
        if not self.see_past_obstacles:
            past = np.arange(contact.shape[0])[:, None] < np.where(
                contact.any(axis=0), contact.shape[0] - 1 - np.argmax(contact[::-1], axis=0), -1)[None, :]
            flat[self._vert_pix[past & self._vert_ok]] = _RANK_NONE
            contact &= ~past
        contact_at = np.flatnonzero(contact)
        if self.overhang_margin > 0:
            # floor within overhang_margin in front of a contact may lie under an overhang: unknown, not free.
            # Each contact shadows the samples below it on its line down to the last one within the margin
            # (contacts are few: the shadowed runs are listed, not found by a pass over the whole image)
            rows = contact_at // contact.shape[1]
            length = np.maximum(self._shadow_end[rows, 0] - rows, 0)
            # the line-image index of every shadowed sample: each contact's next `length` samples down its line
            shadow = np.repeat(contact_at + contact.shape[1] * (1 - np.cumsum(length) + length), length)
            shadow += contact.shape[1] * np.arange(shadow.size)
            shadow = shadow[self._vert_ok.reshape(-1).take(shadow) & ~on_line.reshape(-1).take(shadow)]
            idx = self._vert_pix.reshape(-1).take(shadow)
            flat[idx] = np.maximum(flat.take(idx), _RANK_UNKNOWN)
        contact_idx = self._vert_pix.reshape(-1).take(contact_at)
        flat[contact_idx] = standing.reshape(-1).take(contact_idx)
        grid_rank = np.zeros(self.grid.width * self.grid.height, np.uint8)
        for cells, pixels in self._cell_buckets:
            grid_rank[cells] = flat.take(pixels).max(axis=0)
        cells = self.pixel_cells[contact_idx]
        keep = cells >= 0
        cells, first = np.unique(cells[keep], return_index=True)
        points = np.zeros((first.size, 3), np.float32)
        points[:, :2] = self._ground_xy[contact_idx[keep][first]]
        return self._finish(grid_rank, points)

    def _pooled(self, image, how):
        """``image`` reduced to the grid camera's pixels: each pool x pool block's 'max' or 'sample' (the pixel
        nearest its centre)."""
        if self.pool == 1:
            return image
        h, w, p = self.grid_camera.height, self.grid_camera.width, self.pool
        if how == 'max':
            image = cv2.dilate(image, self._pool_kernel)
        return np.ascontiguousarray(image[p // 2:h * p:p, p // 2:w * p:p])

    def _update_depth(self, rank, standing, depth):
        valid = (depth > 0) & (depth < np.inf)            # NaN compares false
        z = np.zeros(depth.size, np.float32)
        np.copyto(z, depth.reshape(-1), where=valid.reshape(-1))
        valid = valid.reshape(-1)
        height = self._origin[2] + z * self._ray_z
        reach = z * self._ray_reach
        # "floor" that is not on the floor (a point min_obstacle_height or higher) is a misread obstacle: unknown,
        # not free
        not_free = height >= self.min_obstacle_height
        tall_mask = valid & not_free & (standing.reshape(-1) > 0) & (height <= self.max_obstacle_height)
        tall = np.flatnonzero(tall_mask)
        flat_rank = rank.reshape(-1).copy()
        flat_rank[tall] = standing.reshape(-1)[tall]
        if tall.size:
            # floor seen under a standing point (lower in the image column, farther away) lies beneath an
            # overhang: unknown, not free. Down a column the nearest standing point seen so far bounds the free
            # floor; the scan starts at the first row with a standing point (above it nothing is bounded)
            start = tall[0] // depth.shape[1] * depth.shape[1]
            bound = np.full(z.size - start, np.inf, np.float32)
            np.copyto(bound, reach[start:], where=tall_mask[start:])
            nearest = _running_min_down(bound.reshape(-1, depth.shape[1])).reshape(-1)
            nearest += np.float32(self.grid.resolution)
            not_free[start:] |= reach[start:] > nearest
        np.copyto(flat_rank, _RANK_UNKNOWN, where=(flat_rank == _RANK_FREE) & not_free)
        if self.max_range > 0:
            np.copyto(flat_rank, _RANK_NONE, where=reach > self.max_range)
        # each point's cell; points outside the grid or without depth go to a spare cell
        size = self.grid.width * self.grid.height
        col, row = z * self._ray_col, z * self._ray_row
        col += self._origin_cells[0]
        row += self._origin_cells[1]
        cells = self.grid.index_of_cell_coords(col, row)
        outside = (cells < 0) | ~valid
        np.copyto(cells, size, where=outside)
        grid_rank = np.zeros(size + 1, np.uint8)
        np.maximum.at(grid_rank, cells, flat_rank)
        grid_rank = grid_rank[:size]
        # one obstacle point per occupied cell (its first pixel), in cell order: a scatter, not a sort
        obstacle = tall[(flat_rank[tall] > _RANK_UNKNOWN) & ~outside[tall]]
        first = np.full(size, z.size, np.intp)
        np.minimum.at(first, cells[obstacle], obstacle)
        keep = first[first < z.size]
        x, y = self._origin[0] + z[keep] * self._ray_x[keep], self._origin[1] + z[keep] * self._ray_y[keep]
        return grid_rank, np.stack([x, y, height[keep]], 1).astype(np.float32)

    def _finish(self, grid_rank, points):
        grid = cv2.LUT(grid_rank, _RANK_TO_VALUE_BITS).view(np.int8).reshape(self.grid.shape)
        if self.fusion_decay > 0:
            grid = self._fuse(grid)
        return CostmapFrame(grid=grid, obstacles=points)

    def _fuse(self, grid):
        if self._fused is None or self._fused[0].shape != grid.shape:
            self._fused = (np.zeros(grid.shape, np.float32), np.zeros(grid.shape, np.float32))
        total, weight = self._fused
        total *= self.fusion_decay
        weight *= self.fusion_decay
        seen = grid >= 0
        total[seen] += grid[seen]
        weight[seen] += 1.0
        known = weight >= FUSION_MIN_WEIGHT
        out = np.full(grid.shape, UNKNOWN, np.int8)
        out[known] = np.round(total[known] / weight[known]).astype(np.int8)
        return out
