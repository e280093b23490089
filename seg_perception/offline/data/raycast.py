"""A second, independent scene generator for evaluation only: analytic ray casting in numpy (no pybullet).

It shares nothing with :mod:`seg_perception.offline.data.render` but the class ids and the frame format, so a
model trained on pybullet frames can be scored on scenes it has never seen the like of: other geometry
(capsule-built people in varied poses, rounded barrels, crates, carts, hills), other textures (value noise,
bricks, stripes, checkers and planks generated here), other lighting (a sun with soft shadows, hemispheric sky
light), sky gradients with clouds, distance fog, and a camera model with white-balance casts, vignetting,
defocus or motion blur, sensor noise and gamma. Camera 0.3-1.2 m high, pitched 0-25 degrees down by default.
Never used for training (``seg-perception render --generator raycast``; see ``render.run``).

Frames are the dicts of :func:`seg_perception.offline.data.render.render_frames` (image, label, depth, pose,
base_pose, intrinsics, occupancy, ...), so the dataset and bag writers of ``render`` store them unchanged.
Output is a pure function of the seed and the options: sequence ``k`` draws from ``default_rng([seed, k, 7])``.
"""
import math
from collections.abc import Iterable, Iterator, Sequence

import cv2
import numpy as np

from seg_perception.classes import BACKGROUND, FLOOR, OBSTACLE, PERSON, ROBOT, SCENE_CLASS_NAMES, WALL

from .render import BAG_START_NS, FRAME_PERIOD_NS, OCC_RESOLUTION, OCC_SIZE_M

LAYOUTS = ('hall', 'aisle', 'yard')
_EPS = 1e-4
_FAR = 1e9


# ---------------------------------------------------------------------------------------------- primitives
# Each primitive is a dict: kind ('box' | 'capsule' | 'sphere'), its geometry, cls, texture, and a bounding
# sphere (centre, radius). Intersections take ray origins o (N, 3) and unit directions d (N, 3) and return the
# ray parameter t (N,) (inf for a miss) and unit normals (N, 3).

def _box(centre, half, yaw, cls, texture):
    centre, half = np.asarray(centre, np.float64), np.asarray(half, np.float64)
    return dict(kind='box', c=centre, h=half, yaw=float(yaw), cls=cls, tex=texture, bc=centre,
                br=float(np.linalg.norm(half)))


def _capsule(a, b, r, cls, texture):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.linalg.norm(b - a) < 1e-6:
        return _sphere(a, r, cls, texture)
    return dict(kind='capsule', a=a, b=b, r=float(r), cls=cls, tex=texture, bc=(a + b) / 2,
                br=float(np.linalg.norm(b - a) / 2 + r))


def _sphere(c, r, cls, texture):
    c = np.asarray(c, np.float64)
    return dict(kind='sphere', c=c, r=float(r), cls=cls, tex=texture, bc=c, br=float(r))


def _hit_box(prim, o, d):
    cy, sy = math.cos(prim['yaw']), math.sin(prim['yaw'])
    rot = np.array([[cy, sy, 0], [-sy, cy, 0], [0, 0, 1]])          # world -> box frame
    lo = (o - prim['c']) @ rot.T
    ld = d @ rot.T
    ld = np.where(np.abs(ld) < 1e-12, 1e-12, ld)
    t1, t2 = (-prim['h'] - lo) / ld, (prim['h'] - lo) / ld
    tnear, tfar = np.minimum(t1, t2), np.maximum(t1, t2)
    t_in, axis = tnear.max(axis=1), tnear.argmax(axis=1)
    t_out = tfar.min(axis=1)
    hit = (t_out >= np.maximum(t_in, 0)) & (t_in > _EPS)
    t = np.where(hit, t_in, np.inf)
    n_local = np.zeros_like(lo)
    n_local[np.arange(len(lo)), axis] = -np.sign(ld[np.arange(len(lo)), axis])
    return t, n_local @ rot


def _hit_sphere(prim, o, d):
    oc = o - prim['c']
    b = np.einsum('ij,ij->i', oc, d)
    c = np.einsum('ij,ij->i', oc, oc) - prim['r'] ** 2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0))
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
    p = o + d * np.where(np.isfinite(t), t, 0)[:, None]
    return t, (p - prim['c']) / prim['r']


def _hit_capsule(prim, o, d):
    """Ray-capsule intersection (segment a-b swept by radius r): the cylinder body, then the two end caps."""
    a, b, r = prim['a'], prim['b'], prim['r']
    ba = b - a
    oa = o - a
    baba = ba @ ba
    bard, baoa = d @ ba, oa @ ba
    rdoa = np.einsum('ij,ij->i', d, oa)
    oaoa = np.einsum('ij,ij->i', oa, oa)
    qa = baba - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * oaoa - baoa * baoa - r * r * baba
    h = qb * qb - qa * qc
    with np.errstate(divide='ignore', invalid='ignore'):
        t_body = (-qb - np.sqrt(np.maximum(h, 0))) / qa
    y = baoa + t_body * bard
    body = (h >= 0) & (y > 0) & (y < baba) & (qa > 1e-12)
    t = np.where(body, t_body, np.inf)
    for end in (a, b):
        oc = o - end
        bb = np.einsum('ij,ij->i', oc, d)
        cc = np.einsum('ij,ij->i', oc, oc) - r * r
        disc = bb * bb - cc
        tc = -bb - np.sqrt(np.maximum(disc, 0))
        t = np.where((disc >= 0) & (tc > _EPS) & (tc < t), tc, t)
    t = np.where(t > _EPS, t, np.inf)
    p = o + d * np.where(np.isfinite(t), t, 0)[:, None]
    s = np.clip(((p - a) @ ba) / baba, 0, 1)
    n = p - (a + s[:, None] * ba)
    return t, n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


_HIT = {'box': _hit_box, 'sphere': _hit_sphere, 'capsule': _hit_capsule}


# ------------------------------------------------------------------------------------------------ textures

def _value_noise(rng, cells=16):
    """A periodic value-noise table sampled bilinearly (by :func:`_sample_noise`)."""
    return rng.random((cells, cells)).astype(np.float32)


def _sample_noise(table, u, v):
    n = table.shape[0]
    u, v = np.mod(u, n), np.mod(v, n)
    i0, j0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - i0, v - j0
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    i1, j1 = (i0 + 1) % n, (j0 + 1) % n
    top = table[i0, j0] * (1 - fv) + table[i0, j1] * fv
    bottom = table[i1, j0] * (1 - fv) + table[i1, j1] * fv
    return top * (1 - fu) + bottom * fu


def _texture(rng, kinds):
    """A random procedural material: base and second colour, pattern, scale, noise table."""
    hue = rng.random()
    sat, val = rng.uniform(0.05, 0.8), rng.uniform(0.25, 0.95)
    base = np.array(_hsv(hue, sat, val))
    alt = np.array(_hsv((hue + rng.normal(0, 0.08)) % 1, sat * rng.uniform(0.3, 1.2), val * rng.uniform(0.4, 0.9)))
    return dict(kind=str(rng.choice(kinds)), base=base, alt=np.clip(alt, 0, 1), scale=rng.uniform(0.6, 4.0),
                contrast=rng.uniform(0.15, 0.6), noise=_value_noise(rng), angle=rng.uniform(0, math.pi))


def _hsv(h, s, v):
    rgb = cv2.cvtColor(np.array([[[h * 179, min(s, 1) * 255, min(v, 1) * 255]]], np.uint8), cv2.COLOR_HSV2RGB)
    return (rgb[0, 0] / 255.0).tolist()


def _shade_texture(tex, p, n):
    """Albedo (N, 3) of material ``tex`` at world points ``p`` with normals ``n`` (planar mapping along the
    dominant normal axis)."""
    axis = np.abs(n).argmax(axis=1)
    u = np.where(axis == 0, p[:, 1], p[:, 0])
    v = np.where(axis == 2, p[:, 1], p[:, 2])
    ca, sa = math.cos(tex['angle']), math.sin(tex['angle'])
    u, v = (ca * u - sa * v) * tex['scale'], (sa * u + ca * v) * tex['scale']
    kind = tex['kind']
    if kind == 'checker':
        mix = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    elif kind == 'stripes':
        mix = 0.5 + 0.5 * np.sin(u * 2 * math.pi)
    elif kind == 'bricks':
        row = np.floor(v * 2)
        shifted = u + 0.5 * (row % 2)
        mortar = (np.mod(v * 2, 1) < 0.08) | (np.mod(shifted, 1) < 0.05)
        mix = mortar.astype(np.float32)
    elif kind == 'planks':
        plank = np.floor(v * 1.5)
        grain = _sample_noise(tex['noise'], u * 0.7 + plank * 5.3, plank * 3.1)
        mix = 0.6 * grain + 0.4 * (np.mod(v * 1.5, 1) < 0.05)
    else:  # noise
        mix = _sample_noise(tex['noise'], u * 2, v * 2) * 0.7 + _sample_noise(tex['noise'], u * 7, v * 7) * 0.3
    mix = mix * tex['contrast']
    fine = _sample_noise(tex['noise'], u * 13.0 + 3.7, v * 13.0 + 1.3)
    albedo = tex['base'][None] * (1 - mix[:, None]) + tex['alt'][None] * mix[:, None]
    return albedo * (0.88 + 0.24 * fine[:, None])


# -------------------------------------------------------------------------------------------------- scene

class _World:
    """One randomised scene: a ground texture, primitives, a sun, a sky; ``occupancy`` footprints."""

    def __init__(self, rng, layout, clutter):
        self.rng, self.layout, self.clutter = rng, layout, clutter
        self.prims = []
        self.footprints = []          # (polygon (K, 2) world xy)
        self.counts = {name: 0 for name in SCENE_CLASS_NAMES}
        self.floor_tex = _texture(rng, ['noise', 'checker', 'planks', 'stripes'])
        if layout == 'hall':
            self.half = (rng.uniform(4, 8), rng.uniform(3.5, 7))
        elif layout == 'aisle':
            self.half = (rng.uniform(8, 14), rng.uniform(1.3, 2.4))
        else:
            self.half = (60.0, 60.0)
        self._walls()
        self._objects()
        self.sun = _unit([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.35, 1.6)])
        self.sun_colour = np.array(_hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.35), 1.0))
        self.sun_strength = rng.uniform(0.5, 1.1)
        self.ambient = rng.uniform(0.25, 0.55)
        self.sky_top = np.array(_hsv(rng.uniform(0.52, 0.68), rng.uniform(0.25, 0.8), rng.uniform(0.5, 1.0)))
        self.sky_horizon = np.array(_hsv(rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.35), rng.uniform(0.7, 1.0)))
        self.clouds = _value_noise(rng, 32)
        self.fog = rng.uniform(0.0, 0.08) if rng.random() < 0.6 else 0.0
        self.fog_colour = np.clip(self.sky_horizon * rng.uniform(0.8, 1.05), 0, 1)

    def add(self, prim: dict, footprint: np.ndarray | None = None) -> None:
        self.prims.append(prim)
        if footprint is not None:
            self.footprints.append(footprint)

    def _walls(self):
        rng = self.rng
        hx, hy = self.half
        tex = _texture(rng, ['bricks', 'noise', 'stripes'])
        height = rng.uniform(2.2, 4.0)
        walls = []
        if self.layout == 'hall':
            walls = [((0, hy), (hx, 0.1)), ((0, -hy), (hx, 0.1)), ((hx, 0), (0.1, hy)), ((-hx, 0), (0.1, hy))]
        elif self.layout == 'aisle':
            walls = [((0, hy), (hx, 0.1)), ((0, -hy), (hx, 0.1)), ((hx, 0), (0.1, hy))]
        for (cx, cy), (ex, ey) in walls:
            self.add(_box((cx, cy, height / 2), (ex, ey, height / 2), 0.0, WALL, tex), _rect(cx, cy, ex, ey, 0))
            self.counts['wall'] += 1
        if self.layout == 'yard':
            # distant hills and buildings: background, never in the occupancy grid
            for _ in range(rng.integers(4, 9)):
                ang = rng.uniform(0, 2 * math.pi)
                dist = rng.uniform(35, 55)
                size = rng.uniform(4, 12)
                centre = (dist * math.cos(ang), dist * math.sin(ang), rng.uniform(-0.5, 1.0) * size)
                self.add(_sphere(centre, size, BACKGROUND, _texture(rng, ['noise'])))

    def _spot(self, radius):
        hx, hy = self.half
        lim_x, lim_y = min(hx, 10.0) - radius - 0.2, min(hy, 5.0) - radius - 0.2
        for _ in range(40):
            # mostly ahead of the camera, which starts at x = -1 looking along +x
            x, y = self.rng.uniform(-min(lim_x, 2.0), lim_x), self.rng.uniform(-lim_y, lim_y)
            if abs(y) < radius + 0.5 and -1.8 < x < 1.8:      # keep the robot's short path clear
                continue
            if all(math.hypot(x - px, y - py) > radius + pr for px, py, pr in self._placed):
                self._placed.append((x, y, radius))
                return x, y
        return None

    def _objects(self):
        rng = self.rng
        self._placed = [(0.0, 0.0, 0.8)]
        n_obstacles = int(round(self.clutter * rng.uniform(8, 20)))
        n_people = int(round(self.clutter * rng.uniform(2, 8)))
        n_robots = int(round(self.clutter * rng.uniform(0, 4)))
        for _ in range(n_obstacles):
            self._obstacle()
        for _ in range(n_people):
            self._person()
        for _ in range(n_robots):
            self._cart()

    def _obstacle(self):
        rng = self.rng
        kind = rng.choice(['crate', 'barrel', 'stack', 'pillar', 'bench'])
        radius = {'crate': 0.6, 'barrel': 0.45, 'stack': 0.8, 'pillar': 0.4, 'bench': 1.0}[kind]
        spot = self._spot(radius)
        if spot is None:
            return
        x, y = spot
        tex = _texture(rng, ['planks', 'noise', 'stripes', 'checker'])
        yaw = rng.uniform(0, math.pi)
        if kind == 'crate':
            h = rng.uniform(0.25, 0.6, 3)
            self.add(_box((x, y, h[2]), h, yaw, OBSTACLE, tex), _rect(x, y, h[0], h[1], yaw))
        elif kind == 'barrel':
            r, height = rng.uniform(0.2, 0.4), rng.uniform(0.5, 1.1)
            self.add(_capsule((x, y, r), (x, y, max(height - r, r)), r, OBSTACLE, tex), _circle(x, y, r))
        elif kind == 'stack':
            z = 0.0
            for _ in range(rng.integers(2, 4)):
                h = rng.uniform(0.2, 0.45, 3)
                self.add(_box((x, y, z + h[2]), h, yaw + rng.normal(0, 0.2), OBSTACLE, tex),
                         _rect(x, y, h[0], h[1], yaw))
                z += 2 * h[2]
        elif kind == 'pillar':
            h = (rng.uniform(0.15, 0.35), rng.uniform(0.15, 0.35), rng.uniform(1.2, 2.5))
            self.add(_box((x, y, h[2]), h, yaw, OBSTACLE, tex), _rect(x, y, h[0], h[1], yaw))
        else:  # bench: a top on four legs
            length, width, height = rng.uniform(0.6, 1.0), rng.uniform(0.25, 0.4), rng.uniform(0.4, 0.8)
            self.add(_box((x, y, height), (length, width, 0.04), yaw, OBSTACLE, tex),
                     _rect(x, y, length, width, yaw))
            c, s = math.cos(yaw), math.sin(yaw)
            for sx in (-0.9, 0.9):
                for sy in (-0.8, 0.8):
                    lx, ly = x + c * sx * length - s * sy * width, y + s * sx * length + c * sy * width
                    self.add(_capsule((lx, ly, 0.03), (lx, ly, height), 0.03, OBSTACLE, tex))
        self.counts['obstacle'] += 1

    def _person(self):
        rng = self.rng
        spot = self._spot(0.4)
        if spot is None:
            return
        x, y = spot
        yaw = rng.uniform(0, 2 * math.pi)
        scale = rng.uniform(0.8, 1.1)
        cloth = _texture(rng, ['noise', 'stripes', 'checker'])
        trousers = _texture(rng, ['noise'])
        skin = dict(_texture(rng, ['noise']), base=np.array(_hsv(rng.uniform(0.02, 0.1), rng.uniform(0.2, 0.6),
                                                                  rng.uniform(0.3, 0.95))), contrast=0.05)
        c, s = math.cos(yaw), math.sin(yaw)

        def world(fx: float, fy: float,
                  z: float) -> tuple[float, float, float]:   # person frame (x forward, y left) -> world
            return (x + c * fx - s * fy, y + s * fx + c * fy, z * scale)

        stride = rng.uniform(-0.35, 0.35)
        hip, shoulder = 0.9, 1.45
        for side in (-1, 1):
            self.add(_capsule(world(0, side * 0.1, hip), world(side * stride, side * 0.12, 0.08), 0.07 * scale,
                              PERSON, trousers))
        self.add(_capsule(world(0, 0, hip + 0.05), world(0, 0, shoulder - 0.05), 0.17 * scale, PERSON, cloth))
        pose = rng.choice(['down', 'swing', 'raised', 'forward'])
        for side in (-1, 1):
            start = world(0, side * 0.22, shoulder)
            if pose == 'down':
                end = world(0.05, side * 0.28, hip - 0.05)
            elif pose == 'swing':
                end = world(-side * stride * 0.8, side * 0.26, hip)
            elif pose == 'raised':
                end = world(0.05, side * 0.35, shoulder + 0.55)
            else:
                end = world(0.6, side * 0.2, shoulder - 0.05)
            self.add(_capsule(start, end, 0.055 * scale, PERSON, cloth if rng.random() < 0.7 else skin))
        self.add(_sphere(world(0, 0, shoulder + 0.22), 0.11 * scale, PERSON, skin))
        self.footprints.append(_circle(x, y, 0.3 * scale))
        self.counts['person'] += 1

    def _cart(self):
        rng = self.rng
        spot = self._spot(0.8)
        if spot is None:
            return
        x, y = spot
        yaw = rng.uniform(0, 2 * math.pi)
        tex = _texture(rng, ['noise', 'stripes'])
        dark = dict(_texture(rng, ['noise']), base=np.array([0.08, 0.08, 0.09]), alt=np.array([0.2, 0.2, 0.2]))
        length, width, height = rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.45), rng.uniform(0.15, 0.45)
        clearance = rng.uniform(0.08, 0.2)
        self.add(_box((x, y, clearance + height), (length, width, height), yaw, ROBOT, tex),
                 _rect(x, y, length, width, yaw))
        c, s = math.cos(yaw), math.sin(yaw)
        wheel_r = clearance + 0.05
        for sx in (-0.75, 0.75):
            for sy in (-1, 1):
                fx, fy = sx * length, sy * (width + 0.04)
                cx_, cy_ = x + c * fx - s * fy, y + s * fx + c * fy
                ax, ay = -s * 0.04 * sy, c * 0.04 * sy
                self.add(_capsule((cx_ - ax, cy_ - ay, wheel_r), (cx_ + ax, cy_ + ay, wheel_r), wheel_r, ROBOT,
                                  dark))
        if rng.random() < 0.5:   # a sensor mast
            top = clearance + 2 * height
            mast = rng.uniform(0.2, 0.7)
            self.add(_capsule((x, y, top), (x, y, top + mast), 0.03, ROBOT, dark))
            self.add(_sphere((x, y, top + mast + 0.05), 0.07, ROBOT, tex))
        self.counts['robot'] += 1

    # ------------------------------------------------------------------------------------------ ray casting
    def cast(self, o: np.ndarray, d: np.ndarray,
             prims: Iterable[tuple[int, dict]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest hit of rays (o, d) against the ground plane and primitives: t, normals, class, material index
        (-1 = ground, -2 = nothing)."""
        n = len(d)
        t = np.full(n, np.inf)
        normal = np.zeros((n, 3))
        which = np.full(n, -2, np.int64)
        with np.errstate(divide='ignore', invalid='ignore'):
            t_ground = np.where(d[:, 2] < -1e-9, -o[:, 2] / d[:, 2], np.inf)
        hx, hy = self.half
        p = o + d * np.where(np.isfinite(t_ground), t_ground, 0)[:, None]
        t_ground = np.where((np.abs(p[:, 0]) <= hx) & (np.abs(p[:, 1]) <= hy) & (t_ground > _EPS), t_ground, np.inf)
        closer = t_ground < t
        t[closer], which[closer] = t_ground[closer], -1
        normal[closer] = (0, 0, 1)
        for index, prim in (enumerate(self.prims) if prims is None else prims):
            tp, np_ = _HIT[prim['kind']](prim, o, d)
            closer = tp < t
            if closer.any():
                t[closer], which[closer], normal[closer] = tp[closer], index, np_[closer]
        return t, normal, which


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def _rect(cx, cy, hx, hy, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    corners = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


def _circle(cx, cy, r, k=16):
    a = np.linspace(0, 2 * math.pi, k, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _camera_rotation(yaw, pitch):
    """Optical frame (x right, y down, z forward) -> world, for a camera pitched ``pitch`` radians up."""
    cp, sp = math.cos(pitch), math.sin(pitch)
    fwd = np.array([cp * math.cos(yaw), cp * math.sin(yaw), sp])
    up = np.array([-sp * math.cos(yaw), -sp * math.sin(yaw), cp])
    return np.stack([np.cross(fwd, up), -up, fwd], axis=1)


def _quat(m):
    """[x, y, z, w] of a rotation matrix (w >= 0)."""
    w = math.sqrt(max(0.0, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    return [x, y, z, w]


def _visible(prim, eye, rot, fx, cx, cy, width, height):
    """Pixel box (x0, y0, x1, y1) that may see ``prim`` (from its bounding sphere), or None."""
    corners = prim['bc'] + prim['br'] * np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
    cam = (corners - eye) @ rot                   # world -> optical
    if (cam[:, 2] <= 0.05).all():
        return None
    if (cam[:, 2] <= 0.05).any():
        return 0, 0, width, height
    u, v = fx * cam[:, 0] / cam[:, 2] + cx, fx * cam[:, 1] / cam[:, 2] + cy
    x0, x1 = max(int(u.min()) - 1, 0), min(int(u.max()) + 2, width)
    y0, y1 = max(int(v.min()) - 1, 0), min(int(v.max()) + 2, height)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _occupancy(world, x, y, yaw):
    """Ground-truth grid around the robot, in the layout of ``render``'s occupancy (nav_msgs order)."""
    n = int(round(OCC_SIZE_M / OCC_RESOLUTION))
    half = OCC_SIZE_M / 2
    c, s = math.cos(-yaw), math.sin(-yaw)

    def to_cells(xy: np.ndarray) -> np.ndarray:
        dx, dy = xy[:, 0] - x, xy[:, 1] - y
        return np.stack([(c * dx - s * dy + half) / OCC_RESOLUTION, (s * dx + c * dy + half) / OCC_RESOLUTION], 1)

    grid = np.full((n, n), -1, np.int8)
    hx, hy = world.half
    floor = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    cv2.fillPoly(grid, [np.round(to_cells(floor) * 16).astype(np.int32)], 0, shift=4)
    occupied = np.zeros((n, n), np.uint8)
    polys = [np.round(to_cells(poly) * 16).astype(np.int32) for poly in world.footprints]
    if polys:
        cv2.fillPoly(occupied, polys, 1, shift=4)
    grid[occupied > 0] = 100
    return grid


def _render(world, eye, rot, fx, width, height, rng):
    """Image (uint8 RGB), labels and depth of one view."""
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    us, vs = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(us - cx) / fx, (vs - cy) / fx, np.ones_like(us)], axis=-1).reshape(-1, 3)
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    d = rays @ rot.T
    o = np.broadcast_to(eye, d.shape)
    # ground plane for everyone, then each primitive only over the pixels its bounding sphere may cover
    t, normal, which = world.cast(o, d, prims=[])
    t, normal, which = t.reshape(height, width), normal.reshape(height, width, 3), which.reshape(height, width)
    d_img = d.reshape(height, width, 3)
    for index, prim in enumerate(world.prims):
        box = _visible(prim, eye, rot, fx, cx, cy, width, height)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        dd = d_img[y0:y1, x0:x1].reshape(-1, 3)
        tp, npr = _HIT[prim['kind']](prim, np.broadcast_to(eye, dd.shape), dd)
        tp, npr = tp.reshape(y1 - y0, x1 - x0), npr.reshape(y1 - y0, x1 - x0, 3)
        closer = tp < t[y0:y1, x0:x1]
        t[y0:y1, x0:x1][closer] = tp[closer]
        which[y0:y1, x0:x1][closer] = index
        normal[y0:y1, x0:x1][closer] = npr[closer]
    hit = np.isfinite(t)
    cls_of = np.array([p['cls'] for p in world.prims] + [FLOOR, BACKGROUND], np.uint8)
    label = np.where(which >= 0, cls_of[np.maximum(which, 0)], np.where(which == -1, FLOOR, BACKGROUND))
    label = label.astype(np.uint8)
    points = eye + d_img * np.where(hit, t, 0)[..., None]
    # albedo per material
    albedo = np.zeros((height, width, 3))
    ground = which == -1
    if ground.any():
        albedo[ground] = _shade_texture(world.floor_tex, points[ground], normal[ground])
    for index in np.unique(which[which >= 0]):
        sel = which == index
        albedo[sel] = _shade_texture(world.prims[index]['tex'], points[sel], normal[sel])
    # soft shadows: shadow rays at half resolution, blurred
    sh, sw = height // 2, width // 2
    small_hit = cv2.resize(hit.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST).astype(bool)
    small_pts = cv2.resize(points, (sw, sh), interpolation=cv2.INTER_NEAREST).reshape(-1, 3)
    small_n = cv2.resize(normal, (sw, sh), interpolation=cv2.INTER_NEAREST).reshape(-1, 3)
    lit = np.ones(sh * sw)
    idx = np.flatnonzero(small_hit.ravel())
    if len(idx):
        origins = small_pts[idx] + small_n[idx] * 0.01
        dirs = np.broadcast_to(world.sun, origins.shape)
        occluders = [(i, p) for i, p in enumerate(world.prims) if p['cls'] != BACKGROUND]
        ts, _, _ = world.cast(np.ascontiguousarray(origins), np.ascontiguousarray(dirs), prims=occluders)
        lit[idx] = np.where(np.isfinite(ts), 0.0, 1.0)
    lit = cv2.GaussianBlur(lit.reshape(sh, sw).astype(np.float32), (0, 0), rng.uniform(0.8, 2.5))
    lit = cv2.resize(lit, (width, height), interpolation=cv2.INTER_LINEAR)
    diffuse = np.clip((normal * world.sun).sum(-1), 0, 1) * lit * world.sun_strength
    sky_light = 0.5 + 0.5 * normal[..., 2]
    light = world.ambient * (0.6 + 0.4 * sky_light)[..., None] + diffuse[..., None] * world.sun_colour
    colour = albedo * light
    # sky: gradient by elevation plus clouds
    elevation = np.clip(d_img[..., 2], -0.2, 1)
    t_sky = np.clip(elevation * 2.2, 0, 1)[..., None]
    sky = world.sky_horizon * (1 - t_sky) + world.sky_top * t_sky
    az = np.arctan2(d_img[..., 1], d_img[..., 0])
    cloud = _sample_noise(world.clouds, az * 5, np.maximum(elevation, 0) * 20)
    cloud = np.clip((cloud - 0.55) * 3, 0, 1)[..., None] * (elevation > 0)[..., None]
    sky = sky * (1 - cloud * 0.7) + cloud * 0.7 * 0.95
    colour = np.where(hit[..., None], colour, sky)
    if world.fog > 0:
        fog = 1 - np.exp(-world.fog * np.where(hit, t, 1e3))
        colour = colour * (1 - fog[..., None]) + world.fog_colour * fog[..., None]
    depth = np.where(hit, t * (d_img @ rot[:, 2]), np.inf).astype(np.float32)
    return _camera_response(colour, rng), label, depth


def _camera_response(colour, rng):
    """White balance cast, exposure, vignetting, blur (defocus or motion), noise, gamma -> uint8."""
    h, w = colour.shape[:2]
    colour = colour * rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.3)
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    colour = colour * (1 - rng.uniform(0, 0.35) * r2 / 2)[..., None]
    colour = colour.astype(np.float32)
    blur = rng.choice(['none', 'defocus', 'motion'], p=[0.4, 0.35, 0.25])
    if blur == 'defocus':
        colour = cv2.GaussianBlur(colour, (0, 0), rng.uniform(0.4, 1.2))
    elif blur == 'motion':
        k = int(rng.integers(3, 9))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        colour = cv2.filter2D(colour, -1, kernel / max(kernel.sum(), 1e-6))
    colour = colour + rng.normal(0, rng.uniform(0.0, 0.03), colour.shape).astype(np.float32)
    colour = np.clip(colour, 0, 1) ** (1 / rng.uniform(1.6, 2.4)) * 255
    return np.ascontiguousarray(np.clip(colour, 0, 255).astype(np.uint8))


def raycast_frames(n: int, seed: int = 0, width: int = 320, height: int = 240,
                   clutter: tuple[float, float] = (0.0, 1.0), seq_len: int = 6, layouts: Sequence[str] = LAYOUTS,
                   fov_range: tuple[float, float] = (45.0, 75.0), height_range: tuple[float, float] = (0.3, 1.2),
                   pitch_range: tuple[float, float] = (-25.0, 0.0), name_prefix: str = 'rc') -> Iterator[dict]:
    """Yield ``n`` frames (the dicts of ``render.render_frames``), ``seq_len`` per scene; ``pitch_range`` in
    degrees (negative looks down). The same arguments always give the same frames."""
    lo, hi = float(clutter[0]), float(clutter[1])
    frame_index, seq = 0, 0
    while frame_index < n:
        rng = np.random.default_rng([seed, seq, 7])
        layout = str(layouts[rng.integers(len(layouts))])
        level = float(rng.uniform(lo, hi)) if hi > lo else lo
        world = _World(rng, layout, level)
        fov = rng.uniform(*fov_range)
        fx = (height / 2) / math.tan(math.radians(fov) / 2)
        cam_h = rng.uniform(*height_range)
        pitch = math.radians(rng.uniform(*pitch_range))
        x0, y0, yaw0 = -1.0, rng.uniform(-0.3, 0.3), rng.normal(0, 0.25)
        speed = rng.uniform(0.1, 0.35)
        intrinsics = dict(fx=fx, fy=fx, cx=width / 2 - 0.5, cy=height / 2 - 0.5, width=width, height=height,
                          fov_y_deg=float(fov))
        for k in range(min(seq_len, n - frame_index)):
            yaw = yaw0 + 0.04 * k * rng.normal()
            x, y = x0 + speed * k * math.cos(yaw0), y0 + speed * k * math.sin(yaw0)
            rot = _camera_rotation(yaw, pitch)
            eye = np.array([x, y, cam_h])
            image, label, depth = _render(world, eye, rot, fx, width, height, rng)
            counts = np.bincount(label.ravel(), minlength=len(SCENE_CLASS_NAMES))
            yield {
                'name': f'{name_prefix}{seed}_{seq:05d}_{k:03d}',
                'image': image, 'label': label, 'depth': depth,
                'pose': {'position': [float(v) for v in eye], 'orientation': _quat(rot),
                         'frame_id': 'camera_optical_frame'},
                'base_pose': {'x': x, 'y': y, 'yaw': yaw},
                'intrinsics': intrinsics,
                'occupancy': _occupancy(world, x, y, yaw),
                'occupancy_info': {'resolution': OCC_RESOLUTION, 'width': int(round(OCC_SIZE_M / OCC_RESOLUTION)),
                                   'height': int(round(OCC_SIZE_M / OCC_RESOLUTION)),
                                   'origin': [-OCC_SIZE_M / 2, -OCC_SIZE_M / 2, 0.0]},
                'clutter': level, 'layout': layout, 'sequence': seq, 'frame': k, 'seed': seed,
                'counts': dict(world.counts),
                'pixel_counts': {name: int(c) for name, c in zip(SCENE_CLASS_NAMES, counts)},
                'camera': {'height': float(cam_h), 'pitch_deg': math.degrees(pitch)},
                'stamp_ns': BAG_START_NS + frame_index * FRAME_PERIOD_NS,
            }
            frame_index += 1
        seq += 1
