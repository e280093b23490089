"""The node's costmap over real rclpy + DDS: CameraInfo and an image in, OccupancyGrid and PointCloud2 out."""
import contextlib
import re
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from seg_perception.node import SegmentationNode  # noqa: E402
from seg_perception.runtime.costmap import (  # noqa: E402
    OPTICAL_IN_BODY,
    GridSpec,
    GroundCostmap,
    PinholeCamera,
    class_cost_table,
    resolve_min_confidence,
)
from seg_perception.runtime.imgmsg import array_to_image_fields  # noqa: E402
from seg_perception.runtime.pose import pose_matrix  # noqa: E402

H, W = 96, 128


def camera_info(fx=80.0, width=W, height=H):
    msg = CameraInfo(width=width, height=height, distortion_model='plumb_bob')
    msg.k = [fx, 0.0, width / 2, 0.0, fx, height / 2, 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    msg.p = [fx, 0.0, width / 2, 0.0, 0.0, fx, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def scene_image():
    """Two colours: the tiny model gives (at least) two classes, some standing, some not."""
    rng = np.random.default_rng(3)
    img = np.empty((H, W, 3), np.uint8)
    img[:H // 2] = (40, 60, 200)
    img[H // 2:] = (200, 180, 40)
    img[H // 2 - 12:H // 2 + 4, 40:80] = (250, 250, 250)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


class Harness:
    def __init__(self, ctx):
        self.node = rclpy.create_node('costmap_harness', context=ctx)
        self.grids, self.clouds, self.labels = [], [], []
        self.image_pub = self.node.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.info_pub = self.node.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
        self.node.create_subscription(OccupancyGrid, 'segmentation/costmap', self.grids.append, 10)
        self.node.create_subscription(PointCloud2, 'segmentation/obstacles', self.clouds.append, 10)
        self.node.create_subscription(Image, 'segmentation/labels', self.labels.append, 10)

    @staticmethod
    def wait_for(predicate, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def send(self, info, image, stamp=(21, 500)):
        info.header.stamp.sec, info.header.stamp.nanosec = stamp
        info.header.frame_id = 'cam_optical'
        msg = Image(**array_to_image_fields(image, 'rgb8'))
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.header.frame_id = 'cam_optical'
        self.info_pub.publish(info)
        # the image only once the node holds this CameraInfo (best-effort topics: no order between the two)
        assert self.wait_for(lambda: self.costmap_output._info is not None
                             and self.costmap_output._info.header.stamp == info.header.stamp), 'CameraInfo not taken'
        self.image_pub.publish(msg)


@contextlib.contextmanager
def running_node(model, **extra):
    """The node on ``model`` (+ ``extra`` parameters) beside a harness, both spinning."""
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    params = {'model_path': model, 'camera_pose.z': 1.0, 'camera_pose.pitch': 0.5, 'costmap.size': [8.0, 6.0],
              'costmap.origin': [-1.0, -3.0], 'costmap.resolution': 0.1, 'costmap.frame_id': 'robot',
              'costmap.class_costs': 'floor:0, wall:100, obstacle:100, person:100, robot:100, background:0', **extra}
    node = SegmentationNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    harness = Harness(ctx)
    harness.costmap_output = node.costmap
    executor.add_node(node)
    executor.add_node(harness.node)
    try:
        assert harness.wait_for(lambda: node.sub.get_publisher_count() > 0 and node.costmap.wanted()
                                and harness.info_pub.get_subscription_count() > 0
                                and all(s.get_publisher_count() > 0 for s in harness.node.subscriptions)), 'discovery'
        yield node, harness
    finally:
        executor.shutdown()
        node.destroy_node()
        harness.node.destroy_node()
        rclpy.shutdown(context=ctx)
        thread.join(5)


@pytest.fixture
def costmap_node(tiny_model):
    with running_node(tiny_model) as pair:
        yield pair


def expected_grid(node, image, pitch=0.5):
    """What the core makes of the node's own labels for this camera and pose."""
    result = node.engine.infer(image)
    costs = class_cost_table(node.engine.names, {'background': 0})
    costmap = GroundCostmap(GridSpec.from_size(8.0, 6.0, 0.1, (-1.0, -3.0)), costs, overhang_margin=0.5,
                            min_confidence=resolve_min_confidence(-1.0, node.engine.meta))
    costmap.set_camera(PinholeCamera.from_msg(camera_info(), (H, W)),
                       pose_matrix(0.0, 0.0, 1.0, 0.0, pitch, 0.0) @ OPTICAL_IN_BODY)
    return costmap.update(result.labels, result.confidence)


def test_node_publishes_costmap_and_obstacles(costmap_node):
    node, h = costmap_node
    image = scene_image()
    h.send(camera_info(), image)
    assert h.wait_for(lambda: h.grids and h.clouds), 'no costmap published'
    grid, cloud = h.grids[0], h.clouds[0]
    assert grid.header.frame_id == 'robot' and (grid.header.stamp.sec, grid.header.stamp.nanosec) == (21, 500)
    assert (grid.info.width, grid.info.height) == (80, 60) and grid.info.resolution == pytest.approx(0.1)
    assert (grid.info.origin.position.x, grid.info.origin.position.y) == (-1.0, -3.0)
    assert grid.info.origin.orientation.w == 1.0
    expected = expected_grid(node, image)
    data = np.array(grid.data, np.int8).reshape(60, 80)
    assert np.array_equal(data, expected.grid)
    assert (data == 0).any() and (data == -1).any()
    assert cloud.header.frame_id == 'robot' and cloud.header.stamp.sec == 21
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z'] and cloud.point_step == 12
    points = np.frombuffer(bytes(cloud.data), '<f4').reshape(-1, 3)
    assert np.allclose(points, expected.obstacles)
    def values():
        return {kv.key: kv.value for kv in node.diagnostic_status().values}
    # the worker counts the costmap after publishing it, so the count may trail the received cloud
    assert h.wait_for(lambda: values()['costmap_published'] == '1')
    assert values()['camera_pose_source'].startswith('parameters')


def test_a_model_whose_classes_the_class_costs_do_not_fit_is_refused(costmap_node, tmp_path):
    from onnx_models import make_tiny_model
    node, _ = costmap_node
    other = make_tiny_model(str(tmp_path / 'three.onnx'), num_classes=3)   # classes c0, c1, c2
    result = node.set_parameters([Parameter('model_path', value=other)])[0]
    assert not result.successful and "model not changed: costmap.class_costs: the model has no class 'floor'" in \
        result.reason, result.reason
    assert node.engine.num_classes == 6
    result = node.set_parameters_atomically([Parameter('model_path', value=other),   # together: checked so
                                             Parameter('costmap.class_costs', value='c0:0, c1:100')])
    assert result.successful, result.reason
    assert node.engine.num_classes == 3


def test_pose_parameters_change_at_run_time(costmap_node):
    node, h = costmap_node
    image = scene_image()
    result = node.set_parameters([Parameter('camera_pose.pitch', value=-0.9)])   # looks at the sky
    assert result[0].successful
    h.send(camera_info(), image)
    assert h.wait_for(lambda: h.grids)
    assert (np.array(h.grids[0].data, np.int8) == -1).all()
    assert not node.set_parameters([Parameter('costmap.size', value=[1.0])])[0].successful
    assert not node.set_parameters([Parameter('costmap.class_costs', value='floor')])[0].successful
    # refused when set, naming the value, instead of failing on every frame afterwards
    for name, value, reason in (('costmap.class_costs', 'unicorn:50', "no class 'unicorn'"),
                                ('costmap.class_costs', 'floor:500', "class cost 'floor:500'.*-1..100"),
                                ('costmap.size', [2000.0, 2000.0], r'\[2000.0, 2000.0\] at costmap.resolution 0.1'),
                                ('costmap.origin', [0.0, float('inf')], r'\[0.0, inf\]'),
                                ('camera_pose.z', -1.0, 'height above the ground.*-1.0'),
                                ('costmap.frame_id', ' ', "no spaces.*' '")):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and re.search(reason, result.reason), (name, result.reason)
    result = node.set_parameters_atomically([Parameter('costmap.size', value=[2000.0, 2000.0]),
                                             Parameter('costmap.resolution', value=0.5)])   # alone refused above
    assert result.successful, result.reason
    result = node.set_parameters([Parameter('costmap.resolution', value=0.1)])[0]   # 20000 cells a side
    assert not result.successful and 'costmap.size [2000.0, 2000.0] at costmap.resolution 0.1' in result.reason


def test_bad_camera_info_is_refused_and_counted(costmap_node):
    node, h = costmap_node
    image = scene_image()
    h.send(camera_info(fx=0.0), image)                       # zero K
    assert h.wait_for(lambda: h.labels), 'the other outputs must still go out'
    h.send(camera_info(width=2 * W, height=2 * H), image, stamp=(22, 0))   # size mismatch
    assert h.wait_for(lambda: len(h.labels) >= 2)
    bad_d = camera_info()
    bad_d.d = [0.1, 0.0, 0.0]                                  # a D that OpenCV's undistortion cannot take
    h.send(bad_d, image, stamp=(23, 0))
    assert h.wait_for(lambda: len(h.labels) >= 3)
    assert h.wait_for(lambda: node.costmap.counters['camera_info_rejected'] == 3)
    assert not h.grids and node.frame_counts()['errors'] == 0
    values = {kv.key: kv.value for kv in node.diagnostic_status().values}
    assert values['costmap_camera_info_rejected'] == '3'


@pytest.mark.parametrize('unknown_on_shift', [True, False])
def test_shift_alarm_withholds_free_cells(tiny_logits_model, tmp_path, unknown_on_shift):
    from onnx_models import with_shift_threshold
    # a threshold below any score: the alarm is up from the first frame
    model = with_shift_threshold(tiny_logits_model, tmp_path / 'alarmed.onnx', -1.0)
    with running_node(model, **{'costmap.unknown_on_shift': unknown_on_shift}) as (node, h):
        image = scene_image()
        h.send(camera_info(), image)
        assert h.wait_for(lambda: h.grids), 'no costmap published'
        data = np.array(h.grids[0].data, np.int8).reshape(60, 80)
        expected = expected_grid(node, image)
        assert node.shift.alarm and (expected.grid == 0).any()
        if unknown_on_shift:
            assert not (data == 0).any() and np.array_equal(data == 100, expected.grid == 100)
        else:
            assert np.array_equal(data, expected.grid)
        values = {kv.key: kv.value for kv in node.diagnostic_status().values}
        assert values['costmap_free_withheld'] == ('1' if unknown_on_shift else '0')
