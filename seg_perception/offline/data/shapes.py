"""Assembled shape families for the training renderer: obstacles, people and robots built from random primitives.

The renderer's own objects are a fixed catalogue (boxes, tables, shelves, four ``pybullet_data`` robots, one person
stand-in); a model trained on them learns those shapes. These families draw the parts, their proportions and their
arrangement at random, so that what stays constant within a class is its structure (a robot: a body on wheels,
tracks, legs or a skirt with modules on top; a person: legs, torso, arms and head in any pose and build, with coats,
bags and hats; an obstacle: piles, barrels, cones, posts, plants, benches), not one look. Every function returns the
parts of one compound body, ``(kind, dims, (x, y, z), rgba[, (roll, pitch)])`` in the body's frame (x forward,
z up, standing on z = 0), as ``_Scene._compound`` takes them; they draw only from the ``rng`` they are given.
"""
import math
from collections.abc import Sequence

import cv2
import numpy as np


def colour(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.95) -> list:
    """A random RGBA colour, each channel uniform in [lo, hi]."""
    return [float(v) for v in rng.uniform(lo, hi, 3)] + [1.0]


def hsv_colour(rng: np.random.Generator, h: tuple[float, float], s: tuple[float, float],
               v: tuple[float, float]) -> list:
    """RGBA from HSV ranges (each a (lo, hi) pair, hue in degrees)."""
    hsv = np.uint8([[[rng.uniform(*h) / 2, rng.uniform(*s) * 255, rng.uniform(*v) * 255]]])
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0
    return [float(c) for c in rgb] + [1.0]


def limb(roll: float, pitch: float, joint: Sequence[float], radius: float, length: float, rgba: list) -> tuple:
    """A capsule hanging from ``joint`` turned by ``roll`` (sideways) then ``pitch`` (forward/back)."""
    sr, cr, sp, cp = math.sin(roll), math.cos(roll), math.sin(pitch), math.cos(pitch)
    down = np.array([-sp * cr, sr, -cp * cr])       # R_y(pitch) R_x(roll) (0, 0, -1)
    centre = np.asarray(joint) + down * (length / 2 + radius)
    return ('capsule', [radius, length], tuple(float(v) for v in centre), rgba, (roll, pitch))


def leg(roll: float, pitch: float, joint: Sequence[float], radius: float, rgba: list) -> tuple:
    """A :func:`limb` from the hip ``joint`` whose foot rests on the floor: its length is what brings the lowest
    point of the capsule to z = 0 at this angle (pybullet's capsule length leaves out the two end caps)."""
    drop = math.cos(roll) * math.cos(pitch)
    return limb(roll, pitch, joint, radius, max((joint[2] - radius) / drop - radius, 0.02), rgba)


def neck(torso_top: float, head_centre: float, radius: float, rgba: list) -> tuple:
    """An upright capsule from just inside the torso's top to the head's centre, so that head and body join."""
    bottom = torso_top - radius
    return ('capsule', [radius, max(head_centre - bottom - 2 * radius, 0.01)], (0, 0, (bottom + head_centre) / 2),
            rgba)


def _dark(rng) -> list:
    return hsv_colour(rng, (0, 360), (0.0, 0.3), (0.05, 0.4))


def assembled_robot(rng: np.random.Generator) -> list:
    """A mobile robot: a box or round body on wheels, tracks, legs or a skirt, with 0-3 modules on top (lidar,
    mast with a sensor head, upper body with a head, arm, screen, dome)."""
    body_rgba = hsv_colour(rng, (0, 360), (0.0, 1.0), (0.15, 1.0))
    accent = body_rgba if rng.random() < 0.4 else colour(rng)
    dark = _dark(rng) if rng.random() < 0.8 else colour(rng)
    hx, hy, hz = rng.uniform(0.15, 0.7), rng.uniform(0.12, 0.45), rng.uniform(0.05, 0.4)
    drive = rng.choice(['wheels', 'tracks', 'legs', 'skirt'], p=[0.45, 0.2, 0.15, 0.2])
    parts = []
    if drive == 'wheels':
        r, half_w = rng.uniform(0.04, min(0.25, 0.8 * hx)), rng.uniform(0.015, 0.06)
        axles = [0.0] if rng.random() < 0.25 else np.linspace(-0.75 * hx, 0.75 * hx, int(rng.integers(2, 4)))
        for ax in axles:
            for side in (-1, 1):
                parts.append(('cylinder', [r, 2 * half_w], (float(ax), side * (hy + half_w), r), dark,
                              (math.pi / 2, 0.0)))
        bottom = r * rng.uniform(0.5, 1.3)
    elif drive == 'tracks':
        th, tw = rng.uniform(0.05, 0.18), rng.uniform(0.04, 0.12)
        for side in (-1, 1):
            parts.append(('box', [hx * 1.05, tw, th], (0, side * (hy + tw), th), dark))
        bottom = th * rng.uniform(0.8, 1.6)
    elif drive == 'legs':
        leg_h, leg_r = rng.uniform(0.15, 0.6), rng.uniform(0.02, 0.06)
        for sx in (-1, 1):
            for side in (-1, 1):
                parts.append(leg(rng.normal(0, 0.15), rng.normal(0, 0.25), (sx * 0.8 * hx, side * 0.8 * hy, leg_h),
                                 leg_r, dark))
        bottom = leg_h
    else:
        bottom = rng.uniform(0.0, 0.04)
    if rng.random() < 0.6:
        parts.append(('box', [hx, hy, hz], (0, 0, bottom + hz), body_rgba))
    else:
        parts.append(('cylinder', [max(hx, hy), 2 * hz], (0, 0, bottom + hz), body_rgba))
    top = bottom + 2 * hz
    kinds = ['lidar', 'mast', 'upper', 'arm', 'screen', 'dome']
    for module in rng.choice(kinds, size=int(rng.integers(0, 4)), replace=False):
        x = float(rng.uniform(-0.6, 0.6) * hx)
        if module == 'lidar':
            r, h = rng.uniform(0.03, 0.09), rng.uniform(0.04, 0.12)
            parts.append(('cylinder', [r, h], (x, 0, top + h / 2), dark))
        elif module == 'mast':
            h = rng.uniform(0.15, max(0.2, min(1.0, 1.9 - top)))   # sensor heads up to about 2 m
            parts.append(('cylinder', [rng.uniform(0.015, 0.05), h], (x, 0, top + h / 2), dark))
            head = rng.uniform(0.04, 0.12)
            shape = ('sphere', [head]) if rng.random() < 0.4 else ('box', [head, head * 1.5, head * 0.7])
            parts.append((*shape, (x, 0, top + h + head * 0.7), accent))
        elif module == 'upper':
            ux, uy, uz = hx * rng.uniform(0.3, 0.8), hy * rng.uniform(0.4, 0.9), rng.uniform(0.1, 0.35)
            parts.append(('box', [ux, uy, uz], (x, 0, top + uz), accent))
            if rng.random() < 0.6:
                head = rng.uniform(0.08, 0.18)
                parts.append(('sphere' if rng.random() < 0.5 else 'box',
                              [head, head, head * 0.8], (x, 0, top + 2 * uz + head * 0.8), body_rgba))
            top += 2 * uz
        elif module == 'arm':
            base_h = rng.uniform(0.05, 0.3)
            parts.append(('cylinder', [0.04, base_h], (x, 0, top + base_h / 2), dark))
            parts.append(limb(rng.uniform(-0.5, 0.5), rng.uniform(2.0, 3.0), (x, 0, top + base_h),
                              rng.uniform(0.025, 0.05), rng.uniform(0.2, 0.6), accent))
        elif module == 'screen':
            w, h = rng.uniform(0.1, 0.3), rng.uniform(0.08, 0.2)
            post = rng.uniform(0.0, 0.5)
            if post > 0.05:
                parts.append(('cylinder', [0.02, post], (x, 0, top + post / 2), dark))
            parts.append(('box', [0.015, w, h], (x, 0, top + post + h), colour(rng, 0.0, 0.4),
                          (0.0, float(rng.uniform(-0.5, 0.2)))))
        else:
            radius = min(min(hx, hy) * rng.uniform(0.5, 1.0), top)   # a half dome that stays above the floor
            parts.append(('sphere', [radius], (x, 0, top), accent))
    return parts


def assembled_person(rng: np.random.Generator) -> list:
    """A person of any build and size (children to tall adults), arms and legs in random poses, with a long coat
    or dress, backpack, carried box or hat at random."""
    scale, girth = rng.uniform(0.55, 1.15), rng.uniform(0.75, 1.5)
    skin = hsv_colour(rng, (5, 40), (0.2, 0.7), (0.2, 0.95))
    shirt = hsv_colour(rng, (0, 360), (0.0, 0.9), (0.1, 0.95))
    pants = hsv_colour(rng, (0, 360), (0.0, 0.7), (0.05, 0.7)) if rng.random() < 0.7 else colour(rng)
    hip = 0.85 * scale
    shoulder = hip + 0.55 * scale
    torso_r = 0.14 * scale * girth
    torso_z, torso_half = hip + 0.27 * scale, 0.15 * scale + torso_r   # centre; half height with the end caps
    parts = [('capsule', [torso_r, 0.3 * scale], (0, 0, torso_z), shirt)]
    leg_r = 0.06 * scale * girth
    hip_joint = torso_z - torso_half + leg_r   # inside the torso's lower end: legs and body join
    if rng.random() < 0.25:   # a long coat or dress down to the knees or lower
        length = hip * rng.uniform(0.45, 0.9)
        parts.append(('cylinder', [torso_r * rng.uniform(1.0, 1.4), length], (0, 0, hip + 0.05 - length / 2),
                      shirt if rng.random() < 0.5 else colour(rng)))
    stride = rng.uniform(-0.5, 0.5)
    for side in (-1, 1):
        parts.append(leg(side * rng.uniform(0, 0.2), side * stride + rng.normal(0, 0.1),
                         (0, side * 0.45 * torso_r, hip_joint), leg_r, pants))
        arm = shirt if rng.random() < 0.6 else skin
        parts.append(limb(side * rng.uniform(0.05, math.radians(120)), rng.uniform(-1.6, 0.8),
                          (0, side * torso_r, torso_z + 0.15 * scale), 0.045 * scale * girth,   # on the torso's side
                          0.42 * scale, arm))
    head = 0.11 * scale ** 0.7
    head_z = shoulder + 0.05 * scale + head
    parts.append(neck(torso_z + torso_half, head_z, 0.04 * scale, skin))
    parts.append(('sphere', [head], (0, 0, head_z), skin))
    extra = rng.choice(['none', 'backpack', 'box', 'hat', 'hair'], p=[0.3, 0.2, 0.15, 0.15, 0.2])
    if extra == 'backpack':
        d = rng.uniform(0.06, 0.12) * scale
        parts.append(('box', [d, torso_r * 0.9, 0.2 * scale], (-(torso_r + d), 0, hip + 0.3 * scale), colour(rng)))
    elif extra == 'box':
        b = rng.uniform(0.1, 0.22, 3) * scale
        parts.append(('box', list(b), (torso_r + b[0], 0, hip + 0.1 * scale), colour(rng)))
    elif extra == 'hat':
        parts.append(('cylinder', [head * rng.uniform(1.0, 1.6), 0.04], (0, 0, shoulder + 0.05 * scale + 1.8 * head),
                      colour(rng)))
    elif extra == 'hair':
        parts.append(('sphere', [head * 1.05], (-0.02 * scale, 0, shoulder + 0.07 * scale + head),
                      hsv_colour(rng, (0, 50), (0.0, 0.8), (0.05, 0.9))))
    return parts


def assembled_obstacle(rng: np.random.Generator) -> list:
    """A static obstacle: a pile of random primitives, barrel, traffic cone, row of posts, potted plant, bench or
    sofa, or bin."""
    tint = hsv_colour(rng, (0, 360), (0.0, 1.0), (0.1, 1.0))
    kind = rng.choice(['pile', 'barrel', 'cone', 'posts', 'plant', 'bench', 'bin'],
                      p=[0.3, 0.12, 0.12, 0.12, 0.12, 0.12, 0.1])
    if kind == 'pile':
        parts = []
        for _ in range(int(rng.integers(2, 7))):
            shape = rng.choice(['box', 'cylinder', 'sphere'])
            size = rng.uniform(0.06, 0.4, 3)
            x, y = rng.uniform(-0.4, 0.4, 2)
            tint_k = tint if rng.random() < 0.4 else colour(rng)
            if shape == 'box':
                parts.append(('box', list(size), (x, y, size[2] * rng.uniform(1.0, 2.5)), tint_k))
            elif shape == 'cylinder' and rng.random() < 0.5:   # lying on its side
                parts.append(('cylinder', [size[0], 2 * size[1]], (x, y, size[0] * rng.uniform(1.0, 2.0)), tint_k,
                              (math.pi / 2, 0.0)))
            elif shape == 'cylinder':
                parts.append(('cylinder', [size[0], 2 * size[1]], (x, y, size[1] * rng.uniform(1.0, 2.0)), tint_k))
            else:
                parts.append(('sphere', [size[0]], (x, y, size[0] * rng.uniform(1.0, 2.0)), tint_k))
        return parts
    if kind == 'barrel':
        r, h = rng.uniform(0.18, 0.35), rng.uniform(0.45, 1.0)
        return [('cylinder', [r, h], (0, 0, h / 2), tint), ('cylinder', [r * 1.03, 0.03], (0, 0, h * 0.7), colour(rng))]
    if kind == 'cone':
        h, r = rng.uniform(0.3, 0.9), rng.uniform(0.08, 0.2)
        parts = [('box', [r * 1.4, r * 1.4, 0.015], (0, 0, 0.015), _dark(rng))]
        for k, share in enumerate((1.0, 0.7, 0.4)):
            parts.append(('cylinder', [r * share, h / 3], (0, 0, h / 6 + k * h / 3), tint if k != 1 else colour(rng)))
        return parts
    if kind == 'posts':
        r, h, gap = rng.uniform(0.03, 0.1), rng.uniform(0.4, 1.2), rng.uniform(0.3, 0.9)
        count = int(rng.integers(1, 5))
        parts = [('cylinder', [r, h], (0, (k - (count - 1) / 2) * gap, h / 2), tint) for k in range(count)]
        if count > 1 and rng.random() < 0.5:   # a rail or chain along their tops
            parts.append(('box', [0.02, (count - 1) * gap / 2, 0.02], (0, 0, h * 0.9), colour(rng)))
        return parts
    if kind == 'plant':
        r, h = rng.uniform(0.12, 0.3), rng.uniform(0.2, 0.5)
        leaves = hsv_colour(rng, (60, 160), (0.3, 0.9), (0.15, 0.7))
        parts = [('cylinder', [r, h], (0, 0, h / 2), tint)]
        for _ in range(int(rng.integers(1, 4))):
            s = r * rng.uniform(1.0, 2.2)
            parts.append(('sphere', [s], (rng.normal(0, r / 2), rng.normal(0, r / 2), h + s * rng.uniform(0.6, 1.6)),
                          leaves))
        return parts
    if kind == 'bench':
        w, d, seat = rng.uniform(0.4, 1.1), rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.5)
        parts = [('box', [d, w, seat / 2], (0, 0, seat / 2), tint)]
        if rng.random() < 0.6:
            parts.append(('box', [0.06, w, rng.uniform(0.15, 0.35)], (-d, 0, seat + 0.2), tint))
        return parts
    w, d, h = rng.uniform(0.15, 0.35), rng.uniform(0.15, 0.35), rng.uniform(0.3, 0.6)
    return [('box', [w, d, h], (0, 0, h), tint), ('box', [w * 1.08, d * 1.08, 0.025], (0, 0, 2 * h + 0.025),
                                                    colour(rng))]
