"""The costmap core (runtime/costmap.py) with a synthetic camera and a ray-cast world, and its message edge."""
import math

import cv2
import numpy as np
import pytest

from seg_perception.classes import BACKGROUND, FLOOR, OBSTACLE, SCENE_CLASS_NAMES, WALL
from seg_perception.runtime.costmap import (
    OPTICAL_IN_BODY,
    CameraInfoError,
    GridSpec,
    GroundCostmap,
    PinholeCamera,
    _running_min_down,
    class_cost_table,
    parse_class_costs,
    resolve_min_confidence,
)
from seg_perception.runtime.pose import pose_matrix

COSTS = class_cost_table(SCENE_CLASS_NAMES)


def camera(width=160, height=120, f=100.0, d=(), model='plumb_bob', **kw):
    k = [f, 0, width / 2, 0, f, height / 2, 0, 0, 1]
    return PinholeCamera.from_camera_info(k=k, d=d or [0.0] * 5, distortion_model=model, width=width,
                                          height=height, **kw)


def pose(z=1.0, pitch=0.0, x=0.0, y=0.0, yaw=0.0, roll=0.0):
    """Camera optical frame -> robot, for a camera body at (x, y, z) with roll/pitch/yaw (pitch > 0 looks down)."""
    return pose_matrix(x, y, z, roll, pitch, yaw) @ OPTICAL_IN_BODY


def raycast(cam, cam_pose, boxes=()):
    """Labels and depth of a world of floor (z = 0), axis-aligned boxes (lo, hi, class) and background."""
    rays = cam.rays() @ cam_pose[:3, :3].T
    origin = cam_pose[:3, 3]
    best = np.full(len(rays), np.inf)
    labels = np.full(len(rays), BACKGROUND, np.uint8)
    with np.errstate(divide='ignore', invalid='ignore'):
        t = -origin[2] / rays[:, 2]
        hit = (rays[:, 2] < 0) & (t > 0)
        best[hit], labels[hit] = t[hit], FLOOR
        for lo, hi, cls in boxes:
            t1, t2 = (np.array(lo) - origin) / rays, (np.array(hi) - origin) / rays
            near, far = np.nanmax(np.minimum(t1, t2), 1), np.nanmin(np.maximum(t1, t2), 1)
            hit = (far >= near) & (far > 0) & (near < best)
            best[hit], labels[hit] = near[hit], cls
    return labels.reshape(cam.height, cam.width), best.reshape(cam.height, cam.width).astype(np.float32)


def cell_value(grid_spec, grid, x, y):
    return grid[int((y - grid_spec.origin_y) // grid_spec.resolution),
                int((x - grid_spec.origin_x) // grid_spec.resolution)]


GRID = GridSpec.from_size(10.0, 10.0, 0.05)


def make(cam, cam_pose, grid=GRID, pool=1, overhang_margin=0.0, **kw):
    """A costmap at the image's own resolution (pool 1: pixel-level checks) without an overhang margin; the
    node's defaults pool 3x3 and keep 0.5 m in front of contacts unknown."""
    costmap = GroundCostmap(grid, COSTS, pool=pool, overhang_margin=overhang_margin, **kw)
    costmap.set_camera(cam, cam_pose)
    return costmap


def ground_point(u, v, h, pitch):
    """Independent geometry: pixel (u, v) of camera() (f 100, centre 80, 60) in the camera body frame, pitched
    down, meets z = 0 at this (x, y)."""
    xn, yn = (u - 80) / 100.0, (v - 60) / 100.0
    fwd, left, up = 1.0, -xn, -yn
    x = fwd * math.cos(pitch) + up * math.sin(pitch)
    z = -fwd * math.sin(pitch) + up * math.cos(pitch)
    return np.array([x, left]) * (h / -z)


def test_known_floor_point_lands_in_its_cell():
    cam, pitch, h = camera(), math.radians(25), 1.2
    u, v = 130, 95
    ground = ground_point(u, v, h, pitch)
    costmap = make(cam, pose(h, pitch))
    assert costmap.pixel_cells[v * 160 + u] == GRID.cell_index(*ground)
    labels = np.full((120, 160), FLOOR, np.uint8)
    labels[:v + 1] = WALL                        # a wall whose floor contact is row v
    frame = costmap.update(labels)
    assert max(cell_value(GRID, frame.grid, ground[0] + dx, ground[1] + dy) for dx in (-0.05, 0, 0.05)
               for dy in (-0.05, 0, 0.05)) == 100    # vertical lines are sampled two pixels apart
    row = np.array([ground_point(c, r, h, pitch) for c in range(160) for r in (v - 1, v)])
    # every obstacle point is the ground point of a pixel of row v (or v - 1: the lines are sampled at about
    # one-pixel steps), one of them within a cell of (u, v)'s
    assert len(frame.obstacles) > 20 and (frame.obstacles[:, 2] == 0).all()
    assert np.abs(frame.obstacles[:, None, :2] - row[None]).sum(2).min(1).max() < 1e-4
    assert np.hypot(*(frame.obstacles[:, :2] - ground).T).min() < 0.05
    labels[:] = FLOOR
    assert cell_value(GRID, costmap.update(labels).grid, *ground) == 0


@pytest.mark.parametrize('pitch_deg', [10.0, 25.0, -5.0])
def test_pitched_camera_projects_nothing_at_or_above_its_horizon(pitch_deg):
    cam, pitch = camera(), math.radians(pitch_deg)
    horizon = 60 - 100 * math.tan(pitch)             # image row of the horizon
    big = GridSpec.from_size(400.0, 400.0, 0.5)
    costmap = make(cam, pose(1.0, pitch), grid=big)
    rows = np.arange(120)
    above = rows <= horizon
    assert not (costmap.pixel_cells.reshape(120, 160)[above] >= 0).any()
    assert (costmap.pixel_cells.reshape(120, 160)[rows > horizon + 1] >= 0).all()
    floor = np.full((120, 160), FLOOR, np.uint8)
    sky = floor.copy()
    sky[above] = WALL
    assert np.array_equal(costmap.update(floor).grid, costmap.update(sky).grid)
    just_below = floor.copy()
    just_below[rows <= horizon + 2] = BACKGROUND
    assert not np.array_equal(costmap.update(floor).grid, costmap.update(just_below).grid)


def test_camera_looking_at_the_sky_gives_an_all_unknown_grid():
    costmap = make(camera(), pose(1.0, math.radians(-40)))         # 40 degrees up, 31 degrees half-FOV
    frame = costmap.update(np.full((120, 160), FLOOR, np.uint8))
    assert (frame.grid == -1).all() and not costmap.visible.any() and len(frame.obstacles) == 0


def test_unknown_outside_the_field_of_view():
    costmap = make(camera(), pose(1.0, math.radians(30)))
    grid = costmap.update(np.full((120, 160), FLOOR, np.uint8)).grid
    xs, ys = GRID.cell_centres()
    # independent projection of every cell's corners (pinhole, camera 1 m up, pitched 30 degrees down)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    sides = []
    for dx in (-0.025, 0.025):
        for dy in (-0.025, 0.025):
            x, y = xs + dx, ys + dy
            depth = x * c + s                        # along the optical axis
            z = np.where(depth > 0, depth, np.nan)
            u, v = 80 + 100 * -y / z, 60 + 100 * (c - x * s) / z
            sides.append(np.stack([depth <= 0, u < -0.5, u > 159.5, v < -0.5, v > 119.5]))
    outside = np.logical_and.reduce(sides).any(axis=0)     # every corner beyond the same image side
    assert outside.sum() > 20000
    assert (grid[outside] == -1).all() and not costmap.visible[outside].any()
    assert (grid[xs < 0] == -1).all()
    assert (grid[costmap.visible] == 0).mean() > 0.99


def test_obstacle_at_its_floor_contact_free_in_front_unknown_behind():
    cam, cam_pose = camera(320, 240, 200.0), pose(0.8, math.radians(15))
    box = ((2.0, -0.5, 0.0), (2.6, 0.5, 1.5), OBSTACLE)                # taller than the camera
    labels, _ = raycast(cam, cam_pose, [box])
    grid = make(cam, cam_pose).update(labels).grid
    assert all(cell_value(GRID, grid, x, 0.0) == 0 for x in np.arange(1.0, 1.9, 0.1))   # floor in front
    assert max(cell_value(GRID, grid, x, 0.0) for x in (1.95, 2.0, 2.05, 2.1)) == 100  # the contact
    assert all(cell_value(GRID, grid, x, y) == -1 for x in np.arange(2.3, 4.9, 0.1) for y in (-0.2, 0.0, 0.2))
    occupied = np.argwhere(grid == 100)
    x_occ = GRID.origin_x + (occupied[:, 1] + 0.5) * GRID.resolution
    assert x_occ.max() < 2.3, 'contacts smeared towards the horizon'


@pytest.mark.parametrize('with_depth', [False, True])
def test_untrusted_frame_has_no_free_cells_and_the_same_obstacles(with_depth):
    cam, cam_pose = camera(320, 240, 200.0), pose(0.8, math.radians(15))
    labels, depth = raycast(cam, cam_pose, [((2.0, -0.5, 0.0), (2.6, 0.5, 1.5), OBSTACLE)])
    costmap = make(cam, cam_pose)
    trusted = costmap.update(labels, depth=depth if with_depth else None)
    shifted = costmap.update(labels, depth=depth if with_depth else None, trust_free=False)
    assert (trusted.grid == 0).sum() > 1000 and not (shifted.grid == 0).any()
    assert np.array_equal(trusted.grid == 100, shifted.grid == 100)
    assert np.array_equal(shifted.grid == -1, (trusted.grid == -1) | (trusted.grid == 0))
    assert np.array_equal(trusted.obstacles, shifted.obstacles)


def test_overhang_margin_keeps_floor_in_front_of_a_contact_unknown():
    cam, cam_pose = camera(320, 240, 200.0), pose(0.8, math.radians(15))
    labels, _ = raycast(cam, cam_pose, [((2.0, -0.5, 0.0), (2.6, 0.5, 1.5), OBSTACLE)])
    grid = make(cam, cam_pose, overhang_margin=0.5).update(labels).grid
    assert all(cell_value(GRID, grid, x, 0.0) == -1 for x in np.arange(1.55, 1.95, 0.05))
    assert all(cell_value(GRID, grid, x, 0.0) == 0 for x in np.arange(1.0, 1.4, 0.1))
    assert max(cell_value(GRID, grid, x, 0.0) for x in (1.95, 2.0, 2.05, 2.1)) == 100


def test_depth_places_pixels_in_3d():
    cam, cam_pose = camera(320, 240, 200.0), pose(0.8, math.radians(15))
    labels, depth = raycast(cam, cam_pose, [((2.0, -0.5, 0.0), (2.6, 0.5, 1.5), OBSTACLE)])
    frame = make(cam, cam_pose).update(labels, depth=depth)
    occupied = np.argwhere(frame.grid == 100)
    x_occ = GRID.origin_x + (occupied[:, 1] + 0.5) * GRID.resolution
    assert occupied.size and x_occ.min() > 1.95 and x_occ.max() < 2.1      # the box's front face
    assert (frame.obstacles[:, 2] > 0.04).all() and np.allclose(frame.obstacles[:, 0], 2.0, atol=0.01)


@pytest.mark.parametrize('camera_height', [0.4, 1.2])
def test_depth_keeps_floor_under_an_overhang_and_mislabelled_floor_unknown(camera_height):
    """A table top (0.6-0.7 m high, x 2-3 m): the floor seen beneath it, farther than its front edge in the same
    column, is not free, from a camera below or above the top; the floor in front is. Pixels labelled floor
    whose points stand above the floor (a box read as floor) are not free either."""
    cam, cam_pose = camera(320, 240, 200.0), pose(camera_height, math.radians(12))
    table = ((2.0, -0.6, 0.6), (3.0, 0.6, 0.7), OBSTACLE)
    labels, depth = raycast(cam, cam_pose, [table])
    grid = make(cam, cam_pose, pool=1).update(labels, depth=depth).grid
    under = [cell_value(GRID, grid, x, y) for x in np.arange(2.1, 2.95, 0.05) for y in (-0.3, 0.0, 0.3)]
    assert 0 not in under
    assert all(cell_value(GRID, grid, x, 0.0) == 0 for x in np.arange(1.4, 1.9, 0.1))
    box = ((1.5, -0.3, 0.0), (1.9, 0.3, 0.5), FLOOR)
    labels, depth = raycast(cam, cam_pose, [box])
    grid = make(cam, cam_pose, pool=1).update(labels, depth=depth).grid
    assert all(cell_value(GRID, grid, x, y) != 0 for x in (1.6, 1.7, 1.8) for y in (-0.2, 0.0, 0.2))


@pytest.mark.parametrize('pool', [1, 2])
def test_low_confidence_pixels_never_make_free_cells(pool):
    cam, cam_pose = camera(), pose(1.0, math.radians(30))
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((120, 160)) < 0.9, FLOOR, OBSTACLE).astype(np.uint8)
    confidence = rng.random((120, 160)).astype(np.float32)
    costmap = make(cam, cam_pose, min_confidence=0.6, pool=pool)
    grid = costmap.update(labels, confidence).grid.ravel()
    least = confidence.reshape(120 // pool, pool, 160 // pool, pool).min(axis=(1, 3)).ravel()   # per pooled pixel
    unsure_cells = costmap.pixel_cells[(least < 0.6) & (costmap.pixel_cells >= 0)]
    assert unsure_cells.size > 1000 // pool ** 2 and (grid[unsure_cells] != 0).all()
    assert (grid == 0).sum() > 0          # confident floor elsewhere is still free
    everything_unsure = costmap.update(labels, np.full((120, 160), 0.3, np.float32)).grid
    assert not (everything_unsure == 0).any()


def test_pooled_costmap_matches_the_full_resolution_one():
    cam, cam_pose = camera(320, 240, 200.0), pose(0.8, math.radians(15))
    labels, depth = raycast(cam, cam_pose, [((2.0, -0.5, 0.0), (2.6, 0.5, 1.5), OBSTACLE),
                                            ((3.0, 1.0, 0.0), (3.4, 1.6, 0.5), OBSTACLE)])
    full, pooled = make(cam, cam_pose).update(labels).grid, make(cam, cam_pose, pool=2).update(labels).grid
    near = cv2.dilate((full == 100).view(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert (pooled == 100).sum() > 20 and near[pooled == 100].mean() > 0.9     # contacts within a cell
    assert ((pooled == 0) == (full == 0)).mean() > 0.97
    assert ((pooled == 0) & (full == 100)).sum() <= 0.05 * (full == 100).sum()   # a pixel's shift at most
    with_depth = make(cam, cam_pose, pool=2).update(labels, depth=depth).grid
    assert (with_depth == 100).any() and ((with_depth == 0) == (full == 0)).mean() > 0.9


def test_distortion_binning_and_roi():
    d = [-0.25, 0.08, 0.001, -0.001, 0.0]
    cam = camera(d=d)
    pix = cam.rays()                      # undistorted rays of every pixel, projected back with distortion
    u, v, front = cam.project(pix)
    grid_u, grid_v = np.meshgrid(np.arange(160), np.arange(120))
    assert front.all() and np.abs(u - grid_u.ravel()).max() < 0.05 and np.abs(v - grid_v.ravel()).max() < 0.05
    full = camera(640, 480, 400.0)
    binned = PinholeCamera.from_camera_info(k=list(full.k), d=[0.0] * 5, distortion_model='plumb_bob', width=640,
                                            height=480, binning_x=2, binning_y=2, roi=(64, 32, 240, 320),
                                            image_size=(120, 160))
    rays_full, rays_binned = full.rays().reshape(480, 640, 3), binned.rays().reshape(120, 160, 3)
    assert np.allclose(rays_binned[7, 11], rays_full[32 + 2 * 7, 64 + 2 * 11])


def test_bad_camera_info_is_refused_with_a_clear_message():
    with pytest.raises(CameraInfoError, match='focal length'):
        PinholeCamera.from_camera_info(k=[0.0] * 9, d=[], distortion_model='plumb_bob', width=160, height=120)
    with pytest.raises(CameraInfoError, match='320x240 image.*the image is 160x120'):
        camera(320, 240, image_size=(120, 160))
    with pytest.raises(CameraInfoError, match='not supported'):
        camera(d=[0.1, 0.0, 0.0, 0.0, 0.0], model='fancy')
    with pytest.raises(CameraInfoError, match='not finite'):
        camera(d=[float('nan')] * 5)
    with pytest.raises(CameraInfoError, match='K must be 9 finite numbers, got .*nan'):
        PinholeCamera.from_camera_info(k=[100.0, 0, float('nan'), 0, 100.0, 60, 0, 0, 1], d=[],
                                       distortion_model='plumb_bob', width=160, height=120)
    for d, model in (([0.1], 'plumb_bob'), ([0.1] * 3, 'plumb_bob'), ([0.1] * 100, 'rational_polynomial'),
                     ([0.1] * 5, 'equidistant')):   # OpenCV would fail on every frame: refused once, named
        with pytest.raises(CameraInfoError, match=f'{len(d)} distortion coefficients for {model}'):
            camera(d=d, model=model)
    camera(d=[0.1, 0.0, 0.0, 0.0], model='equidistant').rays()
    with pytest.raises(CameraInfoError, match=r'roi 160x120 at \(5000, 0\) lies outside the 640x480 sensor'):
        camera(640, 480, roi=(5000, 0, 120, 160), image_size=(120, 160))


def test_class_costs_config_metadata_and_defaults():
    names = ['floor', 'grass', 'person', 'sky', 'thing']
    assert class_cost_table(names).tolist() == [0, -1, 100, -1, -1]
    assert class_cost_table(names, parse_class_costs('grass:30, thing:100'), {'grass': 10, 'sky': 0}).tolist() \
        == [0, 30, 100, 0, 100]
    with pytest.raises(ValueError, match="no class 'tree'"):
        class_cost_table(names, {'tree': 100})
    with pytest.raises(ValueError, match='-1..100'):
        class_cost_table(names, {'grass': 101})
    with pytest.raises(ValueError, match="'grass' is not 'name:cost'"):
        parse_class_costs('floor:0, grass')
    assert resolve_min_confidence(-1, {}) == 0.5 and resolve_min_confidence(-1, {'costmap_min_confidence': 0.7}) \
        == 0.7 and resolve_min_confidence(0.2, {'costmap_min_confidence': 0.7}) == 0.2


def test_ground_classes_with_a_cost_and_the_combine_rule():
    costs = class_cost_table(['floor', 'grass', 'wall'], {'grass': 30})
    costmap = GroundCostmap(GRID, costs)
    costmap.set_camera(camera(), pose(1.0, math.radians(30)))
    labels = np.zeros((120, 160), np.uint8)
    labels[:, 80:] = 1                                       # grass on the right half
    grid = costmap.update(labels).grid
    assert set(np.unique(grid[costmap.visible])) <= {0, 30}
    assert (grid == 30).sum() > 100 and (grid == 0).sum() > 100


def test_fusion_decays_to_unknown():
    costmap = make(camera(), pose(1.0, math.radians(30)), fusion_decay=0.5)
    floor = np.full((120, 160), FLOOR, np.uint8)
    first = costmap.update(floor).grid
    assert (first == 0).any()
    sky = make(camera(), pose(1.0, math.radians(30))).update(np.full((120, 160), BACKGROUND, np.uint8)).grid
    assert (sky == -1).all()
    unsure = np.zeros((120, 160), np.float32)
    costmap.min_confidence = 0.5
    assert ((costmap.update(floor, unsure).grid == 0) == (first == 0)).all()    # weight 0.5: still known
    assert (costmap.update(floor, unsure).grid == -1).all()                      # weight 0.25: forgotten


def test_occupancy_grid_and_point_cloud_messages():
    pytest.importorskip('rclpy', reason='ROS 2 messages not installed')
    from std_msgs.msg import Header

    from seg_perception.costmap_msgs import occupancy_grid_msg, point_cloud_msg
    spec = GridSpec.from_size(3.0, 2.0, 0.5, origin=(1.0, -1.0))
    grid = np.arange(24, dtype=np.int8).reshape(4, 6) - 1
    header = Header(frame_id='base_link')
    header.stamp.sec, header.stamp.nanosec = 5, 6
    msg = occupancy_grid_msg(grid, spec, header)
    assert (msg.info.width, msg.info.height, msg.info.resolution) == (6, 4, 0.5)
    assert (msg.info.origin.position.x, msg.info.origin.position.y, msg.info.origin.orientation.w) == (1.0, -1.0, 1)
    assert msg.header.frame_id == 'base_link' and msg.header.stamp.nanosec == 6 and msg.info.map_load_time.sec == 5
    assert np.array_equal(np.array(msg.data, np.int8).reshape(4, 6), grid)      # row-major, row = y
    points = np.array([[1.5, -0.25, 0.0], [2.0, 0.75, 0.3]], np.float32)
    cloud = point_cloud_msg(points, header)
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, 2, 12, 24)
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [('x', 0, 7, 1), ('y', 4, 7, 1),
                                                                               ('z', 8, 7, 1)]
    assert not cloud.is_bigendian and cloud.is_dense
    assert np.array_equal(np.frombuffer(bytes(cloud.data), '<f4').reshape(-1, 3), points)
    assert point_cloud_msg(np.zeros((0, 3)), header).width == 0


def test_cell_buckets_give_each_cells_maximum():
    from seg_perception.runtime.costmap import _cell_buckets
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(50, 400) * 3)                 # sorted cell ids, 1..~20 pixels each, some 100+
    cells = np.concatenate([cells, np.full(150, 999)])
    pixels = rng.integers(0, 5000, cells.size)
    ranks = rng.integers(0, 255, 5000).astype(np.uint8)
    expected = {}
    for cell, pixel in zip(cells, pixels):
        expected[cell] = max(expected.get(cell, 0), ranks[pixel])
    got = {}
    for ids, idx in _cell_buckets(cells, pixels):
        assert idx.shape[1] == ids.size
        got.update(zip(ids.tolist(), ranks.take(idx).max(axis=0).tolist()))
    assert got == {int(k): int(v) for k, v in expected.items()}
    assert _cell_buckets(np.zeros(0, np.int64), np.zeros(0, np.int64)) == []


def test_running_min_down_equals_numpy_accumulate():
    rng = np.random.default_rng(3)
    for rows in (1, 2, 5, 64, 161):
        image = np.where(rng.random((rows, 7)) < 0.3, rng.random((rows, 7)), np.inf).astype(np.float32)
        assert np.array_equal(_running_min_down(image), np.minimum.accumulate(image, axis=0))
