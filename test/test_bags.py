"""Round trips through rosbag2 (mcap and sqlite3) with seg_perception.offline.data.bags."""
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from seg_perception.errors import UserError
from seg_perception.offline.data import bags

H, W = 6, 10


def _frames(n=4, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        frames.append({
            'image': rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            'label': rng.integers(0, 6, (H, W), dtype=np.uint8),
            'depth': rng.uniform(0.1, 10, (H, W)).astype(np.float32),
            'intrinsics': {'fx': 20.0, 'fy': 20.0, 'cx': 5.0, 'cy': 2.0, 'width': W, 'height': H},
            'occupancy': rng.choice(np.array([-1, 0, 100], np.int8), (8, 8)),
            'occupancy_info': {'resolution': 0.05, 'origin': [-0.2, -0.2, 0.0]},
        })
    return frames


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_round_trip_with_padded_rows(tmp_path, storage, encoding):
    frames = _frames()
    path = tmp_path / 'bag'
    assert bags.write_bag(path, frames, storage=storage, depth=True, jpeg=True, image_encoding=encoding,
                          row_padding=6) == len(frames)
    got = list(bags.iter_bag_images(path, '/camera/image_raw'))
    assert len(got) == len(frames)
    for k, (stamp, frame_id, image) in enumerate(got):
        assert stamp == bags.DEFAULT_START_NS + k * 100_000_000 and frame_id == 'camera_optical_frame'
        np.testing.assert_array_equal(image, frames[k]['image'])
    labels = [img for _, _, img in bags.iter_bag_images(path, '/ground_truth/labels')]
    np.testing.assert_array_equal(labels[2], frames[2]['label'])
    depth = [img for _, _, img in bags.iter_bag_images(path, '/camera/depth')]
    np.testing.assert_array_equal(depth[1], frames[1]['depth'])
    jpeg = [img for _, _, img in bags.iter_bag_images(path, '/camera/image_raw/compressed')]
    assert jpeg[0].shape == (H, W, 3) and np.abs(jpeg[0].astype(int) - frames[0]['image']).mean() < 60
    pairs = list(bags.iter_bag_pairs(path, '/camera/image_raw', '/ground_truth/labels'))
    assert [s for s, _, _ in pairs] == [s for s, _, _ in got]
    for (_, image, label), frame in zip(pairs, frames):
        np.testing.assert_array_equal(image, frame['image'])
        np.testing.assert_array_equal(label, frame['label'])


def test_mono_encodings_and_big_endian(tmp_path):
    ts = bags.typestore()
    mono16 = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 300
    path = tmp_path / 'bag'
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/img', 'sensor_msgs/msg/Image', typestore=ts)
        msg = bags.image_msg(mono16, 'mono16', 5, row_padding=4)
        writer.write(conn, 5, ts.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
        msg.is_bigendian = 1
        msg.data = np.concatenate([mono16.astype('>u2').view(np.uint8).reshape(H, -1),
                                   np.zeros((H, 4), np.uint8)], axis=1).reshape(-1)
        writer.write(conn, 6, ts.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
        msg8 = bags.image_msg(mono16.astype(np.uint8), 'mono8', 7, row_padding=2)
        writer.write(conn, 7, ts.serialize_cdr(msg8, 'sensor_msgs/msg/Image'))
    got = [img for _, _, img in bags.iter_bag_images(path, '/img')]
    np.testing.assert_array_equal(got[0], mono16)
    np.testing.assert_array_equal(got[1], mono16)
    assert got[1].dtype == np.uint16
    np.testing.assert_array_equal(got[2], mono16.astype(np.uint8))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_pairs_by_nearest_stamp_and_random_access(tmp_path, storage):
    ts = bags.typestore()
    frames = _frames(5, seed=1)
    path = tmp_path / 'bag'
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        img = writer.add_connection('/cam', 'sensor_msgs/msg/Image', typestore=ts)
        gt = writer.add_connection('/gt', 'sensor_msgs/msg/CompressedImage', typestore=ts)
        for k, frame in enumerate(frames):
            stamp = 1_000_000_000 + k * 100_000_000
            writer.write(img, stamp, ts.serialize_cdr(bags.image_msg(frame['image'], 'rgb8', stamp),
                                                      'sensor_msgs/msg/Image'))
            if k == 3:
                continue
            gt_stamp = stamp + (5_000_000 if k == 1 else 0)
            msg = bags.compressed_msg(frame['label'], gt_stamp, fmt='png')
            writer.write(gt, gt_stamp + 1_000_000, ts.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'))
    pairs = list(bags.iter_bag_pairs(path, '/cam', '/gt', tolerance_ns=10_000_000))
    assert len(pairs) == 4
    for (stamp, image, label), k in zip(pairs, (0, 1, 2, 4)):
        assert stamp == 1_000_000_000 + k * 100_000_000
        np.testing.assert_array_equal(image, frames[k]['image'])
        np.testing.assert_array_equal(label, frames[k]['label'])
    assert len(list(bags.iter_bag_pairs(path, '/cam', '/gt', tolerance_ns=1_000_000))) == 3
    access = bags.BagFrames(path, '/cam', '/gt')
    assert len(access) == 4
    stamp, image, label = access[3]
    np.testing.assert_array_equal(image, frames[4]['image'])
    np.testing.assert_array_equal(label, frames[4]['label'])
    access.close()


def test_raw_messages_and_message_contents(tmp_path):
    frames = _frames(2)
    path = tmp_path / 'bag'
    bags.write_bag(path, frames, storage='mcap')
    raw = list(bags.read_raw_messages(path, ['/camera/camera_info', '/ground_truth/occupancy']))
    assert [t for t, _, _, _ in raw] == ['/camera/camera_info', '/ground_truth/occupancy'] * 2
    ts = bags.typestore()
    topic, msgtype, data, stamp = raw[0]
    assert isinstance(data, bytes) and stamp == bags.DEFAULT_START_NS
    info = ts.deserialize_cdr(data, msgtype)
    assert (info.width, info.height) == (W, H) and info.k[0] == 20.0 and info.k[2] == 5.0
    grid = ts.deserialize_cdr(raw[1][2], raw[1][1])
    assert grid.header.frame_id == 'base_link' and grid.info.width == 8
    np.testing.assert_array_equal(grid.data.reshape(8, 8), frames[0]['occupancy'])
    assert {t for t, _, _, _ in bags.read_raw_messages(path)} == {
        '/camera/image_raw', '/camera/camera_info', '/ground_truth/labels', '/ground_truth/occupancy'}
    with pytest.raises(UserError, match="no topic '/nope' in this bag; its topics: /camera/camera_info"):
        list(bags.iter_bag_images(path, '/nope'))
