"""sensor_msgs encodings <-> numpy, step-aware, without ROS (messages are plain namespaces here; YUV and Bayer
frames made by the bag writer's encoders)."""
import types

import cv2
import numpy as np
import pytest

from seg_perception.offline.data.bags import rgb_to_bayer, rgb_to_yuv422
from seg_perception.runtime import imgmsg


def msg(arr, encoding, pad=0, bigendian=False):
    arr = np.ascontiguousarray(arr)
    if bigendian:
        arr = arr.astype(arr.dtype.newbyteorder('>'))
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1).view(np.uint8)
    padded = np.zeros((h, row.shape[1] + pad), np.uint8)
    padded[:, :row.shape[1]] = row
    return types.SimpleNamespace(height=h, width=w, encoding=encoding, step=padded.shape[1],
                                 is_bigendian=int(bigendian), data=padded.tobytes())


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize('pad', [0, 3, 11])
@pytest.mark.parametrize('encoding, make', [
    ('rgb8', lambda a: a), ('bgr8', lambda a: a[..., ::-1]),
    ('rgba8', lambda a: np.dstack([a, np.full(a.shape[:2], 9, np.uint8)])),
    ('bgra8', lambda a: np.dstack([a[..., ::-1], np.full(a.shape[:2], 9, np.uint8)])),
])
def test_colour_encodings_to_rgb(encoding, make, pad):
    out = imgmsg.image_to_rgb(msg(make(RGB), encoding, pad))
    assert out.shape == (5, 7, 3) and np.array_equal(out, RGB)


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_to_rgb(pattern):
    """Flat primaries come back as themselves (a wrong pattern swaps red and blue or greens), and a smooth image
    within a few levels inside the frame."""
    for colour in ([255, 0, 0], [0, 255, 0], [0, 0, 255]):
        flat = np.broadcast_to(np.array(colour, np.uint8), (6, 8, 3))
        out = imgmsg.image_to_rgb(msg(rgb_to_bayer(flat, f'bayer_{pattern}8'), f'bayer_{pattern}8', pad=2))
        assert out.shape == (6, 8, 3) and np.array_equal(out[2:-2, 2:-2], flat[2:-2, 2:-2]), colour
    yy, xx = np.mgrid[0:16, 0:20]
    smooth = np.stack([60 + 6 * xx, 200 - 5 * yy, 90 + 3 * (xx + yy)], axis=-1).astype(np.uint8)
    out = imgmsg.image_to_rgb(msg(rgb_to_bayer(smooth, f'bayer_{pattern}8'), f'bayer_{pattern}8'))
    assert np.abs(out[2:-2, 2:-2].astype(int) - smooth[2:-2, 2:-2]).max() <= 3


def test_yuv422_to_rgb():
    """sensor_msgs 'yuv422' is UYVY, 'yuv422_yuy2' YUYV; reading one as the other gives other colours."""
    rgb = np.repeat(np.array([[[200, 30, 40], [30, 160, 90], [20, 60, 220], [128, 128, 128]]], np.uint8), 2, axis=1)
    rgb = np.repeat(rgb, 3, axis=0)                                        # (3, 8, 3): pixel pairs of one colour
    for encoding in ('yuv422', 'yuv422_yuy2'):
        out = imgmsg.image_to_rgb(msg(rgb_to_yuv422(rgb, encoding), encoding, pad=4))
        assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).max() <= 3, encoding
    swapped = imgmsg.image_to_rgb(msg(rgb_to_yuv422(rgb, 'yuv422'), 'yuv422_yuy2'))
    assert np.abs(swapped.astype(int) - rgb).max() > 50


def test_yuv_odd_width_and_tiny_bayer_refused():
    with pytest.raises(imgmsg.ImageFormatError, match='odd width 7'):
        imgmsg.image_to_rgb(msg(np.zeros((2, 7, 2), np.uint8), 'yuv422'))
    with pytest.raises(imgmsg.ImageFormatError, match='2x2 cell'):
        imgmsg.image_to_rgb(msg(np.zeros((1, 6), np.uint8), 'bayer_rggb8'))


def test_mono8_to_rgb():
    g = RNG.integers(0, 256, (4, 9), dtype=np.uint8)
    out = imgmsg.image_to_rgb(msg(g, 'mono8', pad=5))
    assert np.array_equal(out[..., 0], g) and np.array_equal(out[..., 2], g)


@pytest.mark.parametrize('bigendian', [False, True])
def test_16uc1_and_32fc1_step_aware(bigendian):
    d = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    assert np.array_equal(imgmsg.image_to_array(msg(d, '16UC1', pad=4, bigendian=bigendian)), d)
    f = RNG.normal(size=(3, 4)).astype(np.float32)
    assert np.array_equal(imgmsg.image_to_array(msg(f, '32FC1', pad=8, bigendian=bigendian)), f)


def test_tight_rgb8_is_zero_copy():
    m = msg(RGB, 'rgb8')
    out = imgmsg.image_to_rgb(m)
    assert not out.flags.owndata and out.base is not None


@pytest.mark.parametrize('change, match', [
    (dict(encoding='bayer_rggb16'), 'not a colour'),
    (dict(encoding='16UC1'), 'not a colour'),
    (dict(step=10), 'step'),
    (dict(height=0), 'empty'),
    (dict(data=b'\0' * 20), 'bytes'),
    (dict(width=20000), 'larger'),
])
def test_bad_messages_raise_format_error(change, match):
    m = msg(RGB, 'rgb8')
    for k, v in change.items():
        setattr(m, k, v)
    with pytest.raises(imgmsg.ImageFormatError, match=match):
        imgmsg.image_to_rgb(m)


def test_odd_step_for_16bit_refused():
    m = msg(np.zeros((2, 3), np.uint16), '16UC1')
    m.step, m.data = 7, b'\0' * 14
    with pytest.raises(imgmsg.ImageFormatError, match='multiple'):
        imgmsg.image_to_array(m)


def test_compressed_round_trip_and_corrupt():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, 30:] = (250, 10, 10)
    for fmt in ('png', 'jpeg'):
        m = types.SimpleNamespace(format=fmt, data=imgmsg.rgb_to_compressed_bytes(rgb, fmt))
        out = imgmsg.compressed_to_rgb(m)
        assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 3
    with pytest.raises(imgmsg.ImageFormatError, match='decode'):
        imgmsg.compressed_to_rgb(types.SimpleNamespace(format='jpeg', data=b'\xff\xd8garbage'))
    with pytest.raises(imgmsg.ImageFormatError, match='no data'):
        imgmsg.compressed_to_rgb(types.SimpleNamespace(format='jpeg', data=b''))


def test_compressed_size_is_read_before_decoding():
    rgb = np.zeros((37, 53, 3), np.uint8)
    for fmt, flags in (('.png', []), ('.jpg', []), ('.jpg', [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        assert imgmsg.encoded_image_size(cv2.imencode(fmt, rgb, flags)[1].tobytes()) == (53, 37)
    assert imgmsg.encoded_image_size(b'GIF89a') is None
    png = bytearray(imgmsg.rgb_to_compressed_bytes(rgb, 'png'))   # a few hundred bytes declaring 20000x20000
    png[16:24] = (20000).to_bytes(4, 'big') * 2
    with pytest.raises(imgmsg.ImageFormatError, match='declares 20000x20000 pixels'):
        imgmsg.compressed_to_rgb(types.SimpleNamespace(format='png', data=bytes(png)))


def test_fields_for_publishing():
    f = imgmsg.array_to_image_fields(np.arange(12, dtype=np.uint16).reshape(3, 4), 'mono16')
    assert f['step'] == 8 and isinstance(f['data'], bytes) and len(f['data']) == 24
    back = imgmsg.image_to_array(types.SimpleNamespace(**f))
    assert np.array_equal(back, np.arange(12).reshape(3, 4))


def test_matches_system_cv_bridge_when_available():
    cv_bridge = pytest.importorskip('cv_bridge', reason='no system cv_bridge (not on PyPI for numpy 2)')
    from sensor_msgs.msg import Image
    d = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    m = Image(**imgmsg.array_to_image_fields(d, '16UC1'))
    assert np.array_equal(cv_bridge.CvBridge().imgmsg_to_cv2(m), imgmsg.image_to_array(m))
    assert cv2 is not None


@pytest.mark.parametrize('encoding, shape, dtype', [('mono8', (3, 5), np.uint8), ('rgb8', (4, 7, 3), np.uint8),
                                                    ('mono16', (2, 3), np.uint16), ('32FC1', (5, 5), np.float32)])
@pytest.mark.parametrize('frame_id', ['', 'c', 'cam', 'camera_optical_frame'])   # every string padding
def test_image_cdr_is_the_serialized_message(encoding, shape, dtype, frame_id):
    serialization = pytest.importorskip('rclpy.serialization', reason='rclpy not installed (pip install .[ros])')
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    arr = (np.arange(np.prod(shape)) * 7).reshape(shape).astype(dtype)
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = -3, 999
    data = imgmsg.image_cdr(arr, encoding, header)
    reference = serialization.serialize_message(Image(header=header, **imgmsg.array_to_image_fields(arr, encoding)))
    assert isinstance(data, bytes) and len(data) == len(reference)
    back = serialization.deserialize_message(data, Image)
    assert (back.height, back.width, back.encoding, back.step) == (shape[0], shape[1], encoding, arr.strides[0])
    assert (back.header.frame_id, back.header.stamp.sec, back.header.stamp.nanosec) == (frame_id, -3, 999)
    assert bytes(back.data) == arr.tobytes() and np.array_equal(imgmsg.image_to_array(back), arr)
    with pytest.raises(ValueError, match='does not match'):
        imgmsg.image_cdr(arr[..., None].repeat(2, axis=-1), encoding, header)
