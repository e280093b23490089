"""rosbag2 reading and writing with the ``rosbags`` library (no ROS installation, no torch).

Writing: :func:`write_bag` turns frames (dicts as yielded by :func:`seg_perception.offline.data.render.render_frames`)
into a rosbag2 directory (mcap, zstd chunk compression by default, or sqlite3) with the topics listed in
``TOPICS``; every message of a frame carries the frame's stamp (10 Hz by default) in its header.

Reading (mcap and sqlite3 alike):

* :func:`iter_bag_images` yields ``(stamp_ns, frame_id, image)`` of one topic: ``sensor_msgs/msg/Image``
  (rgb8, bgr8, rgba8, bgra8, yuv422, yuv422_yuy2, bayer_*8 -> HxWx3 RGB; mono8/8UC1, mono16/16UC1, 32FC1 -> HxW;
  rows padded beyond ``width * pixel size`` (``step``) and big-endian data are handled) or
  ``sensor_msgs/msg/CompressedImage``
  (jpeg/png via ``cv2.imdecode``; colour -> RGB, single channel -> HxW).
* :func:`iter_bag_pairs` yields ``(stamp_ns, image, label)``, pairing each image with the ground-truth message of
  the same header stamp, else the nearest one within ``tolerance_ns``; images without a match are skipped.
* :func:`pair_index` and :class:`BagFrames` give random access to those pairs (used by ``BagDataset``).
* :func:`read_raw_messages` yields ``(topic, msgtype, cdr_bytes, timestamp_ns)`` so a node can be fed the
  serialized messages as they are (e.g. ``rclpy`` publishers with ``serialize=False`` on raw bytes).
"""
import bisect
import functools
import os
import struct
from collections.abc import Collection, Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ...runtime import imgmsg

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

TOPICS = {
    'image': ('/camera/image_raw', 'sensor_msgs/msg/Image'),
    'compressed': ('/camera/image_raw/compressed', 'sensor_msgs/msg/CompressedImage'),
    'camera_info': ('/camera/camera_info', 'sensor_msgs/msg/CameraInfo'),
    'depth': ('/camera/depth', 'sensor_msgs/msg/Image'),
    'labels': ('/ground_truth/labels', 'sensor_msgs/msg/Image'),
    'occupancy': ('/ground_truth/occupancy', 'nav_msgs/msg/OccupancyGrid'),
    'tf': ('/tf', 'tf2_msgs/msg/TFMessage'),
}
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')   # what decode() reads
CAMERA_FRAME = 'camera_optical_frame'
BASE_FRAME = 'base_link'
DEFAULT_START_NS = 1_700_000_000 * 10**9

@functools.cache
def typestore() -> 'Typestore':
    """The rosbags type store used for (de)serialization (ROS 2 Humble message definitions)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


def _header(stamp_ns, frame_id):
    ts = typestore()
    time_cls = ts.types['builtin_interfaces/msg/Time']
    stamp = time_cls(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9))
    return ts.types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)


def rgb_to_yuv422(rgb: np.ndarray, encoding: str = 'yuv422_yuy2') -> np.ndarray:
    """RGB (H, W even, 3) -> packed YUV 4:2:2 (H, W, 2) as a camera driver sends it: BT.601 video range, each pixel
    pair's U and V from its first pixel; ``yuv422`` is UYVY, ``yuv422_yuy2`` YUYV (sensor_msgs)."""
    r, g, b = (np.asarray(rgb)[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    chroma = np.empty_like(y)
    chroma[:, 0::2] = (128 - 0.148 * r - 0.291 * g + 0.439 * b)[:, 0::2]
    chroma[:, 1::2] = (128 + 0.439 * r - 0.368 * g - 0.071 * b)[:, 0::2]
    planes = [y, chroma] if encoding == 'yuv422_yuy2' else [chroma, y]
    return np.clip(np.rint(np.stack(planes, axis=-1)), 0, 255).astype(np.uint8)


def rgb_to_bayer(rgb: np.ndarray, encoding: str = 'bayer_rggb8') -> np.ndarray:
    """RGB (H, W, 3) -> the (H, W) mosaic a Bayer sensor records (``bayer_rggb8``: R G on even rows, G B on odd)."""
    rgb = np.asarray(rgb)
    pattern = encoding[len('bayer_'):len('bayer_') + 4]
    out = np.empty(rgb.shape[:2], np.uint8)
    for k, colour in enumerate(pattern):
        out[k // 2::2, k % 2::2] = rgb[k // 2::2, k % 2::2, 'rgb'.index(colour)]
    return out


def image_msg(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = CAMERA_FRAME,
              row_padding: int = 0) -> Any:
    """A ``sensor_msgs/msg/Image`` of ``image`` (RGB(A) or HxW array) in ``encoding``.

    Colour input is RGB(A) and converted to the requested channel order, or packed (YUV 4:2:2, Bayer);
    ``row_padding`` extra bytes end every row (``step`` > width * pixel size), as some camera drivers do."""
    image = np.asarray(image)
    if encoding.startswith('yuv422'):
        image = rgb_to_yuv422(image, encoding)
    elif encoding.startswith('bayer_'):
        image = rgb_to_bayer(image, encoding)
    if encoding in ('bgr8', 'bgra8'):
        image = image[..., ::-1]
    if encoding in ('rgba8', 'bgra8') and image.shape[-1] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, image.dtype)], axis=-1)
    dtype = imgmsg.ENCODINGS[encoding][0]
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image.astype(dtype, copy=False)).view(np.uint8).reshape(height, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((height, row_padding), np.uint8)], axis=1)
    return typestore().types['sensor_msgs/msg/Image'](
        header=_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding, is_bigendian=0,
        step=rows.shape[1], data=rows.reshape(-1))


def compressed_msg(image: np.ndarray, stamp_ns: int, fmt: str = 'jpeg', quality: int = 90,
                   frame_id: str = CAMERA_FRAME) -> Any:
    """A ``sensor_msgs/msg/CompressedImage`` (jpeg or png) of an RGB or single-channel image."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == 'jpeg' else []
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ValueError(f'could not encode {fmt}')
    return typestore().types['sensor_msgs/msg/CompressedImage'](
        header=_header(stamp_ns, frame_id), format=fmt, data=buf.reshape(-1))


def camera_info_msg(intrinsics: dict, stamp_ns: int, frame_id: str = CAMERA_FRAME) -> Any:
    """A ``sensor_msgs/msg/CameraInfo`` from ``fx, fy, cx, cy, width, height`` (no distortion)."""
    t = typestore().types
    fx, fy, cx, cy = (float(intrinsics[k]) for k in ('fx', 'fy', 'cx', 'cy'))
    roi = t['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return t['sensor_msgs/msg/CameraInfo'](
        header=_header(stamp_ns, frame_id), height=int(intrinsics['height']), width=int(intrinsics['width']),
        distortion_model='plumb_bob', d=np.zeros(5), k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64),
        r=np.eye(3).reshape(-1), p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64),
        binning_x=0, binning_y=0, roi=roi)


def occupancy_msg(grid: np.ndarray, info: dict, stamp_ns: int, frame_id: str = BASE_FRAME) -> Any:
    """A ``nav_msgs/msg/OccupancyGrid`` of an int8 grid (row = y cell) with ``resolution`` and ``origin``."""
    t = typestore().types
    ox, oy, oyaw = (float(v) for v in info['origin'])
    origin = t['geometry_msgs/msg/Pose'](
        position=t['geometry_msgs/msg/Point'](x=ox, y=oy, z=0.0),
        orientation=t['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=float(np.sin(oyaw / 2)),
                                                      w=float(np.cos(oyaw / 2))))
    header = _header(stamp_ns, frame_id)
    meta = t['nav_msgs/msg/MapMetaData'](map_load_time=header.stamp, resolution=float(info['resolution']),
                                         width=int(grid.shape[1]), height=int(grid.shape[0]), origin=origin)
    return t['nav_msgs/msg/OccupancyGrid'](header=header, info=meta,
                                           data=np.ascontiguousarray(grid, np.int8).reshape(-1))


def camera_in_base(pose: dict, base_pose: dict) -> np.ndarray:
    """4x4 camera optical frame -> robot base (``base_link``) of a rendered frame's ``pose`` (camera in the world)
    and ``base_pose`` (robot x, y, yaw in the world)."""
    from ...runtime.pose import invert, pose_matrix, quat_to_matrix, transform_matrix
    world_camera = transform_matrix(pose['position'], quat_to_matrix(*pose['orientation']))
    world_base = pose_matrix(base_pose['x'], base_pose['y'], 0.0, 0.0, 0.0, base_pose['yaw'])
    return invert(world_base) @ world_camera


def tf_msg(transform: np.ndarray, stamp_ns: int, parent: str = BASE_FRAME, child: str = CAMERA_FRAME) -> Any:
    """A ``tf2_msgs/msg/TFMessage`` holding one transform (4x4 child -> parent)."""
    t = typestore().types
    from .render import _quat_from_matrix
    m = np.asarray(transform, np.float64)
    q = _quat_from_matrix(m[:3, :3])
    stamped = t['geometry_msgs/msg/TransformStamped'](
        header=_header(stamp_ns, parent), child_frame_id=child,
        transform=t['geometry_msgs/msg/Transform'](
            translation=t['geometry_msgs/msg/Vector3'](x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
            rotation=t['geometry_msgs/msg/Quaternion'](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))))
    return t['tf2_msgs/msg/TFMessage'](transforms=[stamped])


def write_bag(path: str | os.PathLike, frames: Iterable[dict], storage: str = 'mcap', raw: bool = True,
              jpeg: bool = False, depth: bool = False, compress: bool = True, rate_hz: float = 10.0,
              start_ns: int = DEFAULT_START_NS, image_encoding: str = 'rgb8', row_padding: int = 0,
              jpeg_quality: int = 90) -> int:
    """Write ``frames`` (an iterable of dicts) to a new rosbag2 directory ``path``; returns the frame count.

    Each frame needs ``image`` (RGB) and may have ``label``, ``intrinsics``, ``occupancy`` (+ ``occupancy_info``),
    ``depth`` (metres), ``pose`` + ``base_pose`` (-> /tf: base_link -> camera_optical_frame) and ``stamp_ns``
    (default: ``start_ns`` + index / ``rate_hz``). Topics are created for
    what the first frame has: ``raw`` -> /camera/image_raw (``image_encoding``, rows padded by ``row_padding``
    bytes), ``jpeg`` -> /camera/image_raw/compressed, ``depth`` -> /camera/depth (32FC1). ``compress``: zstd
    chunk compression (mcap only; sqlite3 is written uncompressed)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    ts = typestore()
    writer = Writer(Path(path), version=Writer.VERSION_LATEST, storage_plugin=plugin)
    if compress and storage == 'mcap':
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    connections = {}
    period = int(round(1e9 / rate_hz))
    count = 0
    with writer:
        for index, frame in enumerate(frames):
            stamp = int(frame.get('stamp_ns', start_ns + index * period))
            messages = []
            if raw:
                messages.append(('image', image_msg(frame['image'], image_encoding, stamp, row_padding=row_padding)))
            if jpeg:
                messages.append(('compressed', compressed_msg(frame['image'], stamp, quality=jpeg_quality)))
            if 'intrinsics' in frame:
                messages.append(('camera_info', camera_info_msg(frame['intrinsics'], stamp)))
            if depth and 'depth' in frame:
                messages.append(('depth', image_msg(frame['depth'], '32FC1', stamp)))
            if 'label' in frame:
                messages.append(('labels', image_msg(frame['label'], 'mono8', stamp)))
            if 'occupancy' in frame:
                messages.append(('occupancy', occupancy_msg(frame['occupancy'], frame['occupancy_info'], stamp)))
            if 'pose' in frame and 'base_pose' in frame:
                messages.append(('tf', tf_msg(camera_in_base(frame['pose'], frame['base_pose']), stamp)))
            for key, msg in messages:
                topic, msgtype = TOPICS[key]
                if key not in connections:
                    connections[key] = writer.add_connection(topic, msgtype, typestore=ts)
                writer.write(connections[key], stamp, ts.serialize_cdr(msg, msgtype))
            count += 1
    return count


def _open_reader(path):
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    from ...errors import UserError
    if not Path(path).exists():
        raise UserError(f'{path}: not found (give a rosbag2 folder)')
    try:
        reader = Reader(Path(path))
        reader.open()
    except (ReaderError, OSError) as exc:
        raise UserError(f'{path}: not a readable rosbag2 folder ({exc})') from None
    return reader


def _connections(reader, topic):
    """The connections of an image topic; an absent topic or one of another message type is a UserError."""
    from ...errors import UserError
    found = [c for c in reader.connections if c.topic == topic]
    if not found:
        raise UserError(f'{reader.path}: no topic {topic!r} in this bag; its topics: '
                        f'{", ".join(sorted({c.topic for c in reader.connections}))}')
    wrong = [c.msgtype for c in found if c.msgtype not in IMAGE_TYPES]
    if wrong:
        raise UserError(f'{reader.path}: topic {topic} is {wrong[0]}, expected {" or ".join(IMAGE_TYPES)}')
    return found


def header_stamp(rawdata: bytes) -> int:
    """Header stamp (ns) of a serialized message whose first field is a ``std_msgs/Header``."""
    order = '<' if rawdata[1] == 1 else '>'
    sec, nanosec = struct.unpack_from(order + 'iI', rawdata, 4)
    return sec * 10**9 + nanosec


def decode_image(msg: Any) -> np.ndarray:
    """ndarray of a deserialized ``sensor_msgs/msg/Image`` (colour -> RGB HxWx3, else HxW), by the same
    step-aware conversion the node uses (:mod:`seg_perception.runtime.imgmsg`)."""
    return np.ascontiguousarray(imgmsg.image_to_rgb(msg) if msg.encoding in imgmsg.COLOUR
                                else imgmsg.image_to_array(msg))


def decode_compressed(msg: Any) -> np.ndarray:
    """ndarray of a deserialized ``sensor_msgs/msg/CompressedImage`` (colour -> RGB HxWx3, else HxW)."""
    image = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'could not decode compressed image (format {msg.format!r})')
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)
    return image


def decode(rawdata: bytes, msgtype: str) -> tuple[int, str, np.ndarray]:
    """(stamp_ns, frame_id, image) of a serialized Image or CompressedImage message."""
    msg = typestore().deserialize_cdr(rawdata, msgtype)
    stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    if msgtype == 'sensor_msgs/msg/CompressedImage':
        return stamp, msg.header.frame_id, decode_compressed(msg)
    if msgtype == 'sensor_msgs/msg/Image':
        return stamp, msg.header.frame_id, decode_image(msg)
    raise ValueError(f'{msgtype} is not an image type')


def iter_bag_images(path: str | os.PathLike, topic: str) -> Iterator[tuple[int, str, np.ndarray]]:
    """Yield ``(stamp_ns, frame_id, image)`` for every message of ``topic`` in bag order."""
    reader = _open_reader(path)
    try:
        for connection, _, rawdata in reader.messages(_connections(reader, topic)):
            yield decode(rawdata, connection.msgtype)
    finally:
        reader.close()


def read_raw_messages(path: str | os.PathLike,
                      topics: Collection[str] | None = None) -> Generator[tuple[str, str, bytes, int], None, None]:
    """Yield ``(topic, msgtype, cdr_bytes, timestamp_ns)`` of ``topics`` (all when None) in bag order."""
    reader = _open_reader(path)
    try:
        wanted = [c for c in reader.connections if topics is None or c.topic in topics]
        if not wanted:
            return
        for connection, timestamp, rawdata in reader.messages(wanted):
            yield connection.topic, connection.msgtype, bytes(rawdata), timestamp
    finally:
        reader.close()


def _scan(reader, topic):
    """[(header stamp, bag timestamp, ordinal among messages of that bag timestamp)] of a topic."""
    entries, seen = [], {}
    for _, timestamp, rawdata in reader.messages(_connections(reader, topic)):
        ordinal = seen.get(timestamp, 0)
        seen[timestamp] = ordinal + 1
        entries.append((header_stamp(rawdata), timestamp, ordinal))
    return entries


def _match(image_stamps, gt_stamps, tolerance_ns):
    """Index into ``gt_stamps`` per image stamp: exact match, else nearest within tolerance, else None."""
    order = sorted(range(len(gt_stamps)), key=gt_stamps.__getitem__)
    sorted_stamps = [gt_stamps[i] for i in order]
    matches = []
    for stamp in image_stamps:
        k = bisect.bisect_left(sorted_stamps, stamp)
        best = None
        for j in (k - 1, k):
            if 0 <= j < len(sorted_stamps):
                gap = abs(sorted_stamps[j] - stamp)
                if gap <= tolerance_ns and (best is None or gap < best[0]):
                    best = (gap, order[j])
        matches.append(None if best is None else best[1])
    return matches


def pair_index(path: str | os.PathLike, image_topic: str, gt_topic: str,
               tolerance_ns: int = 20_000_000) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """[(stamp_ns, image_location, gt_location)] with locations (bag timestamp, ordinal) usable by BagFrames."""
    reader = _open_reader(path)
    try:
        images = _scan(reader, image_topic)
        gts = _scan(reader, gt_topic)
    finally:
        reader.close()
    matches = _match([s for s, _, _ in images], [s for s, _, _ in gts], tolerance_ns)
    return [(stamp, (t, o), gts[m][1:]) for (stamp, t, o), m in zip(images, matches) if m is not None]


def iter_bag_pairs(path: str | os.PathLike, image_topic: str, gt_topic: str,
                   tolerance_ns: int = 20_000_000) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(stamp_ns, image, label)`` for every image that has a ground-truth message (see module doc)."""
    pairs = pair_index(path, image_topic, gt_topic, tolerance_ns)
    wanted_images = {loc: k for k, (_, loc, _) in enumerate(pairs)}
    gt_users = {}
    for k, (_, _, loc) in enumerate(pairs):
        gt_users.setdefault(loc, []).append(k)
    reader = _open_reader(path)
    try:
        image_conns = _connections(reader, image_topic)
        gt_conns = _connections(reader, gt_topic)
        images, labels, remaining = {}, {}, {loc: len(ks) for loc, ks in gt_users.items()}
        seen = {}
        next_pair = 0
        for connection, timestamp, rawdata in reader.messages(image_conns + gt_conns):
            is_image = connection in image_conns
            key = (is_image, timestamp)
            ordinal = seen.get(key, 0)
            seen[key] = ordinal + 1
            loc = (timestamp, ordinal)
            if is_image and loc in wanted_images:
                images[wanted_images[loc]] = decode(rawdata, connection.msgtype)[2]
            elif not is_image and loc in gt_users:
                labels[loc] = decode(rawdata, connection.msgtype)[2]
            while next_pair < len(pairs) and next_pair in images and pairs[next_pair][2] in labels:
                stamp, _, gt_loc = pairs[next_pair]
                yield stamp, images.pop(next_pair), labels[gt_loc]
                remaining[gt_loc] -= 1
                if not remaining[gt_loc]:
                    del labels[gt_loc]
                next_pair += 1
    finally:
        reader.close()


class BagFrames:
    """Random access to image/ground-truth pairs of a bag; the reader opens lazily (once per process)."""

    def __init__(self, path, image_topic, gt_topic, tolerance_ns=20_000_000):
        self.path, self.image_topic, self.gt_topic = Path(path), image_topic, gt_topic
        self.pairs = pair_index(path, image_topic, gt_topic, tolerance_ns)
        self._reader = None
        self._pid = None

    def __len__(self):
        return len(self.pairs)

    def _read(self, topic, location):
        if self._reader is None or self._pid != os.getpid():
            self._reader = _open_reader(self.path)
            self._pid = os.getpid()
        timestamp, ordinal = location
        conns = _connections(self._reader, topic)
        for k, (connection, _, rawdata) in enumerate(self._reader.messages(conns, start=timestamp,
                                                                            stop=timestamp + 1)):
            if k == ordinal:
                return decode(rawdata, connection.msgtype)[2]
        raise KeyError(f'{topic} message at {timestamp} not found')

    def __getitem__(self, index):
        """(stamp_ns, image, label) of pair ``index``."""
        stamp, image_loc, gt_loc = self.pairs[index]
        return stamp, self._read(self.image_topic, image_loc), self._read(self.gt_topic, gt_loc)

    def close(self) -> None:
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_reader'] = None
        state['_pid'] = None
        return state
