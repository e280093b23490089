"""The node's costmap outputs: CameraInfo (+ optional depth) in, ``segmentation/costmap`` and
``segmentation/obstacles`` out, built by :class:`seg_perception.runtime.costmap.GroundCostmap`.

Subscribes ``camera_info`` (sensor_msgs/CameraInfo of the image; sensor-data QoS) and, with ``costmap.use_depth``,
``depth`` (sensor_msgs/Image 32FC1 metres or 16UC1 millimetres, aligned with the image). Publishes, with the
image's stamp and ``costmap.frame_id``:

``segmentation/costmap``    nav_msgs/OccupancyGrid (-1 unknown, 0 free, 1..100 cost)
``segmentation/obstacles``  sensor_msgs/PointCloud2 (x, y, z float32) of the obstacles' floor-contact points

The camera pose (image ``header.frame_id`` -> ``costmap.frame_id``) comes from /tf and /tf_static when
``camera_pose.use_tf`` and a transform is known, else from the ``camera_pose.*`` parameters (the camera *body*
frame, x forward, z up, in the robot frame; pitch > 0 looks down). Costmaps are only made while somebody
subscribes to one of the two outputs. A CameraInfo that cannot be used (zero K, a size that does not match the
image, ...) is refused with a throttled error and counted; the frame's other outputs still go out.
"""
import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import FloatingPointRange, IntegerRange
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from .costmap_msgs import occupancy_grid_msg, point_cloud_msg
from .runtime.costmap import (
    OPTICAL_IN_BODY,
    CameraInfoError,
    GridSpec,
    GroundCostmap,
    PinholeCamera,
    class_cost_table,
    parse_class_costs,
    resolve_min_confidence,
)
from .runtime.imgmsg import ImageFormatError, image_to_array
from .runtime.pose import pose_matrix
from .tf_listener import TfPoseSource

if TYPE_CHECKING:
    from .runtime.engine import SegmentationEngine

DEPTH_SYNC_NS = 50_000_000   # a depth image is used for the labels of an image within this of its stamp


def _float_range(lo, hi):
    return [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]


POSE_PARAMETERS = ('x', 'y', 'z', 'roll', 'pitch', 'yaw')
PARAMETERS = {
    # name: (default, description, extra descriptor fields); 'costmap.min_confidence' is declared by node.py
    'costmap.frame_id': ('base_link', 'Frame of the costmap and the obstacle points (the robot frame, z up, its '
                                      'z = 0 plane the ground).', {}),
    'costmap.resolution': (0.05, 'Cell size in metres.', {'floating_point_range': _float_range(0.005, 5.0)}),
    'costmap.size': ([10.0, 10.0], 'Grid size [x, y] in metres.', {}),
    'costmap.origin': ([-5.0, -5.0], 'Corner [x, y] of cell (0, 0) in costmap.frame_id (the default centres a '
                                     '10 m grid on the robot).', {}),
    'costmap.class_costs': ('', "Class costs, 'name:cost, name:cost' (-1 unknown, 0 free, 1-49 ground at a cost, "
                                "50-100 standing obstacles placed at their floor contact); classes not listed: the "
                                "model's metadata table, else the built-in one by name, else unknown.", {}),
    'costmap.max_range': (0.0, 'Ignore ground farther than this from the camera (m); 0 = the whole grid.',
                          {'floating_point_range': _float_range(0.0, 1000.0)}),
    'costmap.overhang_margin': (0.5, 'Floor seen less than this (m) in front of an obstacle contact stays '
                                     'unknown: it may lie under an overhang (table top, vehicle body).',
                                {'floating_point_range': _float_range(0.0, 10.0)}),
    'costmap.pool': (3, 'Image pixels per costmap sample along each side (1 = every pixel; 3 at 640x480 and up; '
                        '2 for smaller images or with costmap.use_depth).',
                     {'integer_range': [IntegerRange(from_value=1, to_value=8, step=1)]}),
    'costmap.fusion_decay': (0.0, 'Blend successive costmaps, each frame weighing decay^age; 0 = off.',
                             {'floating_point_range': _float_range(0.0, 0.99)}),
    'costmap.unknown_on_shift': (True, 'While the domain-shift alarm is raised (the smoothed shift score above '
                                       "the model's threshold) no cell is published free: floor becomes unknown, "
                                       'obstacles stay. Models without shift statistics: no effect.', {}),
    'costmap.rectified': (False, 'The images are rectified: use CameraInfo P and ignore D.', {}),
    'costmap.use_depth': (False, 'Subscribe to depth (aligned to the image) and place pixels in 3-D.',
                          {'read_only': True}),
    'camera_pose.use_tf': (True, 'Camera pose from /tf when a transform from the image frame to '
                                 'costmap.frame_id exists; the camera_pose.* parameters otherwise.', {}),
    'camera_pose.x': (0.0, 'Camera position in costmap.frame_id (m), used without TF.', {}),
    'camera_pose.y': (0.0, 'Camera position in costmap.frame_id (m), used without TF.', {}),
    'camera_pose.z': (0.5, 'Camera height above the ground (m), used without TF.', {}),
    'camera_pose.roll': (0.0, 'Camera body roll (rad), used without TF.', {}),
    'camera_pose.pitch': (0.0, 'Camera body pitch (rad, > 0 looks down), used without TF.', {}),
    'camera_pose.yaw': (0.0, 'Camera body yaw (rad), used without TF.', {}),
}


def check_value(name: str, value: Any) -> str | None:
    """Reason a costmap parameter value is refused (naming it), or None."""
    if name in ('costmap.size', 'costmap.origin'):
        if len(value) != 2 or not all(math.isfinite(v) for v in value):
            return f'{name} must be two finite numbers [x, y], got {list(value)}'
    if name == 'costmap.class_costs':
        try:
            parse_class_costs(value)
        except ValueError as exc:
            return str(exc)
    if name == 'costmap.frame_id' and (not value.strip('/') or any(c.isspace() for c in value)):
        return f'costmap.frame_id must name a frame (no spaces), got {value!r}'
    if name.startswith('camera_pose.') and name != 'camera_pose.use_tf' and not math.isfinite(value):
        return f'{name} must be finite, got {value}'
    if name == 'camera_pose.z' and value <= 0:
        return f'camera_pose.z is the camera\'s height above the ground and must be > 0, got {value}'
    return None


def check_grid(size: Any, resolution: float, origin: Any) -> str | None:
    """Reason the grid these three parameters make together is refused, or None."""
    try:
        GridSpec.from_size(size[0], size[1], resolution, origin)
    except ValueError as exc:
        return f'costmap.size {list(size)} at costmap.resolution {resolution}: {exc}'
    return None


class CostmapOutput:
    """Costmap publishers and subscriptions of one node; made in the node's ``_create_io``.

    ``output(msg_type, topic, qos)`` makes a publisher and ``register(entity)`` records a subscription, so the
    node's ``_destroy_io`` removes them. Thread use: ``process`` runs on the inference worker, the callbacks and
    ``parameters_changed`` on the executor."""

    def __init__(self, node, output, register, qos):
        self.node = node
        self.pub_grid = output(OccupancyGrid, 'segmentation/costmap', qos)
        self.pub_points = output(PointCloud2, 'segmentation/obstacles', qos)
        # inputs, like the node's own, with overridable QoS (qos_overrides.<topic>.subscription.*)
        register(node._overridable(node.create_subscription, CameraInfo, 'camera_info', qos_profile_sensor_data,
                                   self._on_info))
        self.use_depth = node.get_parameter('costmap.use_depth').value
        if self.use_depth:
            register(node._overridable(node.create_subscription, Image, 'depth', qos_profile_sensor_data,
                                       self._on_depth))
        self.tf = TfPoseSource(node, register=register)
        self.counters = dict.fromkeys(('published', 'no_camera_info', 'camera_info_rejected', 'depth_missing',
                                       'depth_rejected', 'config_errors', 'free_withheld'), 0)
        self._lock = threading.Lock()
        self._info = None
        self._depth = None
        self._changed = {}
        self._costmap = None
        self._engine = None
        self._camera, self._camera_key = None, None
        self.pose_source = ''

    # ------------------------------------------------------------------ inputs (executor thread)
    def _on_info(self, msg):
        self._info = msg

    def _on_depth(self, msg):
        self._depth = msg

    def parameters_changed(self, params: list[Parameter]) -> None:
        """Accepted parameter changes: the next frame rebuilds the costmap from these values."""
        with self._lock:
            self._changed.update({p.name: p.value for p in params
                                  if p.name.startswith(('costmap.', 'camera_pose.'))})

    def wanted(self) -> bool:
        return self.pub_grid.get_subscription_count() > 0 or self.pub_points.get_subscription_count() > 0

    # ------------------------------------------------------------------ per frame (worker thread)
    def _param(self, name):
        return self._changed[name] if name in self._changed else self.node.get_parameter(name).value

    def _log(self, kind, text, error=False):
        self.node._log_throttled(f'costmap_{kind}', text, error)

    def _build(self, engine):
        """A GroundCostmap from the parameters (and the model's metadata)."""
        with self._lock:
            size, origin = self._param('costmap.size'), self._param('costmap.origin')
            grid = GridSpec.from_size(size[0], size[1], self._param('costmap.resolution'), origin)
            costs = class_cost_table(engine.names, parse_class_costs(self._param('costmap.class_costs')),
                                     engine.meta.get('class_costs'))
            min_conf = resolve_min_confidence(self._param('costmap.min_confidence'), engine.meta)
            options = dict(max_range=self._param('costmap.max_range'),
                           overhang_margin=self._param('costmap.overhang_margin'), pool=self._param('costmap.pool'),
                           fusion_decay=self._param('costmap.fusion_decay'))
            self._changed = {}
        return GroundCostmap(grid, costs, min_confidence=min_conf, **options)

    def _fallback_pose(self):
        values = [self._param(f'camera_pose.{k}') for k in POSE_PARAMETERS]
        return pose_matrix(*values) @ OPTICAL_IN_BODY

    def process(self, engine: 'SegmentationEngine', header: Header, labels: np.ndarray, confidence: np.ndarray,
                shifted: bool = False) -> bool:
        """Make and publish the costmap of one segmented frame; False (counted, logged) when it cannot.
        ``shifted``: the domain-shift alarm is raised (with ``costmap.unknown_on_shift``: no free cells)."""
        info = self._info
        if info is None:
            self.counters['no_camera_info'] += 1
            topic = self.node.resolve_topic_name('camera_info')
            self._log('no_camera_info', f'no CameraInfo on {topic} yet: no costmap')
            return False
        if self._costmap is None or self._changed or engine is not self._engine:
            try:
                self._costmap, self._engine = self._build(engine), engine
            except ValueError as exc:
                self.counters['config_errors'] += 1
                self._log('settings', f'costmap settings refused: {exc}', error=True)
                return False
        key = (id(info), labels.shape[:2], self._param('costmap.rectified'))
        if key != self._camera_key:              # a new CameraInfo message, image size or setting
            try:
                self._camera = PinholeCamera.from_msg(info, labels.shape[:2], key[2])
            except CameraInfoError as exc:
                self._camera = None
                self._log('camera_info', f'CameraInfo refused: {exc}; no costmap', error=True)
            self._camera_key = key
        if self._camera is None:
            self.counters['camera_info_rejected'] += 1
            return False
        camera = self._camera
        frame_id = self._param('costmap.frame_id')
        fallback = self._fallback_pose()
        if self._param('camera_pose.use_tf'):
            pose, _ = self.tf.camera_pose(header.frame_id, frame_id, fallback)
            self.pose_source = self.tf.last_source
        else:
            pose, self.pose_source = fallback, 'parameters (camera_pose.use_tf is false)'
        try:
            self._costmap.set_camera(camera, pose)
        except ValueError as exc:   # a pose from /tf that is not a finite transform
            self.counters['config_errors'] += 1
            self._log('pose', f'camera pose refused: {exc}; no costmap', error=True)
            return False
        withhold = shifted and self._param('costmap.unknown_on_shift')
        self.counters['free_withheld'] += int(withhold)
        result = self._costmap.update(labels, confidence, self._depth_for(header, labels.shape[:2]),
                                      trust_free=not withhold)
        out_header = Header(stamp=header.stamp, frame_id=frame_id)
        self.pub_grid.publish(occupancy_grid_msg(result.grid, self._costmap.grid, out_header))
        self.pub_points.publish(point_cloud_msg(result.obstacles, out_header))
        self.counters['published'] += 1
        return True

    def _depth_for(self, header, shape):
        if not self.use_depth:
            return None
        msg = self._depth
        stamp = header.stamp.sec * 10**9 + header.stamp.nanosec
        if msg is None or abs(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec - stamp) > DEPTH_SYNC_NS:
            self.counters['depth_missing'] += 1
            self._log('depth_missing', 'no depth image within 50 ms of the image: costmap from the ground plane')
            return None
        try:
            depth = image_to_array(msg)
            if msg.encoding not in ('32FC1', '16UC1', 'mono16') or depth.shape[:2] != shape:
                raise ImageFormatError(f'depth must be 32FC1 (m) or 16UC1 (mm) of {shape[1]}x{shape[0]}, got '
                                       f'{msg.encoding} {msg.width}x{msg.height}')
        except (ImageFormatError, ValueError) as exc:
            self.counters['depth_rejected'] += 1
            self._log('depth', f'depth image refused: {exc}')
            return None
        return depth.astype(np.float32) / 1000.0 if depth.dtype == np.uint16 else depth

    def diagnostics(self) -> dict:
        values = {f'costmap_{k}': str(v) for k, v in self.counters.items()}
        values['camera_pose_source'] = self.pose_source or 'none yet'
        if self._costmap is not None:
            values['costmap_min_confidence'] = f'{self._costmap.min_confidence:.3f}'
        return values
