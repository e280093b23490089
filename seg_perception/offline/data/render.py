"""Render labelled robot-camera sequences with pybullet (CPU, ``p.DIRECT`` + ``ER_TINY_RENDERER``).

Each sequence is one randomised scene: a textured floor, walls forming a room or a corridor (or no walls in an
open, outdoor-ish scene with a far backdrop), static obstacles (boxes, tables, shelves, cabinets, chairs,
``pybullet_data`` tables), people and robots/vehicles. A camera mounted on a robot drives a short random
path through it, ``seq_len`` frames per sequence. ``pybullet_data`` ships no human mesh that stands upright and
can be posed cheaply, so people are stand-ins assembled from capsules, cylinders and a sphere (legs, torso,
arms, head) with random clothing and skin colours; they and the robots may walk during a sequence.

Randomised per sequence: layout, room/corridor size, floor texture (procedural tiles, planks, concrete,
carpet, asphalt, grass or a ``pybullet_data`` texture), wall colours/textures, clutter level
(uniform in ``clutter=(lo, hi)``; 0 = floor and walls only, 1 = crowded) which scales the number of
obstacles, people and robots, lighting (direction, colour, ambient/diffuse/specular, shadows), sky colour,
camera height, pitch and vertical field of view. Output is a pure function of ``seed`` (and the options):
sequence ``k`` draws from ``numpy.random.default_rng([seed, k])``.

Ground truth per frame (dicts yielded by :func:`render_frames`):

``image``       HxWx3 uint8 RGB.
``label``       HxW uint8 class ids of :mod:`seg_perception.classes` (pixels that hit nothing -> background).
``depth``       HxW float32 metres along the optical axis; ``inf`` where nothing was hit (REP 117).
``pose``        camera_optical_frame in the world: ``position`` [x, y, z], ``orientation`` [x, y, z, w]
                (x right, y down, z forward).
``base_pose``   robot base in the world: ``x``, ``y``, ``yaw``.
``intrinsics``  ``fx, fy, cx, cy, width, height, fov_y_deg`` (pinhole, pixel centres at integers; the tiny
                renderer samples pixel (u, v) at u - W/2, v - (H/2 - 1) from the axis, so cx = W/2, cy = H/2 - 1).
``occupancy``   int8 grid in the robot's base frame (``base_link``: x forward, y left): ``OCC_SIZE_M`` square
                at ``OCC_RESOLUTION``; cell ``[r, c]`` covers x in ``origin_x + c*res``, y in
                ``origin_y + r*res`` with the robot at the grid centre (origin = -size/2, -size/2), i.e. the
                ``nav_msgs/OccupancyGrid`` data order. 100 = footprint of a wall/obstacle/person/robot
                (their shapes projected on the floor), 0 = free floor, -1 = outside the floor.
``occupancy_info`` ``resolution``, ``width``, ``height``, ``origin`` [x, y, yaw] of cell (0, 0)'s corner.
plus ``name``, ``sequence``, ``frame``, ``layout``, ``clutter``, ``counts`` (objects spawned per class),
``pixel_counts``, ``stamp_ns`` (10 Hz from ``BAG_START_NS``).

Command line (``seg-perception render``), both outputs from one pass:

``--out DIR``  dataset in the generic layout read by :mod:`seg_perception.offline.data.datasets` (``--split S``
               puts the files one level deeper, ``images/S/NAME.png`` etc., so train/val can share DIR):
               ``images/NAME.png`` (RGB), ``masks/NAME.png`` (uint8 class ids), ``depth/NAME.png`` (uint16 mm,
               0 = no return), ``occupancy/NAME.png`` (uint8: 0 free, 100 occupied, 255 unknown; row = y cell),
               ``meta/NAME.json`` and ``classes.yaml`` (names, palette, ignore_index).
``--bag PATH`` rosbag2 (mcap with zstd chunk compression by default, or sqlite3); topics, all stamped at the
               frame's time with ``frame_id`` ``camera_optical_frame`` (camera) / ``base_link`` (occupancy):

               /camera/image_raw              sensor_msgs/msg/Image rgb8
               /camera/image_raw/compressed   sensor_msgs/msg/CompressedImage jpeg (``--jpeg``)
               /camera/camera_info            sensor_msgs/msg/CameraInfo (plumb_bob, zero distortion)
               /camera/depth                  sensor_msgs/msg/Image 32FC1 metres (``--depth``)
               /ground_truth/labels           sensor_msgs/msg/Image mono8 class ids
               /ground_truth/occupancy        nav_msgs/msg/OccupancyGrid
               /tf                            tf2_msgs/msg/TFMessage: base_link -> camera_optical_frame
"""
import argparse
import contextlib
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from seg_perception.classes import (
    BACKGROUND,
    FLOOR,
    IGNORE_INDEX,
    OBSTACLE,
    PERSON,
    ROBOT,
    SCENE_CLASS_NAMES,
    SCENE_PALETTE,
    WALL,
)
from seg_perception.errors import UserError

from ..argtypes import non_negative_int, positive_int, share
from .bags import DEFAULT_START_NS as BAG_START_NS  # the one bag start time
from .shapes import assembled_obstacle, assembled_person, assembled_robot, colour, hsv_colour, leg, limb, neck

OCC_SIZE_M = 10.0
OCC_RESOLUTION = 0.05
NEAR, FAR = 0.05, 60.0
FRAME_PERIOD_NS = 100_000_000
LAYOUTS = ('room', 'corridor', 'open')
_FLOOR_HALF = 20.0
_FOOTPRINT_MAX_Z = 2.0


class _Client:
    """The pybullet module bound to a DIRECT connection of its own, so several renderers can share a process."""

    def __init__(self):
        import pybullet
        self._pybullet = pybullet
        self._id = pybullet.connect(pybullet.DIRECT)

    def __getattr__(self, name):
        attr = getattr(self._pybullet, name)
        if callable(attr):
            return functools.partial(attr, physicsClientId=self._id)
        return attr


def _pybullet():
    import pybullet_data
    return _Client(), pybullet_data.getDataPath()


@contextlib.contextmanager
def _quiet_stdout():
    """Silence pybullet's C-level URDF importer warnings (printed to the process's stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _quat_from_matrix(m):
    """Quaternion [x, y, z, w] (w >= 0) of a 3x3 rotation matrix."""
    t = m[0, 0] + m[1, 1] + m[2, 2]
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    sign = -1.0 if q[3] < 0 else 1.0
    return [sign * float(v) for v in q]


def _half_height(kind, dims):
    """Half the height of a primitive part: box half-extents, sphere radius, cylinder/capsule radius + length."""
    if kind == 'box':
        return dims[2]
    if kind == 'sphere':
        return dims[0]
    if kind == 'cylinder':
        return dims[1] / 2
    return dims[0] + dims[1] / 2


def _rect(cx, cy, hx, hy):
    """Corners of an axis-aligned rectangle (local footprint polygon)."""
    return np.array([[cx - hx, cy - hy], [cx + hx, cy - hy], [cx + hx, cy + hy], [cx - hx, cy + hy]], np.float64)


def _floor_mesh(texture_span, cells=8):
    """Vertices, triangle indices, normals and uvs of the floor square split into ``cells`` x ``cells`` quads.

    Smaller triangles rasterize faster in the tiny renderer; uvs repeat the texture every ``texture_span`` m."""
    ticks = np.linspace(-_FLOOR_HALF, _FLOOR_HALF, cells + 1)
    gx, gy = np.meshgrid(ticks, ticks, indexing='ij')
    vertices = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
    indices = []
    for i in range(cells):
        for j in range(cells):
            a = i * (cells + 1) + j
            indices += [a, a + cells + 1, a + cells + 2, a, a + cells + 2, a + 1]
    return {'vertices': vertices.tolist(), 'indices': indices, 'normals': [[0, 0, 1]] * len(vertices),
            'uvs': (vertices[:, :2] / texture_span).tolist()}


class _Textures:
    """Procedural textures written as PNGs to a temporary folder, plus a few from pybullet_data."""

    KINDS = ('tiles', 'planks', 'concrete', 'carpet', 'checker', 'asphalt', 'grass', 'data')
    DATA_FILES = ('checker_blue.png', 'tex256.png', 'table/table.png', 'table_square/checker_grid.jpg')

    def __init__(self, data_path):
        self._dir = tempfile.TemporaryDirectory(prefix='seg_render_')
        self._data_path = data_path
        self._count = 0

    def close(self) -> None:
        self._dir.cleanup()

    def make(self, rng: np.random.Generator, kind: str, size: int = 256) -> str:
        """Path of a new texture of ``kind``."""
        if kind == 'data':
            return os.path.join(self._data_path, self.DATA_FILES[rng.integers(len(self.DATA_FILES))])
        base = np.array(hsv_colour(rng, (0, 360), (0.0, 0.6), (0.3, 0.9))[:3]) * 255
        noise = rng.normal(0, 1, (size, size)).astype(np.float32)
        img = np.empty((size, size, 3), np.float32)
        img[:] = base
        yy, xx = np.mgrid[0:size, 0:size]
        if kind == 'tiles':
            n = int(rng.integers(4, 12))
            grout = ((xx % (size // n)) < 3) | ((yy % (size // n)) < 3)
            img += noise[..., None] * 6
            img[grout] = base * 0.55
        elif kind == 'planks':
            n = int(rng.integers(4, 10))
            row = yy // (size // n)
            shade = rng.uniform(0.8, 1.15, n + 1)[row]
            grain = np.sin(xx / rng.uniform(2, 6) + cv2.GaussianBlur(noise, (0, 0), 3) * 8) * 10
            img = img * shade[..., None] + grain[..., None]
            img[(yy % (size // n)) < 2] *= 0.5
        elif kind == 'checker':
            n = int(rng.integers(2, 8))
            other = np.array(colour(rng)[:3]) * 255
            mask = ((xx // (size // n)) + (yy // (size // n))) % 2 == 1
            img[mask] = other
        else:
            sigma, amp = {'concrete': (1.5, 18), 'carpet': (0.7, 25), 'asphalt': (1.0, 22), 'grass': (0.8, 40)}[kind]
            if kind == 'asphalt':
                img[:] = rng.uniform(50, 90)
            elif kind == 'grass':
                img[:] = np.array(hsv_colour(rng, (75, 130), (0.4, 0.8), (0.3, 0.6))[:3]) * 255
            blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
            blurred /= blurred.std() + 1e-6
            img += blurred[..., None] * amp
            blotch = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (size, size),
                                interpolation=cv2.INTER_CUBIC)
            img += blotch[..., None] * amp * 0.4
        path = os.path.join(self._dir.name, f'tex{self._count}.png')
        self._count += 1
        cv2.imwrite(path, cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        return path


class _Scene:
    """One randomised scene in a pybullet client, with the class of every body and its floor footprint."""

    def __init__(self, p, data_path, textures, rng, clutter, layout, seq_len, variety=0.0, shapes=0.0, close=0.0):
        self.p, self.data_path, self.textures, self.rng = p, data_path, textures, rng
        self.clutter, self.layout, self.seq_len, self.variety = clutter, layout, seq_len, variety
        self.shapes, self.close = shapes, close
        self.body_class = {}
        self.footprints = []
        self.movers = []
        self.counts = {name: 0 for name in SCENE_CLASS_NAMES}
        p.resetSimulation()
        self._build()

    def _visual(self, kind, dims, rgba):
        p = self.p
        if kind == 'box':
            return p.createVisualShape(p.GEOM_BOX, halfExtents=dims, rgbaColor=rgba)
        if kind == 'sphere':
            return p.createVisualShape(p.GEOM_SPHERE, radius=dims[0], rgbaColor=rgba)
        shape = p.GEOM_CAPSULE if kind == 'capsule' else p.GEOM_CYLINDER
        return p.createVisualShape(shape, radius=dims[0], length=dims[1], rgbaColor=rgba)

    def _compound(self, parts, x, y, yaw, cls, texture=None):
        """A rigid body made of primitive parts ``(kind, dims, (lx, ly, lz), rgba[, (roll, pitch)])``; returns
        its id. With probability ``variety`` an obstacle, person or robot without a texture gets a random one.

        Its footprint is the union of the parts' floor projections (boxes: their rectangles; round parts:
        the bounding square of their radius)."""
        p = self.p
        if texture is None and cls != WALL and self.variety > 0 and self.rng.random() < self.variety:
            texture = self.textures.make(self.rng, _Textures.KINDS[self.rng.integers(len(_Textures.KINDS))])
        visuals = [self._visual(kind, dims, rgba) for kind, dims, _, rgba, *_ in parts]
        n = len(parts)
        orientations = [p.getQuaternionFromEuler([*part[4], 0]) if len(part) > 4 else [0, 0, 0, 1]
                        for part in parts]
        body = p.createMultiBody(
            baseMass=0, baseVisualShapeIndex=-1, baseCollisionShapeIndex=-1, basePosition=[x, y, 0],
            baseOrientation=p.getQuaternionFromEuler([0, 0, yaw]),
            linkMasses=[0] * n, linkCollisionShapeIndices=[-1] * n, linkVisualShapeIndices=visuals,
            linkPositions=[list(part[2]) for part in parts], linkOrientations=orientations,
            linkInertialFramePositions=[[0, 0, 0]] * n, linkInertialFrameOrientations=[[0, 0, 0, 1]] * n,
            linkParentIndices=[0] * n, linkJointTypes=[p.JOINT_FIXED] * n, linkJointAxis=[[0, 0, 1]] * n)
        if texture is not None:
            tex = p.loadTexture(texture)
            for link in range(n):
                p.changeVisualShape(body, link, textureUniqueId=tex)
        polys = []
        for kind, dims, (lx, ly, lz), *_ in parts:
            half_height = _half_height(kind, dims)
            if lz - half_height > _FOOTPRINT_MAX_Z:
                continue
            hx, hy = (dims[0], dims[1]) if kind == 'box' else (dims[0], dims[0])
            polys.append(_rect(lx, ly, hx, hy))
        self._register(body, cls, polys, x, y, yaw)
        return body

    def _register(self, body, cls, polys, x, y, yaw):
        self.body_class[body] = cls
        self.footprints.append([body, cls, polys, x, y, yaw])
        self.counts[SCENE_CLASS_NAMES[cls]] += 1

    def _urdf(self, name, x, y, yaw, cls, scale=1.0, origin_on_floor=False):
        """Load a pybullet_data URDF standing on the floor; footprint from its links' (collision) AABBs.

        The body is lifted so its lowest collision shape touches the floor, unless ``origin_on_floor`` (URDFs
        such as the tables whose collision shapes leave out the legs and whose origin is on the floor)."""
        p = self.p
        with _quiet_stdout():
            body = p.loadURDF(os.path.join(self.data_path, name), [0, 0, 0], [0, 0, 0, 1], useFixedBase=True,
                              globalScaling=scale, flags=p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES)
        boxes = [p.getAABB(body, link) for link in range(-1, p.getNumJoints(body))]
        lo = np.min([b[0] for b in boxes], axis=0)
        hi_z = np.max([b[1][2] for b in boxes])
        polys = [_rect((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (b[0] - a[0]) / 2, (b[1] - a[1]) / 2)
                 for a, b in boxes if a[2] - lo[2] < _FOOTPRINT_MAX_Z and b[0] > a[0]]
        base_z = 0.0 if origin_on_floor else -lo[2]
        p.resetBasePositionAndOrientation(body, [x, y, base_z], p.getQuaternionFromEuler([0, 0, yaw]))
        self._register(body, cls, polys, x, y, yaw)
        return body, hi_z + base_z

    def _build(self):
        self._floor()
        if self.layout == 'room':
            self._room()
        elif self.layout == 'corridor':
            self._corridor()
        else:
            self._open()
        self._trajectory()
        self._populate()

    def _floor(self):
        p, rng = self.p, self.rng
        kind = ('asphalt', 'grass', 'concrete', 'checker') if self.layout == 'open' else _Textures.KINDS
        kind = kind[rng.integers(len(kind))]
        vis = p.createVisualShape(p.GEOM_MESH, rgbaColor=[1, 1, 1, 1], **_floor_mesh(rng.uniform(1.5, 5.0)))
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vis, basePosition=[0, 0, 0])
        tex = p.loadTexture(self.textures.make(rng, kind))
        p.changeVisualShape(body, -1, textureUniqueId=tex, rgbaColor=hsv_colour(rng, (0, 360), (0, 0.2), (0.75, 1)))
        self.body_class[body] = FLOOR
        self.counts['floor'] += 1

    def _wall(self, x0, y0, x1, y1, height, thick, rgba, texture):
        length = math.hypot(x1 - x0, y1 - y0)
        if length < 0.05:
            return
        yaw = math.atan2(y1 - y0, x1 - x0)
        parts = [('box', [length / 2, thick / 2, height / 2], (0, 0, height / 2), rgba)]
        self._compound(parts, (x0 + x1) / 2, (y0 + y1) / 2, yaw, WALL, texture)

    def _wall_with_doors(self, x0, y0, x1, y1, height, thick, rgba, texture):
        """A wall segment with 0-2 door gaps."""
        length = math.hypot(x1 - x0, y1 - y0)
        cuts = [0.0]
        for _ in range(int(self.rng.integers(0, 3))):
            centre = self.rng.uniform(0.15, 0.85) * length
            cuts += [centre - 0.5, centre + 0.5]
        cuts.append(length)
        cuts = sorted(min(max(c, 0.0), length) for c in cuts)
        if len(cuts) > 2 and any(b < a for a, b in zip(cuts, cuts[1:])):
            cuts = [0.0, length]
        dx, dy = (x1 - x0) / max(length, 1e-9), (y1 - y0) / max(length, 1e-9)
        for a, b in zip(cuts[0::2], cuts[1::2]):
            self._wall(x0 + dx * a, y0 + dy * a, x0 + dx * b, y0 + dy * b, height, thick, rgba, texture)

    def _wall_style(self):
        rng = self.rng
        rgba = hsv_colour(rng, (0, 360), (0.0, 0.5), (0.35, 0.95))
        texture = self.textures.make(rng, ('concrete', 'tiles', 'planks')[rng.integers(3)]) \
            if rng.random() < 0.35 else None
        return rng.uniform(2.2, 3.5), rng.uniform(0.08, 0.25), rgba, texture

    def _room(self):
        rng = self.rng
        w, d = rng.uniform(4, 14), rng.uniform(4, 12)
        height, thick, rgba, texture = self._wall_style()
        self.bounds = (-w / 2, -d / 2, w / 2, d / 2)
        corners = [(-w / 2, -d / 2), (w / 2, -d / 2), (w / 2, d / 2), (-w / 2, d / 2)]
        for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
            if rng.random() < 0.4:
                rgba = hsv_colour(rng, (0, 360), (0.0, 0.5), (0.35, 0.95))
            self._wall_with_doors(x0, y0, x1, y1, height, thick, rgba, texture)
        if rng.random() < 0.4:
            x = rng.uniform(-w / 4, w / 4)
            self._wall(x, -d / 2, x, rng.uniform(-d / 2 + 1, 0), height, thick, rgba, texture)

    def _corridor(self):
        rng = self.rng
        width, length = rng.uniform(1.8, 4.0), rng.uniform(12, 24)
        height, thick, rgba, texture = self._wall_style()
        self.bounds = (-length / 2, -width / 2, length / 2, width / 2)
        for y in (-width / 2, width / 2):
            self._wall_with_doors(-length / 2, y, length / 2, y, height, thick, rgba, texture)
        self._wall(length / 2, -width / 2, length / 2, width / 2, height, thick,
                   hsv_colour(rng, (0, 360), (0.0, 0.5), (0.35, 0.95)), texture)
        if rng.random() < 0.5:
            self._wall(-length / 2, -width / 2, -length / 2, width / 2, height, thick, rgba, texture)

    def _open(self):
        rng = self.rng
        self.bounds = (-9.0, -9.0, 9.0, 9.0)
        for _ in range(int(rng.integers(0, 3))):
            height, thick, rgba, texture = self._wall_style()
            x, y, a = rng.uniform(-8, 8), rng.uniform(-8, 8), rng.uniform(0, math.pi)
            half = rng.uniform(1.5, 5)
            self._wall(x - half * math.cos(a), y - half * math.sin(a), x + half * math.cos(a), y + half * math.sin(a),
                       height, thick, rgba, texture)
        for _ in range(int(rng.integers(4, 12))):
            angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(24, 40)
            size = rng.uniform(3, 10, 3)
            parts = [('box', [size[0], size[1], size[2]], (0, 0, size[2]), colour(rng, 0.3, 0.8))]
            body = self._compound(parts, dist * math.cos(angle), dist * math.sin(angle), rng.uniform(0, math.pi),
                                  BACKGROUND)
            self.footprints = [f for f in self.footprints if f[0] != body]

    def _trajectory(self):
        """Robot poses (x, y, yaw) per frame: a noisy forward walk kept inside ``bounds``."""
        rng = self.rng
        x0, y0, x1, y1 = self.bounds
        margin = 0.6
        if self.layout == 'corridor':
            x, y, yaw = x0 + rng.uniform(0.8, 3.0), rng.uniform(y0 + margin, y1 - margin) * 0.5, rng.normal(0, 0.15)
        else:
            x, y = rng.uniform(x0 + margin, x1 - margin), rng.uniform(y0 + margin, y1 - margin)
            yaw = math.atan2(-y, -x) + rng.normal(0, 0.8)
        step = rng.uniform(0.05, 0.3)
        turn = rng.normal(0, 0.06)
        poses = []
        for _ in range(self.seq_len):
            poses.append((x, y, yaw))
            yaw += turn + rng.normal(0, 0.04)
            nx, ny = x + step * math.cos(yaw), y + step * math.sin(yaw)
            if not (x0 + margin < nx < x1 - margin and y0 + margin < ny < y1 - margin):
                yaw += math.pi / 2 * (1 if rng.random() < 0.5 else -1)
                nx, ny = x, y
            x, y = nx, ny
        self.path = np.array(poses)

    def _clear_of_path(self, x, y, radius, positions=None, margin=0.6):
        pts = self.path[:, :2] if positions is None else positions
        return bool(np.all(np.hypot(pts[:, 0] - x, pts[:, 1] - y) > radius + margin))

    def _free_spot(self, x, y, radius, margin=0.6):
        """Whether a body of ``radius`` at (x, y) stays inside ``bounds`` and ``margin`` clear of the camera's path."""
        x0, y0, x1, y1 = self.bounds
        inside = x0 + radius < x < x1 - radius and y0 + radius < y < y1 - radius
        return inside and self._clear_of_path(x, y, radius, margin=margin)

    def _sample_spot(self, radius, tries=30):
        """A floor position inside ``bounds``, preferably in front of the camera, clear of the path."""
        rng = self.rng
        x0, y0, x1, y1 = self.bounds
        for _ in range(tries):
            if rng.random() < 0.7:
                px, py, yaw = self.path[rng.integers(len(self.path))]
                dist, off = rng.uniform(0.8, 7.0), rng.normal(0, 0.45)
                x, y = px + dist * math.cos(yaw + off), py + dist * math.sin(yaw + off)
            else:
                x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if self._free_spot(x, y, radius):
                return x, y
        return None

    def _populate(self):
        rng, c = self.rng, self.clutter
        n_obstacles = int(rng.poisson(c * 14))
        n_people = int(rng.poisson(c * 5))
        n_robots = int(rng.poisson(c * 3))
        for _ in range(n_obstacles):
            self._obstacle()
        for _ in range(n_people):
            self._agent(self._person, 0.35, (0.3, 1.4))
        for _ in range(n_robots):
            self._agent(self._robot, 0.6, (0.2, 1.0))
        # draws nothing from the scene's random stream when off, so older datasets render unchanged
        if self.close > 0 and rng.random() < self.close:
            spawn, radius = (self._robot, 0.6) if rng.random() < 1 / 3 else (self._person, 0.35)
            self._close_agent(spawn, radius)

    def _close_agent(self, spawn, radius, tries=10):
        """Someone (or a robot) standing 0.1-1 m beyond its own radius ahead of the camera's last pose: farther
        off early in the sequence, large and cut off by the frame at its end, as when a person steps in front of
        the robot."""
        rng = self.rng
        px, py, yaw = self.path[-1]
        for _ in range(tries):
            dist, off = rng.uniform(radius + 0.1, radius + 1.0), rng.normal(0, 0.35)
            x, y = px + dist * math.cos(yaw + off), py + dist * math.sin(yaw + off)
            if self._free_spot(x, y, radius, margin=0.1):
                spawn(x, y, rng.uniform(0, 2 * math.pi))
                return

    def _assembled(self) -> bool:
        """Whether the next obstacle, person or robot is drawn from the assembled shape families (``shapes``);
        draws nothing from the scene's random stream when they are off, so older datasets render unchanged."""
        return self.shapes > 0 and self.rng.random() < self.shapes

    def _place(self, parts, cls, yaw):
        """Put the compound ``parts`` at a free spot wide enough for them, if there is one."""
        radius = max(math.hypot(abs(lx) + dims[0], abs(ly) + (dims[1] if shape == 'box' else dims[0]))
                     for shape, dims, (lx, ly, _), *_ in parts)
        spot = self._sample_spot(radius)
        if spot is not None:
            self._compound(parts, spot[0], spot[1], yaw, cls)

    def _obstacle(self):
        rng = self.rng
        if self._assembled():
            yaw = rng.uniform(0, 2 * math.pi)
            self._place(assembled_obstacle(rng), OBSTACLE, yaw)
            return
        kind = rng.choice(['box', 'boxes', 'table', 'shelf', 'cabinet', 'chair', 'urdf_table', 'pillar'],
                          p=[0.2, 0.1, 0.15, 0.12, 0.1, 0.13, 0.1, 0.1])
        yaw = rng.uniform(0, 2 * math.pi) if rng.random() < 0.5 else rng.choice([0, math.pi / 2])
        tint = hsv_colour(rng, (0, 360), (0.1, 0.8), (0.2, 0.95))
        if kind == 'urdf_table':
            name = 'table/table.urdf' if rng.random() < 0.6 else 'table_square/table_square.urdf'
            scale = rng.uniform(0.6, 1.0)
            spot = self._sample_spot(0.9 * scale)
            if spot is not None:
                self._urdf(name, spot[0], spot[1], yaw, OBSTACLE, scale=scale, origin_on_floor=True)
            return
        parts = []
        if kind == 'box':
            h = rng.uniform(0.15, 0.8, 3)
            parts = [('box', list(h * [1, 1, 0.8]), (0, 0, h[2] * 0.8), tint)]
        elif kind == 'boxes':
            z = 0.0
            for _ in range(int(rng.integers(2, 4))):
                h = rng.uniform(0.15, 0.4, 3)
                offset = (rng.normal(0, 0.05), rng.normal(0, 0.05), z + h[2])
                parts.append(('box', list(h), offset, colour(rng, 0.3, 0.8)))
                z += 2 * h[2]
        elif kind == 'table':
            w, d, h = rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.8)
            leg = hsv_colour(rng, (0, 360), (0, 0.3), (0.1, 0.6))
            parts = [('box', [w, d, 0.02], (0, 0, h), tint)]
            for sx in (-1, 1):
                for sy in (-1, 1):
                    parts.append(('box', [0.025, 0.025, h / 2], (sx * (w - 0.05), sy * (d - 0.05), h / 2), leg))
        elif kind == 'shelf':
            w, d, h = rng.uniform(0.4, 1.0), rng.uniform(0.15, 0.35), rng.uniform(0.8, 2.0)
            parts = [('box', [0.02, d, h / 2], (sx * w, 0, h / 2), tint) for sx in (-1, 1)]
            parts.append(('box', [w, 0.01, h / 2], (0, -d, h / 2), tint))
            for k in range(int(rng.integers(3, 6))):
                z = 0.05 + k * (h - 0.05) / 4
                parts.append(('box', [w, d, 0.015], (0, 0, min(z, h)), tint))
                if rng.random() < 0.6:
                    item = rng.uniform(0.05, 0.15, 3)
                    parts.append(('box', list(item), (rng.uniform(-w, w) * 0.7, 0, min(z, h) + item[2]),
                                  colour(rng)))
        elif kind == 'cabinet':
            h = [rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.4), rng.uniform(0.4, 1.0)]
            parts = [('box', h, (0, 0, h[2]), tint),
                     ('box', [h[0] * 0.9, 0.01, h[2] * 0.9], (0, -h[1] - 0.005, h[2]), colour(rng))]
        elif kind == 'chair':
            s, hseat = rng.uniform(0.2, 0.3), rng.uniform(0.4, 0.5)
            parts = [('box', [s, s, 0.03], (0, 0, hseat), tint),
                     ('box', [0.02, s, 0.25], (-s, 0, hseat + 0.25), tint)]
            for sx in (-1, 1):
                for sy in (-1, 1):
                    parts.append(('cylinder', [0.02, hseat], (sx * (s - 0.03), sy * (s - 0.03), hseat / 2), tint))
        else:
            r, h = rng.uniform(0.1, 0.35), rng.uniform(1.0, 3.0)
            parts = [('cylinder', [r, h], (0, 0, h / 2), tint)]
        self._place(parts, OBSTACLE, yaw)

    def _agent(self, spawn, radius, speed_range):
        """Spawn a person or robot that may walk along a straight line; it stays clear of the camera path."""
        rng = self.rng
        spot = self._sample_spot(radius)
        if spot is None:
            return
        x, y = spot
        heading = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(*speed_range) if rng.random() < 0.6 else 0.0
        t = np.arange(self.seq_len) * FRAME_PERIOD_NS * 1e-9
        track = np.stack([x + speed * t * math.cos(heading), y + speed * t * math.sin(heading)], axis=1)
        x0, y0, x1, y1 = self.bounds
        inside = np.all((track[:, 0] > x0 + radius) & (track[:, 0] < x1 - radius)
                        & (track[:, 1] > y0 + radius) & (track[:, 1] < y1 - radius))
        if not (inside and self._clear_of_path(0, 0, radius, self.path[:, :2] - track)):
            track[:] = (x, y)
        spawn(x, y, heading)
        if speed > 0 and not np.allclose(track, track[0]):
            self.movers.append((len(self.footprints) - 1, track, heading))

    def _person(self, x, y, yaw):
        rng = self.rng
        if self._assembled():
            self._compound(assembled_person(rng), x, y, yaw, PERSON)
            return
        scale = rng.uniform(0.85, 1.1)
        skin = hsv_colour(rng, (15, 35), (0.25, 0.6), (0.3, 0.95))
        shirt = hsv_colour(rng, (0, 360), (0.1, 0.9), (0.15, 0.95))
        pants = hsv_colour(rng, (200, 240), (0.0, 0.6), (0.1, 0.6)) if rng.random() < 0.6 else colour(rng)
        hip = 0.85 * scale
        torso_h, shoulder = 0.5 * scale, hip + 0.55 * scale
        torso_z, torso_half = hip + torso_h / 2 + 0.02, torso_h * 0.3 + 0.16 * scale   # centre; half height with caps
        leg_r, head_z = 0.065 * scale, shoulder + 0.17 * scale
        arm_swing = rng.normal(0, 0.08)
        parts = [('capsule', [0.16 * scale, torso_h * 0.6], (0, 0, torso_z), shirt)]
        posed = self.variety > 0 and rng.random() < self.variety
        for side in (-1, 1):
            arm = shirt if rng.random() < 0.5 else skin
            if posed:   # arms lifted sideways (0-160 deg) from the torso's side, legs in a stride from inside its end
                parts.append(limb(rng.uniform(0, math.radians(160)) * side, rng.uniform(-1.4, 0.6),
                                  (0, side * 0.16 * scale, torso_z + torso_h * 0.3), 0.05 * scale, 0.45 * scale, arm))
                stride = rng.uniform(-0.45, 0.45)
                parts.append(leg(side * rng.uniform(0, 0.15), stride,
                                 (0, side * 0.09 * scale, torso_z - torso_half + leg_r), leg_r, pants))
                continue
            parts.append(leg(0.0, 0.0, (side * arm_swing, side * 0.09 * scale, hip), leg_r, pants))
            parts.append(('capsule', [0.05 * scale, 0.45 * scale],
                          (-side * arm_swing, side * 0.23 * scale, shoulder - 0.3 * scale), arm))
        parts.append(neck(torso_z + torso_half, head_z, 0.045 * scale, skin))
        parts.append(('sphere', [0.11 * scale], (0, 0, head_z), skin))
        if rng.random() < 0.5:
            parts.append(('cylinder', [0.115 * scale, 0.06], (0, 0, shoulder + 0.25 * scale), colour(rng)))
        self._compound(parts, x, y, yaw, PERSON)

    def _robot(self, x, y, yaw):
        rng = self.rng
        if self._assembled():
            self._compound(assembled_robot(rng), x, y, yaw, ROBOT)
            return
        kind = rng.choice(['r2d2', 'husky', 'racecar', 'kuka', 'cart', 'mobile'], p=[0.2, 0.2, 0.15, 0.1, 0.15, 0.2])
        if kind == 'r2d2':
            self._urdf('r2d2.urdf', x, y, yaw, ROBOT, scale=rng.uniform(0.8, 1.3))
        elif kind == 'husky':
            self._urdf('husky/husky.urdf', x, y, yaw, ROBOT)
        elif kind == 'racecar':
            self._urdf('racecar/racecar.urdf', x, y, yaw, ROBOT, scale=rng.uniform(1.5, 3.0))
        elif kind == 'kuka':
            self._urdf('kuka_iiwa/model.urdf', x, y, yaw, ROBOT, scale=rng.uniform(0.6, 1.0))
        else:
            body_c = hsv_colour(rng, (0, 360), (0.3, 1.0), (0.3, 1.0))
            dark = [0.1, 0.1, 0.1, 1]
            length, w, h = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.4), rng.uniform(0.1, 0.3)
            parts = [('box', [length, w, h], (0, 0, 0.12 + h), body_c)]
            for sx in (-1, 1):
                for sy in (-1, 1):
                    parts.append(('cylinder', [0.12, 0.08], (sx * length * 0.7, sy * (w + 0.04), 0.12), dark))
            if kind == 'mobile':
                mast = rng.uniform(0.3, 1.0)
                parts.append(('cylinder', [0.05, mast], (length * 0.5, 0, 0.12 + 2 * h + mast / 2), dark))
                parts.append(('box', [0.06, 0.12, 0.05], (length * 0.5, 0, 0.12 + 2 * h + mast), body_c))
            self._compound(parts, x, y, yaw, ROBOT)

    def step_to(self, frame: int) -> None:
        """Move walking agents to their position at ``frame``."""
        p = self.p
        for idx, track, _heading in self.movers:
            entry = self.footprints[idx]
            body = entry[0]
            pos, orn = p.getBasePositionAndOrientation(body)
            p.resetBasePositionAndOrientation(body, [track[frame, 0], track[frame, 1], pos[2]], orn)
            entry[3], entry[4] = float(track[frame, 0]), float(track[frame, 1])

    def occupancy(self, x: float, y: float, yaw: float) -> np.ndarray:
        """Ground-truth occupancy grid (int8) around the robot at (x, y, yaw); see the module docstring."""
        n = int(round(OCC_SIZE_M / OCC_RESOLUTION))
        half = OCC_SIZE_M / 2
        cos_r, sin_r = math.cos(-yaw), math.sin(-yaw)
        grid = np.full((n, n), -1, np.int8)

        def to_cells(world_xy: np.ndarray) -> np.ndarray:
            dx, dy = world_xy[:, 0] - x, world_xy[:, 1] - y
            bx, by = cos_r * dx - sin_r * dy, sin_r * dx + cos_r * dy
            return np.stack([(bx + half) / OCC_RESOLUTION, (by + half) / OCC_RESOLUTION], axis=1)

        floor = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * _FLOOR_HALF
        cv2.fillPoly(grid, [np.round(to_cells(floor) * 16).astype(np.int32)], 0, shift=4)
        occupied = np.zeros((n, n), np.uint8)
        for entry in self.footprints:
            _, cls, polys, bx, by, byaw = entry[:6]
            if math.hypot(bx - x, by - y) > OCC_SIZE_M:
                continue
            c, s = math.cos(byaw), math.sin(byaw)
            rot = np.array([[c, s], [-s, c]])
            cells = [np.round(to_cells(poly @ rot + [bx, by]) * 16).astype(np.int32) for poly in polys]
            if cells:
                cv2.fillPoly(occupied, cells, 1, shift=4)
        grid[occupied > 0] = 100
        return grid


def _camera(x, y, yaw, height, pitch):
    """Eye, target, up and the optical-frame rotation of a camera at the robot pose looking ``pitch`` up."""
    cp, sp = math.cos(pitch), math.sin(pitch)
    fwd = np.array([cp * math.cos(yaw), cp * math.sin(yaw), sp])
    up = np.array([-sp * math.cos(yaw), -sp * math.sin(yaw), cp])
    right = np.cross(fwd, up)
    eye = np.array([x, y, height])
    return eye, eye + fwd, up, np.stack([right, -up, fwd], axis=1)


def _sky(rng, height, width):
    top = np.array(hsv_colour(rng, (190, 230), (0.2, 0.7), (0.6, 1.0))[:3]) * 255
    bottom = np.array(hsv_colour(rng, (180, 230), (0.0, 0.3), (0.75, 1.0))[:3]) * 255
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).astype(np.uint8)


def render_frames(n: int, seed: int = 0, width: int = 320, height: int = 240,
                  clutter: tuple[float, float] = (0.0, 1.0), seq_len: int = 10, layouts: Sequence[str] = LAYOUTS,
                  fov_range: tuple[float, float] = (50.0, 85.0), height_range: tuple[float, float] = (0.25, 1.6),
                  pitch_range: tuple[float, float] = (-30.0, 5.0), shadows: float = 0.3, variety: float = 0.0,
                  shapes: float = 0.0, close: float = 0.0, name_prefix: str = '') -> Iterator[dict]:
    """Yield ``n`` rendered frames (dicts described in the module docstring), ``seq_len`` per scene.

    ``clutter`` is the (lo, hi) range of the per-sequence clutter level (0 empty .. 1 crowded), ``layouts`` the
    scene kinds drawn from, ``fov_range`` the vertical field of view in degrees, ``height_range`` the camera
    height in metres, ``pitch_range`` its pitch in degrees (negative looks down), ``shadows`` the fraction of
    sequences rendered with shadows, ``variety`` the share of obstacles, people and robots given a random
    procedural texture and of people in varied poses (arms raised or swung, legs in a stride), ``shapes`` the share
    of obstacles, people and robots drawn from the assembled shape families of :mod:`.shapes` instead of the
    catalogue, ``close`` the share of sequences with a person (a robot one time in three) standing just ahead of
    the camera's last pose. The same arguments always give the same frames."""
    p, data_path = _pybullet()
    textures = _Textures(data_path)
    lo, hi = float(clutter[0]), float(clutter[1])
    try:
        frame_index = 0
        seq = 0
        while frame_index < n:
            rng = np.random.default_rng([seed, seq])
            layout = layouts[rng.integers(len(layouts))]
            level = float(rng.uniform(lo, hi)) if hi > lo else lo
            scene = _Scene(p, data_path, textures, rng, level, layout, seq_len, variety, shapes, close)
            fov = rng.uniform(*fov_range)
            cam_h = rng.uniform(*height_range)
            pitch0 = math.radians(rng.uniform(*pitch_range))
            elev, azim = rng.uniform(0.4, 1.3), rng.uniform(0, 2 * math.pi)
            direction = [math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)]
            light = dict(lightDirection=direction,
                         lightColor=[float(v) for v in rng.uniform(0.85, 1.0, 3)], lightDistance=10.0,
                         lightAmbientCoeff=rng.uniform(0.3, 0.7), lightDiffuseCoeff=rng.uniform(0.3, 0.7),
                         lightSpecularCoeff=rng.uniform(0.0, 0.3), shadow=int(rng.random() < shadows))
            sky = _sky(rng, height, width)
            proj = p.computeProjectionMatrixFOV(fov, width / height, NEAR, FAR)
            fy = (height / 2) / math.tan(math.radians(fov) / 2)
            intrinsics = dict(fx=fy, fy=fy, cx=width / 2, cy=height / 2 - 1, width=width, height=height,
                              fov_y_deg=float(fov))
            lut = np.full(max(scene.body_class) + 2, BACKGROUND, np.uint8)
            for body, cls in scene.body_class.items():
                lut[body + 1] = cls
            for k in range(min(seq_len, n - frame_index)):
                scene.step_to(k)
                x, y, yaw = (float(v) for v in scene.path[k])
                pitch = pitch0 + rng.normal(0, 0.02)
                eye, target, up, rot = _camera(x, y, yaw, cam_h + rng.normal(0, 0.005), pitch)
                view = p.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
                _, _, rgba, zbuf, seg = p.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER,
                                                         **light)
                rgba = np.asarray(rgba, np.uint8).reshape(height, width, 4)
                seg = np.asarray(seg, np.int64).reshape(height, width)
                zbuf = np.asarray(zbuf, np.float32).reshape(height, width)
                hit = seg >= 0
                label = lut[np.where(hit, seg, -1) + 1]
                image = np.where(hit[..., None], rgba[..., :3], sky)
                depth = (FAR * NEAR / (FAR - (FAR - NEAR) * zbuf)).astype(np.float32)
                depth[~hit] = np.inf
                counts = np.bincount(label.ravel(), minlength=len(SCENE_CLASS_NAMES))
                yield {
                    'name': f'{name_prefix}s{seed}_{seq:05d}_{k:03d}',
                    'image': np.ascontiguousarray(image), 'label': label, 'depth': depth,
                    'pose': {'position': [float(v) for v in eye], 'orientation': _quat_from_matrix(rot),
                             'frame_id': 'camera_optical_frame'},
                    'base_pose': {'x': x, 'y': y, 'yaw': yaw},
                    'intrinsics': intrinsics,
                    'occupancy': scene.occupancy(x, y, yaw),
                    'occupancy_info': {'resolution': OCC_RESOLUTION, 'width': int(round(OCC_SIZE_M / OCC_RESOLUTION)),
                                       'height': int(round(OCC_SIZE_M / OCC_RESOLUTION)),
                                       'origin': [-OCC_SIZE_M / 2, -OCC_SIZE_M / 2, 0.0]},
                    'clutter': level, 'layout': layout, 'sequence': seq, 'frame': k, 'seed': seed,
                    'counts': dict(scene.counts),
                    'pixel_counts': {name: int(c) for name, c in zip(SCENE_CLASS_NAMES, counts)},
                    'camera': {'height': float(eye[2]), 'pitch_deg': math.degrees(pitch)},
                    'stamp_ns': BAG_START_NS + frame_index * FRAME_PERIOD_NS,
                }
                frame_index += 1
            seq += 1
    finally:
        textures.close()
        p.disconnect()


def write_classes_yaml(path: str | os.PathLike) -> None:
    """The ``classes.yaml`` of a rendered dataset (names, palette, ignore_index)."""
    import yaml
    data = {'names': list(SCENE_CLASS_NAMES), 'palette': [list(c) for c in SCENE_PALETTE],
            'ignore_index': IGNORE_INDEX}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


DATASET_FOLDERS = ('images', 'masks', 'depth', 'occupancy', 'meta')


def save_frame(out_dir: str | os.PathLike, frame: dict, split: str = '') -> None:
    """Write one frame into the dataset folder layout described in the module docstring.

    With ``split``, files go to ``images/SPLIT/NAME.png`` etc. (the generic reader's split subfolders)."""
    out = Path(out_dir)
    name = f'{split}/{frame["name"]}' if split else frame['name']
    cv2.imwrite(str(out / 'images' / f'{name}.png'), cv2.cvtColor(frame['image'], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / 'masks' / f'{name}.png'), frame['label'])
    depth = frame['depth']
    mm = np.where(np.isfinite(depth), np.clip(depth * 1000.0, 0, 65535), 0).astype(np.uint16)
    cv2.imwrite(str(out / 'depth' / f'{name}.png'), mm)
    cv2.imwrite(str(out / 'occupancy' / f'{name}.png'), frame['occupancy'].view(np.uint8))
    keys = ('pose', 'base_pose', 'intrinsics', 'occupancy_info', 'clutter', 'layout', 'sequence', 'frame', 'seed',
            'counts', 'pixel_counts', 'camera', 'stamp_ns')
    (out / 'meta' / f'{name}.json').write_text(json.dumps({k: frame[k] for k in keys}, indent=1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--generator', choices=('pybullet', 'raycast'), default='pybullet',
                        help='pybullet: the training scenes; raycast: the independent evaluation-only generator '
                        '(offline/data/raycast.py: its own geometry, textures, lighting, fog and camera model; '
                        '--layouts, --shadows and --fov/--cam-height/--pitch defaults are its own)')
    parser.add_argument('--out', help='dataset folder to write (images/, masks/, depth/, occupancy/, meta/)')
    parser.add_argument('--split', default='', help='dataset: write into images/SPLIT/, masks/SPLIT/, ... '
                        '(e.g. train, val; use a different --seed per split)')
    parser.add_argument('--bag', help='rosbag2 directory to write')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='rosbag2 storage of --bag')
    parser.add_argument('--frames', type=positive_int, default=100, help='frames to render')
    parser.add_argument('--seed', type=non_negative_int, default=0,
                        help='random seed (the same seed renders the same frames)')
    parser.add_argument('--width', type=positive_int, default=320, help='image width in pixels')
    parser.add_argument('--height', type=positive_int, default=240, help='image height in pixels')
    parser.add_argument('--clutter', default='0,1', help='lo,hi range of the per-sequence clutter level in [0, 1]')
    parser.add_argument('--seq-len', type=positive_int, default=10, help='frames per scene')
    parser.add_argument('--layouts', default=','.join(LAYOUTS), help='comma list of ' + ', '.join(LAYOUTS))
    parser.add_argument('--fov', default='50,85', help='lo,hi vertical field of view in degrees')
    parser.add_argument('--cam-height', default='0.25,1.6', help='lo,hi camera height in metres')
    parser.add_argument('--pitch', default='-30,5', help='lo,hi camera pitch in degrees (negative looks down)')
    parser.add_argument('--shadows', type=share, default=0.3, help='fraction of sequences with shadows')
    parser.add_argument('--variety', type=share, default=0.0,
                        help='share of obstacles, people and robots with random textures and of people in varied '
                             'poses (0 = the renderer as the shipped scene models were trained)')
    parser.add_argument('--shapes', type=share, default=0.0,
                        help='share of obstacles, people and robots assembled from random primitives in random '
                             'proportions and poses (offline/data/shapes.py) instead of the fixed catalogue')
    parser.add_argument('--close', type=share, default=0.0,
                        help='share of sequences with a person (a robot one time in three) standing just ahead of '
                             "the camera's last pose: large and cut off by the frame as the camera comes close")
    parser.add_argument('--jpeg', action='store_true', help='bag: also /camera/image_raw/compressed')
    parser.add_argument('--jpeg-quality', type=non_negative_int, default=90,
                        help='bag: JPEG quality of the compressed topic')
    parser.add_argument('--no-raw', action='store_true', help='bag: leave out /camera/image_raw')
    parser.add_argument('--depth', action='store_true', help='bag: also /camera/depth (32FC1)')
    parser.add_argument('--no-compression', action='store_true', help='bag: no zstd chunk compression (mcap)')


MIN_SIDE = 2   # pixels: the raycast generator casts its shadow rays at half resolution
# the lo,hi options: (lowest, highest, whether those two are allowed, what the values are)
RANGES = {
    'clutter': (0.0, 1.0, True, 'clutter levels in [0, 1]'),
    'fov': (0.0, 180.0, False, 'vertical fields of view in degrees, in (0, 180)'),
    'cam_height': (0.0, math.inf, False, 'finite camera heights in metres, > 0'),
    'pitch': (-90.0, 90.0, True, 'camera pitches in degrees, in [-90, 90]'),
}


def _pair(args: argparse.Namespace, name: str) -> tuple[float, float]:
    """The lo,hi option ``name`` of ``args``, checked against its entry in RANGES."""
    flag, text = '--' + name.replace('_', '-'), getattr(args, name)
    low, high, closed, what = RANGES[name]
    try:
        lo, hi = (float(v) for v in text.split(','))
    except ValueError:
        raise UserError(f'{flag} {text!r} is not a lo,hi pair of numbers (e.g. 0,1)') from None
    inside = low <= lo <= hi <= high if closed else low < lo <= hi < high   # NaN fails every comparison
    if not inside:
        raise UserError(f'{flag} {text}: give lo,hi with lo <= hi, both {what}')
    return lo, hi


def run(args: argparse.Namespace) -> int:
    if not args.out and not args.bag:
        raise UserError('nothing to do: give --out DIR and/or --bag PATH')
    ranges = {name: _pair(args, name) for name in RANGES}
    for flag in ('width', 'height'):
        if getattr(args, flag) < MIN_SIDE:
            raise UserError(f'--{flag} {getattr(args, flag)}: images need at least {MIN_SIDE} pixels a side')
    layouts = tuple(s.strip() for s in args.layouts.split(',') if s.strip())
    if not layouts or set(layouts) - set(LAYOUTS):
        raise UserError(f'--layouts {args.layouts!r}: give a comma list of {", ".join(LAYOUTS)}')
    if args.bag and Path(args.bag).exists():
        raise UserError(f'--bag {args.bag} exists already: give a new path or delete it')
    if args.jpeg_quality > 100:
        raise UserError(f'--jpeg-quality {args.jpeg_quality}: must be 0 to 100')
    if args.generator == 'raycast':
        from .raycast import raycast_frames
        frames = raycast_frames(args.frames, seed=args.seed, width=args.width, height=args.height,
                                clutter=ranges['clutter'], seq_len=args.seq_len)
        return _write(args, frames)
    frames = render_frames(args.frames, seed=args.seed, width=args.width, height=args.height,
                           clutter=ranges['clutter'], seq_len=args.seq_len, layouts=layouts,
                           fov_range=ranges['fov'], height_range=ranges['cam_height'],
                           pitch_range=ranges['pitch'], shadows=args.shadows, variety=args.variety,
                           shapes=args.shapes, close=args.close)
    return _write(args, frames)


def _write(args, frames):
    """Store ``frames`` as a dataset folder and/or a bag, as ``args`` ask; prints the rate."""
    if args.out:
        out = Path(args.out)
        for sub in DATASET_FOLDERS:
            (out / sub / args.split).mkdir(parents=True, exist_ok=True)
        write_classes_yaml(out / 'classes.yaml')
    start = time.perf_counter()
    count = 0

    def saved(stream: Iterable[dict]) -> Iterator[dict]:
        nonlocal count
        for frame in stream:
            if args.out:
                save_frame(args.out, frame, args.split)
            count += 1
            if count % 50 == 0:
                print(f'{count}/{args.frames} frames, {1000 * (time.perf_counter() - start) / count:.0f} ms/frame',
                      flush=True)
            yield frame

    if args.bag:
        from seg_perception.offline.data.bags import write_bag
        write_bag(args.bag, saved(frames), storage=args.storage, raw=not args.no_raw, jpeg=args.jpeg,
                  depth=args.depth, compress=not args.no_compression, jpeg_quality=args.jpeg_quality)
    else:
        for _ in saved(frames):
            pass
    elapsed = time.perf_counter() - start
    print(f'rendered {count} frames {args.width}x{args.height} in {elapsed:.1f} s '
          f'({1000 * elapsed / max(count, 1):.0f} ms/frame)'
          + (f' -> {args.out}' if args.out else '') + (f' -> {args.bag}' if args.bag else ''))
    return 0
