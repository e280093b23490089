"""Camera pose from TF: the pure pose math (runtime/pose.py) and the listener (tf_listener.py) over real rclpy.

The tf2_msgs listener needs tf2_msgs (no PyPI wheel): those tests run where it is installed (the ros2cli venv
built by shared/ros2cli/make_env.sh, a ROS install) and are skipped, with the reason, elsewhere.
"""
import json
import math
import os
import threading
import time

import numpy as np
import pytest

from seg_perception.runtime.pose import (
    FrameTree,
    compose,
    invert,
    pose_matrix,
    quat_to_matrix,
    rpy_to_matrix,
    transform_matrix,
)

# camera_link -> camera_optical_frame (REP 103: optical z forward, x right, y down), as robot URDFs write it
OPTICAL_Q = (-0.5, 0.5, -0.5, 0.5)


def _quat_mul(a, b):
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz)


def _quat_from_rpy(roll, pitch, yaw):
    """Independent construction: q = qz(yaw) * qy(pitch) * qx(roll), each an axis-angle quaternion."""
    qx = (math.sin(roll / 2), 0.0, 0.0, math.cos(roll / 2))
    qy = (0.0, math.sin(pitch / 2), 0.0, math.cos(pitch / 2))
    qz = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    return _quat_mul(qz, _quat_mul(qy, qx))


def _apply(t, p):
    return (t @ np.append(np.asarray(p, float), 1.0))[:3]


def test_quaternion_and_rpy_agree_and_are_rotations():
    rng = np.random.default_rng(0)
    for roll, pitch, yaw in rng.uniform(-math.pi, math.pi, (50, 3)):
        r = quat_to_matrix(*_quat_from_rpy(roll, pitch, yaw))
        np.testing.assert_allclose(r, rpy_to_matrix(roll, pitch, yaw), atol=1e-12)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


def test_known_rotations():
    np.testing.assert_allclose(quat_to_matrix(0, 0, 0, 1), np.eye(3))
    # yaw +90 deg: x -> y; pitch +90 deg: x -> -z (nose down); roll +90 deg: y -> z
    np.testing.assert_allclose(rpy_to_matrix(0, 0, math.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rpy_to_matrix(0, math.pi / 2, 0) @ [1, 0, 0], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(rpy_to_matrix(math.pi / 2, 0, 0) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    # a quaternion that is not unit length is normalised (tf2 does the same)
    np.testing.assert_allclose(quat_to_matrix(0, 0, 2, 2), rpy_to_matrix(0, 0, math.pi / 2), atol=1e-12)
    # the optical frame: looking along the optical z axis is looking along the body's x axis
    np.testing.assert_allclose(quat_to_matrix(*OPTICAL_Q) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix(*OPTICAL_Q) @ [0, 1, 0], [0, 0, -1], atol=1e-12)


@pytest.mark.parametrize('bad', [(0, 0, 0, 0), (float('nan'), 0, 0, 1), (float('inf'), 0, 0, 1)])
def test_bad_quaternion_is_refused(bad):
    with pytest.raises(ValueError, match='not a rotation quaternion'):
        quat_to_matrix(*bad)


def test_inverse_and_composition():
    a = pose_matrix(1.0, -2.0, 0.5, 0.1, -0.3, 2.0)
    b = transform_matrix((0.2, 0.0, 0.1), quat_to_matrix(*OPTICAL_Q))
    np.testing.assert_allclose(a @ invert(a), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(invert(a), np.linalg.inv(a), atol=1e-12)
    np.testing.assert_allclose(compose([a, b]), a @ b)
    np.testing.assert_allclose(compose([]), np.eye(4))


def _robot_tree(height=1.0, x=0.2, pitch=0.0):
    """base_link -> camera_link (x forward, height up, pitched down by ``pitch``) -> camera_optical_frame."""
    tree = FrameTree()
    tree.set('base_link', 'camera_link', pose_matrix(x, 0.0, height, 0.0, pitch, 0.0))
    tree.set('camera_link', 'camera_optical_frame', transform_matrix((0, 0, 0), quat_to_matrix(*OPTICAL_Q)))
    return tree


def test_frame_tree_chains_a_point_from_the_optical_frame_to_the_robot():
    tree = _robot_tree(height=1.0, x=0.2)
    t = tree.lookup('base_link', 'camera_optical_frame')
    # 2 m straight ahead of a level camera 1 m up, 0.2 m forward: (2.2, 0, 1) in base_link
    np.testing.assert_allclose(_apply(t, [0, 0, 2]), [2.2, 0.0, 1.0], atol=1e-12)
    # 1 m to the image's right (optical +x) is the robot's -y
    np.testing.assert_allclose(_apply(t, [1, 0, 2]), [2.2, -1.0, 1.0], atol=1e-12)
    # pitched down 45 deg: the optical axis meets the floor 1 m ahead of the camera
    t45 = _robot_tree(height=1.0, x=0.0, pitch=math.pi / 4).lookup('base_link', 'camera_optical_frame')
    np.testing.assert_allclose(_apply(t45, [0, 0, math.sqrt(2)]), [1.0, 0.0, 0.0], atol=1e-12)
    # the reverse lookup is the inverse; a frame to itself is the identity
    np.testing.assert_allclose(tree.lookup('camera_optical_frame', 'base_link'), invert(t), atol=1e-12)
    np.testing.assert_allclose(tree.lookup('camera_link', 'camera_link'), np.eye(4))


def test_frame_tree_siblings_missing_frames_changes_and_cycles():
    tree = _robot_tree()
    tree.set('odom', 'base_link', pose_matrix(5.0, 0, 0, 0, 0, 0))
    tree.set('base_link', 'lidar', pose_matrix(0, 0, 0.5, 0, 0, 0))
    # siblings meet at their common ancestor: lidar -> base_link -> camera_link
    np.testing.assert_allclose(_apply(tree.lookup('camera_link', 'lidar'), [0, 0, 0]), [-0.2, 0, -0.5], atol=1e-12)
    np.testing.assert_allclose(_apply(tree.lookup('odom', 'camera_link'), [0, 0, 0]), [5.2, 0, 1.0], atol=1e-12)
    assert tree.lookup('base_link', 'rear_camera') is None           # never received
    assert tree.lookup('base_link', '') is None
    tree.set('map', 'elsewhere', np.eye(4))
    assert tree.lookup('base_link', 'elsewhere') is None              # two trees, not connected
    # a newer transform of an edge replaces the old one: the camera moved up by 0.5 m
    tree.set('base_link', 'camera_link', pose_matrix(0.2, 0.0, 1.5, 0, 0, 0))
    np.testing.assert_allclose(_apply(tree.lookup('base_link', 'camera_optical_frame'), [0, 0, 2]), [2.2, 0, 1.5],
                               atol=1e-12)
    # leading slashes (ROS 1 style) name the same frame; a loop does not hang
    np.testing.assert_allclose(tree.lookup('/base_link', 'camera_link'), tree.lookup('base_link', 'camera_link'))
    tree.set('a', 'b', np.eye(4))
    tree.set('b', 'a', np.eye(4))
    assert tree.lookup('a', 'camera_link') is None
    assert {'base_link', 'camera_link', 'camera_optical_frame', 'odom', 'lidar'} <= tree.frames()
    with pytest.raises(ValueError, match='two different frame names'):
        tree.set('base_link', 'base_link', np.eye(4))


def test_frame_tree_is_thread_safe():
    tree = _robot_tree()
    errors = []

    def writer():
        for i in range(2000):
            tree.set('base_link', 'camera_link', pose_matrix(0.2, 0, 1.0 + (i % 2), 0, 0, 0))

    def reader():
        for _ in range(2000):
            z = _apply(tree.lookup('base_link', 'camera_optical_frame'), [0, 0, 0])[2]
            if z not in (1.0, 2.0):
                errors.append(z)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------------------------------- over rclpy
rclpy = pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')
from seg_perception.tf_listener import TF_STATIC_QOS, TfPoseSource  # noqa: E402


@pytest.fixture
def ctx():
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def test_without_tf_support_the_parameters_are_used(ctx):
    node = rclpy.create_node('tf_none', context=ctx)
    try:
        source = TfPoseSource(node, backend='none')
        fallback = pose_matrix(0.1, 0, 0.8, 0, 0.3, 0)
        assert source.lookup('camera_optical_frame', 'base_link') is None
        pose, from_tf = source.camera_pose('camera_optical_frame', 'base_link', fallback)
        assert pose is fallback and not from_tf
        assert source.last_source == 'parameters (no TF support installed)'
        with pytest.raises(ValueError, match="TF backend must be"):
            TfPoseSource(node, backend='tf3')
    finally:
        node.destroy_node()


def _transform_stamped(parent, child, xyz, q=(0.0, 0.0, 0.0, 1.0)):
    from geometry_msgs.msg import TransformStamped
    ts = TransformStamped()
    ts.header.frame_id, ts.child_frame_id = parent, child
    ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = xyz
    (ts.transform.rotation.x, ts.transform.rotation.y, ts.transform.rotation.z,
     ts.transform.rotation.w) = q
    return ts


def _spin_until(executor, predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def _camera_height(source):
    t = source.lookup('camera_optical_frame', 'base_link')
    return None if t is None else t[2, 3]


def test_tf2_msgs_listener_over_dds(ctx):
    """/tf_static published before the listener exists (latched) plus a /tf edge that changes at run time."""
    tf2_msgs = pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs not installed (no PyPI wheel; it is in the '
                                   'ros2cli venv of shared/ros2cli/make_env.sh and in ROS installs)')
    from rclpy.executors import SingleThreadedExecutor
    pub_node = rclpy.create_node('tf_pub', context=ctx)
    node = rclpy.create_node('tf_listen', context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    try:
        static_pub = pub_node.create_publisher(tf2_msgs.TFMessage, '/tf_static', TF_STATIC_QOS)
        tf_pub = pub_node.create_publisher(tf2_msgs.TFMessage, '/tf', 10)
        static_pub.publish(tf2_msgs.TFMessage(transforms=[
            _transform_stamped('camera_link', 'camera_optical_frame', (0, 0, 0), OPTICAL_Q)]))
        registered = []
        source = TfPoseSource(node, register=registered.append, backend='tf2_msgs')
        assert len(registered) == 2 and {s.topic_name for s in registered} == {'/tf', '/tf_static'}
        executor.add_node(pub_node)
        executor.add_node(node)
        fallback = np.eye(4)
        pose, from_tf = source.camera_pose('camera_optical_frame', 'base_link', fallback)
        assert not from_tf and 'no transform camera_optical_frame -> base_link' in source.last_source
        assert _spin_until(executor, lambda: 'camera_optical_frame' in source._tree.frames()), 'no /tf_static'
        for z in (1.0, 1.5):   # the camera moves up at run time: the pose follows
            tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform_stamped('base_link', 'camera_link',
                                                                              (0.2, 0.0, z))]))
            assert _spin_until(executor, lambda height=z: _camera_height(source) == pytest.approx(height))
            pose, from_tf = source.camera_pose('camera_optical_frame', 'base_link', fallback)
            assert from_tf and source.last_source.startswith('tf (tf2_msgs)')
            np.testing.assert_allclose(_apply(pose, [0, 0, 2]), [2.2, 0, z], atol=1e-6)
        # a broken transform (zero quaternion) is counted and ignored, the good one kept
        tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform_stamped('base_link', 'camera_link', (0, 0, 9),
                                                                          (0.0, 0.0, 0.0, 0.0))]))
        assert _spin_until(executor, lambda: source.rejected == 1)
        assert source.lookup('camera_optical_frame', 'base_link')[2, 3] == pytest.approx(1.5)
    finally:
        executor.shutdown()
        node.destroy_node()
        pub_node.destroy_node()


# ------------------------------------------------------- the node's costmap follows /tf_static and /tf (ros2 CLI)
FLOOR_RGB = (96, 224, 224)    # what the tiny test model labels floor (confidence 0.81, above the 0.5 default)
W, H, F = 160, 120, 100.0     # camera: 160x120, fx = fy = 100 px, principal point in the centre


def _tf_yaml(parent, child, xyz, q):
    """A tf2_msgs/TFMessage as `ros2 topic pub` reads it (YAML; JSON is YAML)."""
    return json.dumps({'transforms': [{
        'header': {'frame_id': parent}, 'child_frame_id': child,
        'transform': {'translation': dict(zip('xyz', map(float, xyz))), 'rotation': dict(zip('xyzw', map(float, q)))},
    }]})


def _nearest_ground(x_cam, height, pitch):
    """x of the nearest floor the image sees: the bottom pixel row's ray from a camera pitched down by ``pitch``."""
    return x_cam + height / math.tan(pitch + math.atan((H - 0.5 - H / 2) / F))


@pytest.mark.timeout(1200)   # the first run builds the cached ros2cli venv
def test_ros2cli_tf_static_and_tf_move_the_costmap(ros2cli_venv, tiny_model):
    """The node (ros2cli venv: tf2_msgs) takes the camera pose from a /tf_static optical-frame link plus a /tf
    mount link published with `ros2 topic pub`; moving the mount 1 m forward moves the seen floor 1 m forward."""
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import OccupancyGrid
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from ros2cli_env import Ros2
    from sensor_msgs.msg import CameraInfo, Image

    from seg_perception.node import OUTPUT_QOS
    from seg_perception.runtime.imgmsg import array_to_image_fields

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ros2 = Ros2(ros2cli_venv, PYTHONPATH=root)
    node = ros2.start(os.path.join(ros2cli_venv, 'bin', 'python'), '-m', 'seg_perception.node', '--ros-args',
                      '-p', f'model_path:={tiny_model}', '-p', 'costmap.max_range:=4.0', '-p',
                      'diagnostics_period:=0.2', '-r', '__ns:=/tf_test', cwd=root)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    peer = rclpy.create_node('tf_test_peer', context=ctx)
    grids, diags = [], []
    peer.create_subscription(OccupancyGrid, '/tf_test/segmentation/costmap', grids.append, OUTPUT_QOS)
    peer.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    image_pub = peer.create_publisher(Image, '/tf_test/image', qos_profile_sensor_data)
    info_pub = peer.create_publisher(CameraInfo, '/tf_test/camera_info', qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(peer)
    image = Image(**array_to_image_fields(np.full((H, W, 3), FLOOR_RGB, np.uint8), 'rgb8'))
    image.header.frame_id = 'camera_optical_frame'
    info = CameraInfo(width=W, height=H, distortion_model='plumb_bob', d=[0.0] * 5,
                      k=[F, 0.0, W / 2, 0.0, F, H / 2, 0.0, 0.0, 1.0],
                      p=[F, 0.0, W / 2, 0.0, 0.0, F, H / 2, 0.0, 0.0, 0.0, 1.0, 0.0])
    info.header.frame_id = 'camera_optical_frame'

    def pose_source():
        for m in reversed(diags):
            for s in m.status:
                values = {kv.key: kv.value for kv in s.values}
                if 'camera_pose_source' in values:
                    return values['camera_pose_source']
        return ''

    def nearest_free_x():
        """x (m) of the centre of the nearest free cell of the newest costmap, or None."""
        if not grids:
            return None
        g = grids[-1]
        cells = np.array(g.data, np.int8).reshape(g.info.height, g.info.width)
        cols = np.nonzero((cells == 0).any(axis=0))[0]
        return None if cols.size == 0 else g.info.origin.position.x + (cols[0] + 0.5) * g.info.resolution

    def feed_until(done, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not done():
            info_pub.publish(info)
            image_pub.publish(image)
            for _ in range(4):
                executor.spin_once(timeout_sec=0.05)
        return done()

    def pub(topic, parent, child, xyz, q):
        # a few times, not --once: a single message can be gone before the node's subscription has matched
        args = ['ros2', 'topic', 'pub', '--times', '5', '--rate', '10', topic, 'tf2_msgs/msg/TFMessage',
                _tf_yaml(parent, child, xyz, q)]
        if topic == '/tf_static':
            args[7:7] = ['--qos-durability', 'transient_local', '--qos-reliability', 'reliable']
        ros2.run(*args, timeout=90)

    try:
        # no transform yet: the pose parameters (camera 0.5 m up, level) and diagnostics saying so
        assert feed_until(lambda: pose_source().startswith('parameters (no transform camera_optical_frame -> '
                                                           'base_link')), pose_source()
        assert feed_until(lambda: nearest_free_x() is not None, 10), \
            (len(grids), grids and np.unique(np.array(grids[-1].data), return_counts=True))
        assert nearest_free_x() == pytest.approx(_nearest_ground(0.0, 0.5, 0.0), abs=0.06)
        # the optical frame's fixed link (latched) and the mount: 1 m up, pitched 30 degrees down
        pub('/tf_static', 'camera_link', 'camera_optical_frame', (0, 0, 0), OPTICAL_Q)
        pitch = math.radians(30)
        mount_q = _quat_from_rpy(0.0, pitch, 0.0)
        for x in (0.0, 1.0):   # the mount moves 1 m forward at run time: the seen floor follows
            pub('/tf', 'base_link', 'camera_link', (x, 0.0, 1.0), mount_q)
            expected = _nearest_ground(x, 1.0, pitch)
            assert feed_until(lambda e=expected: nearest_free_x() is not None
                              and abs(nearest_free_x() - e) < 0.06), (nearest_free_x(), expected)
            assert feed_until(lambda: pose_source() == 'tf (tf2_msgs): camera_optical_frame -> base_link', 10), \
                pose_source()
            g = grids[-1]
            assert (g.header.frame_id, g.info.origin.position.x, g.info.origin.position.y) == ('base_link', -5.0,
                                                                                                 -5.0)
    finally:
        executor.shutdown()
        peer.destroy_node()
        rclpy.shutdown(context=ctx)
        out = ros2.reap(node)
    assert 'Traceback' not in out, out
    # the missing transform was a warning naming both frames (throttled: not one per frame)
    warned = out.count("no transform from 'camera_optical_frame' to 'base_link' on /tf or /tf_static yet")
    assert 1 <= warned <= 3, out
