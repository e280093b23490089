"""Fuzzing the node's input edge (hypothesis): any sensor_msgs/Image or CompressedImage either converts to an
RGB image or is refused with ImageFormatError, never another exception; and any valid rgb8/bgr8/mono8 image with
any padded row step is segmented into labels of its own size. Example counts are fixed so the time is bounded."""
import types

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seg_perception.runtime.engine import SegmentationEngine
from seg_perception.runtime.imgmsg import ENCODINGS, ImageFormatError, compressed_to_rgb, image_to_rgb

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def image_msg(height, width, encoding, step, data, is_bigendian=0):
    return types.SimpleNamespace(height=height, width=width, encoding=encoding, step=step, data=data,
                                 is_bigendian=is_bigendian)


encodings = st.sampled_from(list(ENCODINGS) + ['yuv422', '', 'RGB8', '16UC3', 'rgb8\x00'])
dims = st.one_of(st.integers(-2, 40), st.sampled_from([0, 2**31 - 1, 2**32 + 3, 16385, -2**31]))


@FUZZ
@given(height=dims, width=dims, encoding=encodings, step=dims, data=st.binary(max_size=4096),
       is_bigendian=st.integers(0, 1))
def test_any_image_message_converts_or_is_refused(height, width, encoding, step, data, is_bigendian):
    msg = image_msg(height, width, encoding, step, data, is_bigendian)
    try:
        rgb = image_to_rgb(msg)
    except ImageFormatError:
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)


@FUZZ
@given(height=st.integers(1, 24), width=st.integers(1, 24), encoding=st.sampled_from(['rgb8', 'bgr8', 'mono8']),
       padding=st.integers(0, 9), cut=st.integers(0, 50), seed=st.integers(0, 2**16))
def test_truncated_or_padded_valid_images(height, width, encoding, padding, cut, seed):
    """Valid headers with padded rows; data cut short is refused, full data converts pixel-exactly."""
    channels = 1 if encoding == 'mono8' else 3
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, channels), np.uint8)
    step = width * channels + padding
    rows = np.zeros((height, step), np.uint8)
    rows[:, :width * channels] = pixels.reshape(height, -1)
    data = rows.tobytes()
    data = data[:max(0, len(data) - cut)] if cut else data
    msg = image_msg(height, width, encoding, step, data)
    needed = step * (height - 1) + width * channels
    if len(data) < needed:
        with pytest.raises(ImageFormatError):
            image_to_rgb(msg)
        return
    rgb = image_to_rgb(msg)
    expected = {'rgb8': pixels, 'bgr8': pixels[..., ::-1],
                'mono8': np.repeat(pixels, 3, axis=2)}[encoding]
    np.testing.assert_array_equal(rgb, expected)


def _encoded(fmt, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (rng.integers(1, 40), rng.integers(1, 40), 3), np.uint8)
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', image)
    assert ok
    return buf.tobytes()


@FUZZ
@given(fmt=st.sampled_from(['jpeg', 'png']), seed=st.integers(0, 1000),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 2000), junk=st.binary(max_size=64))
def test_corrupted_compressed_images_decode_or_are_refused(fmt, seed, edits, cut, junk):
    data = bytearray(_encoded(fmt, seed))
    for pos, value in edits:
        data[pos % len(data)] = value
    data = bytes(data[:max(0, len(data) - cut)]) + junk
    msg = types.SimpleNamespace(format=fmt, data=data)
    try:
        rgb = compressed_to_rgb(msg)
    except ImageFormatError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


@FUZZ
@given(data=st.binary(max_size=2048), fmt=st.text(max_size=12))
def test_random_bytes_as_compressed_image(data, fmt):
    msg = types.SimpleNamespace(format=fmt, data=data)
    try:
        rgb = compressed_to_rgb(msg)
    except ImageFormatError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3


@pytest.fixture(scope='module')
def engine(tiny_model):
    return SegmentationEngine(tiny_model, providers=['CPUExecutionProvider'], intra_op_threads=1)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(height=st.integers(1, 97), width=st.integers(1, 97), encoding=st.sampled_from(['rgb8', 'bgr8', 'mono8']),
       padding=st.integers(0, 13), seed=st.integers(0, 2**16))
def test_any_valid_image_gives_labels_of_its_own_size(engine, height, width, encoding, padding, seed):
    channels = 1 if encoding == 'mono8' else 3
    rng = np.random.default_rng(seed)
    step = width * channels + padding
    data = rng.integers(0, 256, height * step, np.uint8).tobytes()
    result = engine.infer(image_to_rgb(image_msg(height, width, encoding, step, data)))
    assert result.labels.shape == (height, width) and result.confidence.shape == (height, width)
    assert result.labels.max() < engine.num_classes
