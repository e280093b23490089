"""Message conversion for the costmap (the ROS edge of ``runtime/costmap.py``): OccupancyGrid and PointCloud2 out
(CameraInfo in: ``PinholeCamera.from_msg``). Byte buffers are assigned as ``bytes`` (fast), never element by element."""
import numpy as np
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from .runtime.costmap import GridSpec

POINT_FIELDS = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                for i, name in enumerate('xyz')]


def occupancy_grid_msg(grid: np.ndarray, spec: GridSpec, header: Header) -> OccupancyGrid:
    """nav_msgs/OccupancyGrid of an int8 (height, width) grid; the map's origin is cell (0, 0)'s corner."""
    msg = OccupancyGrid(header=header)
    msg.info.map_load_time = header.stamp
    msg.info.resolution = float(spec.resolution)
    msg.info.width, msg.info.height = int(spec.width), int(spec.height)
    msg.info.origin.position.x, msg.info.origin.position.y = float(spec.origin_x), float(spec.origin_y)
    msg.info.origin.orientation.w = 1.0
    msg.data = np.ascontiguousarray(grid, np.int8).tobytes()
    return msg


def point_cloud_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """sensor_msgs/PointCloud2 of (N, 3) points: fields x, y, z float32, little endian, unorganised, dense."""
    points = np.ascontiguousarray(points, '<f4').reshape(-1, 3)
    return PointCloud2(header=header, height=1, width=len(points), fields=POINT_FIELDS, is_bigendian=False,
                       point_step=12, row_step=12 * len(points), data=points.tobytes(), is_dense=True)
