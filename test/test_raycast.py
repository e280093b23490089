"""The independent evaluation generator (offline/data/raycast.py): deterministic, labelled, geometrically sound."""
import math

import numpy as np

from seg_perception.classes import BACKGROUND, FLOOR, SCENE_CLASS_NAMES
from seg_perception.offline.data import raycast as rc


def _frames(**kw):
    return list(rc.raycast_frames(2, seed=3, width=96, height=72, seq_len=2, **kw))


def test_same_seed_same_frames_and_valid_fields():
    a, b = _frames(), _frames()
    for fa, fb in zip(a, b):
        assert np.array_equal(fa['image'], fb['image']) and np.array_equal(fa['label'], fb['label'])
        assert fa['image'].shape == (72, 96, 3) and fa['image'].dtype == np.uint8
        assert fa['label'].max() < len(SCENE_CLASS_NAMES)
        assert fa['occupancy'].shape == (200, 200) and set(np.unique(fa['occupancy'])) <= {-1, 0, 100}
    assert not np.array_equal(a[0]['image'], _frames(clutter=(1.0, 1.0))[0]['image'])


def test_floor_pixel_depth_matches_the_ground_plane():
    """A floor pixel's depth and the camera pose put its 3-D point on z = 0; rays that hit nothing are background."""
    frame = _frames(clutter=(0.0, 0.0))[0]
    k = frame['intrinsics']
    pos = np.array(frame['pose']['position'])
    x, y, z, w = frame['pose']['orientation']
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    vs, us = np.nonzero(frame['label'] == FLOOR)
    assert len(vs) > 100
    for v, u in zip(vs[::97], us[::97]):
        d = frame['depth'][v, u]
        ray = np.array([(u - k['cx']) / k['fx'], (v - k['cy']) / k['fy'], 1.0]) * d
        assert math.isclose((rot @ ray + pos)[2], 0.0, abs_tol=1e-3)
    no_hit = np.isinf(frame['depth'])
    assert (frame['label'][no_hit] == BACKGROUND).all()


def test_obstacles_are_in_the_occupancy_ground_truth():
    frame = _frames(clutter=(1.0, 1.0))[0]
    assert (frame['occupancy'] == 100).any() and (frame['occupancy'] == 0).any()
