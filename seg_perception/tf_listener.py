"""The camera's pose in the robot frame from /tf and /tf_static, with the pose parameters as the fallback.

Backends, best first:
  ``tf2_ros``   tf2_ros.Buffer + TransformListener, where a ROS install provides them (C++ inside: no PyPI wheel);
  ``tf2_msgs``  a small listener of ours: tf2_msgs/TFMessage on /tf and /tf_static into a
                ``runtime.pose.FrameTree`` (newest transform per edge, chains composed with numpy);
  ``none``      neither importable: the pose always comes from the parameters (said once in the log and in
                diagnostics).
``lookup`` never raises for a missing or broken transform; ``camera_pose`` falls back to the caller's pose and
warns, throttled, naming the frames.
"""
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from .runtime.pose import FrameTree, quat_to_matrix, transform_matrix

try:  # a ROS install (Humble, Jazzy, Kilted from apt): the real tf2 buffer
    import tf2_ros
except ImportError:
    tf2_ros = None
try:  # the messages alone (a ros2cli venv built by make_env.sh, or a ROS install)
    from tf2_msgs.msg import TFMessage
except ImportError:
    TFMessage = None

# tf2_ros's own listener profiles (DynamicListenerQoS, StaticListenerQoS).
TF_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


def transform_to_matrix(transform: Any) -> np.ndarray:
    """4x4 of a geometry_msgs/Transform (translation + rotation quaternion; any object with those fields)."""
    t, q = transform.translation, transform.rotation
    return transform_matrix((t.x, t.y, t.z), quat_to_matrix(q.x, q.y, q.z, q.w))


class TfPoseSource:
    """Transforms between frames as /tf and /tf_static publish them.

    ``register`` receives every subscription this object creates (the node's ``_io`` so ``_destroy_io`` removes
    them); ``backend`` says which implementation runs; ``rejected`` counts transforms that could not be used."""

    def __init__(self, node: Node, register: Callable = lambda entity: entity, backend: str | None = None):
        self._node = node
        self.rejected = 0
        self.last_source = ''
        if backend is None:
            backend = 'tf2_ros' if tf2_ros is not None else 'tf2_msgs' if TFMessage is not None else 'none'
        self.backend = backend
        if backend == 'tf2_ros':
            self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, node)
            for name in ('tf_sub', 'tf_static_sub'):  # its subscriptions, so a lifecycle deactivate removes them
                if getattr(self._listener, name, None) is not None:
                    register(getattr(self._listener, name))
        elif backend == 'tf2_msgs':
            self._tree = FrameTree()
            register(node.create_subscription(TFMessage, '/tf', self._on_tf, TF_QOS))
            register(node.create_subscription(TFMessage, '/tf_static', self._on_tf, TF_STATIC_QOS))
        elif backend == 'none':
            node.get_logger().info('neither tf2_ros nor tf2_msgs is installed: the camera pose comes from the '
                                   'pose parameters, not from /tf')
        else:
            raise ValueError(f"TF backend must be 'tf2_ros', 'tf2_msgs' or 'none', got {backend!r}")

    def _on_tf(self, msg) -> None:
        for ts in msg.transforms:
            try:
                self._tree.set(ts.header.frame_id, ts.child_frame_id, transform_to_matrix(ts.transform))
            except ValueError as exc:
                self.rejected += 1
                self._node.get_logger().warning(f'transform ignored: {exc}', throttle_duration_sec=5.0)

    def lookup(self, camera_frame: str, robot_frame: str) -> np.ndarray | None:
        """4x4 mapping points in ``camera_frame`` to ``robot_frame`` (the camera's pose in the robot frame), from
        the newest transforms received; None when the frames are not (yet) connected."""
        if not camera_frame or not robot_frame:
            return None
        if self.backend == 'tf2_msgs':
            return self._tree.lookup(robot_frame, camera_frame)
        if self.backend == 'tf2_ros':
            try:
                ts = self._buffer.lookup_transform(robot_frame, camera_frame, Time())
            except tf2_ros.TransformException:
                return None
            return transform_to_matrix(ts.transform)
        return None

    def camera_pose(self, camera_frame: str, robot_frame: str, fallback: np.ndarray,
                    throttle_sec: float = 5.0) -> tuple[np.ndarray, bool]:
        """(pose, from_tf): the transform from TF, else ``fallback`` (the pose parameters) with a throttled
        warning naming what is missing. ``last_source`` keeps a one-line account for diagnostics."""
        pose = self.lookup(camera_frame, robot_frame)
        if pose is not None:
            self.last_source = f'tf ({self.backend}): {camera_frame} -> {robot_frame}'
            return pose, True
        if self.backend == 'none':
            self.last_source = 'parameters (no TF support installed)'
        elif not camera_frame:
            self.last_source = 'parameters (images carry no header.frame_id)'
            self._node.get_logger().warning('images carry no header.frame_id: camera pose from the parameters',
                                            throttle_duration_sec=throttle_sec)
        else:
            self.last_source = f'parameters (no transform {camera_frame} -> {robot_frame} on /tf, /tf_static)'
            self._node.get_logger().warning(
                f'no transform from {camera_frame!r} to {robot_frame!r} on /tf or /tf_static yet: camera pose from '
                'the pose parameters', throttle_duration_sec=throttle_sec)
        return fallback, False
