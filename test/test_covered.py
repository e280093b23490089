"""`seg-perception cover`: floor pixels whose 3-D point lies inside an object's footprint become covered_floor,
one cell inside the footprint's edge; other floor, other classes and points off the grid keep their labels; the
training option `same_look` recolours the new class as floor."""
import json

import cv2
import numpy as np
import pytest
import yaml

from seg_perception.offline.data.covered import camera_to_base, cover_dataset, covered_floor
from seg_perception.offline.training.augment import TrainDataset
from seg_perception.offline.training.config import check_config
from seg_perception.runtime.costmap import OPTICAL_IN_BODY, GridSpec
from seg_perception.runtime.pose import pose_matrix

H, W, F = 120, 160, 100.0
K = {'fx': F, 'fy': F, 'cx': W / 2, 'cy': H / 2}
INFO = {'resolution': 0.1, 'width': 60, 'height': 60, 'origin': [-3.0, -3.0, 0.0]}
GRID = GridSpec(INFO['resolution'], INFO['width'], INFO['height'], *INFO['origin'][:2])
SQUARE = (1.5, 2.5, -0.5, 0.5)          # x0, x1, y0, y1 (metres, base frame): an occupied footprint


def _floor_scene(to_base):
    """Depth of a floor plane seen by the camera, and each pixel's ground point (base frame)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K['cx']) / F, (v - K['cy']) / F, np.ones_like(u)], -1) @ to_base[:3, :3].T
    t = np.where(rays[..., 2] < -1e-6, -to_base[2, 3] / np.minimum(rays[..., 2], -1e-6), np.inf)
    with np.errstate(invalid='ignore'):
        ground = to_base[:3, 3] + t[..., None] * rays
    return t, ground          # depth along the optical axis = t (the optical ray's z component is 1)


def _quaternion(r):
    """(x, y, z, w) of a rotation matrix whose trace is > -1."""
    w = np.sqrt(1 + np.trace(r)) / 2
    return [(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w), w]


def _occupancy():
    occ = np.zeros((INFO['height'], INFO['width']), np.int16)
    x0, x1, y0, y1 = SQUARE
    c0, c1 = [int(round((x - INFO['origin'][0]) / INFO['resolution'])) for x in (x0, x1)]
    r0, r1 = [int(round((y - INFO['origin'][1]) / INFO['resolution'])) for y in (y0, y1)]
    occ[r0:r1, c0:c1] = 100
    return occ


def test_floor_inside_a_footprint_is_covered_its_edge_unless_inset():
    to_base = pose_matrix(0.0, 0.0, 1.0, 0.0, 0.5, 0.0) @ OPTICAL_IN_BODY
    depth, ground = _floor_scene(to_base)
    mask = np.zeros((H, W), np.uint8)
    mask[:, :10] = 2                                           # an obstacle column: never relabelled
    x, y = ground[..., 0], ground[..., 1]
    x0, x1, y0, y1 = SQUARE
    inner = (x > x0 + 0.15) & (x < x1 - 0.15) & (y > y0 + 0.15) & (y < y1 - 0.15) & (mask == 0)
    outer = ~((x > x0 - 0.05) & (x < x1 + 0.05) & (y > y0 - 0.05) & (y < y1 + 0.05))
    edge = ((x > x0 + 0.01) & (x < x0 + 0.04)) & (np.abs(y) < 0.3) & (mask == 0)   # the first cell row
    for inset, edge_covered in ((0, True), (1, False)):
        covered = covered_floor(mask, depth, K, to_base, _occupancy(), GRID, inset=inset)
        assert inner.sum() > 200 and covered[inner].all()
        assert edge.any() and (covered[edge].all() if edge_covered else not covered[edge].any())
        assert not covered[outer].any() and not covered[mask == 2].any()
        assert not covered[~np.isfinite(depth)].any()           # above the horizon: no point, no label


def test_camera_to_base_from_render_meta():
    """A camera 1 m up in a robot at (2, 3) turned 90 degrees: a point 1 m ahead of the camera (optical z) is 1 m
    ahead of the robot (base x), wherever the robot stands in the world."""
    yaw = np.pi / 2
    world_camera = pose_matrix(2.0, 3.0, 1.0, 0.0, 0.0, yaw) @ OPTICAL_IN_BODY
    meta = {'pose': {'position': world_camera[:3, 3].tolist(), 'orientation': _quaternion(world_camera[:3, :3])},
            'base_pose': {'x': 2.0, 'y': 3.0, 'yaw': yaw}}
    to_base = camera_to_base(meta)
    assert np.allclose(to_base @ [0, 0, 1.0, 1], [1.0, 0.0, 1.0, 1], atol=1e-9)


def test_cover_dataset_writes_the_new_class(tmp_path):
    to_base = pose_matrix(0.0, 0.0, 1.0, 0.0, 0.5, 0.0) @ OPTICAL_IN_BODY
    depth, _ = _floor_scene(to_base)
    src = tmp_path / 'src'
    for folder in ('images', 'masks', 'depth', 'occupancy', 'meta'):
        (src / folder / 'val').mkdir(parents=True)
    cv2.imwrite(str(src / 'images' / 'val' / 'f.png'), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(src / 'masks' / 'val' / 'f.png'), np.zeros((H, W), np.uint8))
    cv2.imwrite(str(src / 'depth' / 'val' / 'f.png'),
                np.where(np.isfinite(depth), np.minimum(depth * 1000, 65535), 0).astype(np.uint16))
    cv2.imwrite(str(src / 'occupancy' / 'val' / 'f.png'), _occupancy().astype(np.uint8))
    # the robot at the world origin: the camera's world pose is its base pose (rotation as a quaternion)
    (src / 'meta' / 'val' / 'f.json').write_text(json.dumps({
        'pose': {'position': to_base[:3, 3].tolist(), 'orientation': _quaternion(to_base[:3, :3])},
        'base_pose': {'x': 0, 'y': 0, 'yaw': 0},
        'intrinsics': K, 'occupancy_info': INFO}))
    (src / 'classes.yaml').write_text(yaml.safe_dump({'names': ['floor', 'wall'], 'palette': [[1, 2, 3], [4, 5, 6]],
                                                      'ignore_index': 255}))
    counts = cover_dataset(src, tmp_path / 'dst', 'val')
    out = cv2.imread(str(tmp_path / 'dst' / 'masks' / 'val' / 'f.png'), cv2.IMREAD_UNCHANGED)
    assert counts['frames'] == 1 and counts['covered_pixels'] == int((out == 2).sum()) > 200
    assert yaml.safe_load((tmp_path / 'dst' / 'classes.yaml').read_text())['names'] == ['floor', 'wall',
                                                                                        'covered_floor']
    assert (tmp_path / 'dst' / 'images' / 'val' / 'f.png').is_file()
    with pytest.raises(Exception, match='already has'):
        cover_dataset(tmp_path / 'dst', tmp_path / 'again', 'val')


def test_same_look_recolours_a_class_as_another():
    """With same_look {2: 0} class 2 takes class 0's random look: one colour across both, unlike class 1."""
    image = np.full((32, 96, 3), (120, 80, 40), np.uint8)
    label = np.zeros((32, 96), np.uint8)
    label[:, 32:64], label[:, 64:] = 2, 1

    class One:
        classes, palette, ignore_index, names = ['a', 'b', 'c'], [[0, 0, 0]] * 3, 255, ['x']

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return image, label
    cfg = check_config({'data': 'unused', 'class_recolor': 1.0, 'same_look': {2: 0}, 'crop_size': [32, 96],
                        'input_size': [32, 96], 'scale_range': [1.0, 1.0], 'hflip': 0.0, 'photometric': 0.0,
                        'shadows': 0.0, 'haze': 0.0})
    ds = TrainDataset(One(), cfg)
    x, _ = ds[(0, 3)]
    x = x.numpy()
    left, mid, right = x[:, :, :32].mean((1, 2)), x[:, :, 32:64].mean((1, 2)), x[:, :, 64:].mean((1, 2))
    assert np.abs(left - mid).max() < 0.05 and np.abs(left - right).max() > 0.05
