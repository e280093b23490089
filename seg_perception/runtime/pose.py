"""Rigid transforms as 4x4 numpy matrices, and a tree of frames (the part of tf2 the robot side needs).

Conventions are ROS's (REP 103): quaternions are (x, y, z, w); roll, pitch, yaw rotate about the fixed x, y, z
axes in that order, so R = Rz(yaw) @ Ry(pitch) @ Rx(roll). A transform from a parent frame to a child frame (what
a geometry_msgs/TransformStamped with header.frame_id = parent and child_frame_id = child carries) is the matrix
that maps a point given in the child frame to the parent frame: p_parent = T @ p_child.
"""
import threading
from collections.abc import Sequence

import numpy as np


def quat_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation of a quaternion (normalised here; a zero quaternion is a ValueError)."""
    q = np.array([x, y, z, w], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f'not a rotation quaternion: (x, y, z, w) = {tuple(q)}')
    x, y, z, w = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """3x3 rotation Rz(yaw) @ Ry(pitch) @ Rx(roll) (fixed axes x, y, z, as tf2's setRPY)."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def transform_matrix(translation: Sequence[float], rotation: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a translation (3,) and a 3x3 rotation."""
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = np.asarray(translation, dtype=np.float64)
    return t


def pose_matrix(x: float, y: float, z: float, roll: float, pitch: float, yaw: float) -> np.ndarray:
    """4x4 transform of a pose given as position and roll/pitch/yaw (radians)."""
    return transform_matrix((x, y, z), rpy_to_matrix(roll, pitch, yaw))


def invert(t: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (transpose of the rotation, no general matrix inverse)."""
    inv = np.eye(4)
    inv[:3, :3] = t[:3, :3].T
    inv[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return inv


def compose(transforms: Sequence[np.ndarray]) -> np.ndarray:
    """T0 @ T1 @ ... : a chain parent->...->child of parent-to-child transforms, composed into one."""
    out = np.eye(4)
    for t in transforms:
        out = out @ t
    return out


class FrameTree:
    """The newest transform of every (parent, child) edge, as /tf and /tf_static deliver them; thread-safe.

    A frame has one parent (a later transform naming another parent for the same child replaces the edge, as in
    tf2). No time interpolation: ``lookup`` uses the newest transform of each edge, like tf2's lookup at time 0."""

    def __init__(self):
        self._lock = threading.Lock()
        self._edges = {}  # child -> (parent, 4x4 parent<-child)

    def set(self, parent: str, child: str, transform: np.ndarray) -> None:
        parent, child = parent.lstrip('/'), child.lstrip('/')
        if not parent or not child or parent == child:
            raise ValueError(f'a transform needs two different frame names, got {parent!r} -> {child!r}')
        with self._lock:
            self._edges[child] = (parent, np.array(transform, dtype=np.float64))

    def frames(self) -> set:
        with self._lock:
            return set(self._edges) | {p for p, _ in self._edges.values()}

    def _to_root(self, frame):
        """[(frame, T root-ish<-frame accumulated)] from ``frame`` up to its root (cycle-safe)."""
        path, acc, seen = [(frame, np.eye(4))], np.eye(4), {frame}
        while frame in self._edges:
            parent, t = self._edges[frame]
            if parent in seen:
                break
            acc = t @ acc
            path.append((parent, acc))
            seen.add(parent)
            frame = parent
        return path

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """4x4 mapping points in ``source`` to ``target`` (tf2's lookup_transform(target, source)); None when the
        two frames are not connected by the transforms received so far."""
        target, source = target.lstrip('/'), source.lstrip('/')
        if target == source:
            return np.eye(4) if target else None
        with self._lock:
            up_source = dict(self._to_root(source))      # ancestor -> T ancestor<-source
            for ancestor, t_anc_target in self._to_root(target):
                if ancestor in up_source:
                    return invert(t_anc_target) @ up_source[ancestor]
        return None
