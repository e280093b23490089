"""sensor_msgs/Image and CompressedImage <-> numpy, by the sensor_msgs encoding rules (no cv_bridge).

Pure numpy/OpenCV: functions take any object with the message's fields (``height``, ``width``,
``encoding``, ``step``, ``is_bigendian``, ``data``), so they are tested without ROS. Decoding is zero-copy
where the layout allows it (``np.frombuffer`` + strided view); encoding returns ``bytes`` (assigning bytes
to a message field is ~500x faster than assigning an ndarray). :func:`image_cdr` encodes a whole
sensor_msgs/Image as its serialized (CDR) bytes, which rclpy publishes as they are (``Publisher.publish(bytes)``,
Humble and newer), skipping the Python -> C message conversion and the serialization copy.
"""
import struct
import sys
from typing import Any

import cv2
import numpy as np


class ImageFormatError(ValueError):
    """An image message the node cannot use: unsupported encoding, inconsistent size or step, bad data."""


# encoding -> (numpy dtype, channels)
ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1), '8UC3': (np.uint8, 3),
    'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1),
    # packed YUV 4:2:2 (two bytes a pixel; sensor_msgs 'yuv422' is UYVY, 'yuv422_yuy2' YUYV) and 8-bit Bayer
    # mosaics, as USB and machine-vision camera drivers publish them
    'yuv422': (np.uint8, 2), 'yuv422_yuy2': (np.uint8, 2),
    'bayer_rggb8': (np.uint8, 1), 'bayer_bggr8': (np.uint8, 1), 'bayer_gbrg8': (np.uint8, 1),
    'bayer_grbg8': (np.uint8, 1),
}
# encodings the segmentation input accepts, and how to get RGB from them
TO_RGB = {
    'rgb8': None, 'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB,
    'mono8': cv2.COLOR_GRAY2RGB, '8UC3': cv2.COLOR_BGR2RGB,
    'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUYV,
    # OpenCV names a Bayer pattern by the 2nd and 3rd pixels of its second row (cv_bridge's table): RGGB is BayerBG
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB, 'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB, 'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
}
# the encodings of colour images (decoded to RGB; grey mono8 stays one channel where a caller wants it so)
COLOUR = frozenset(TO_RGB) - {'mono8'}
# colour frames as camera drivers send them undecoded: packed YUV 4:2:2 and Bayer mosaics
PACKED = tuple(e for e in TO_RGB if e.startswith(('yuv422', 'bayer_')))
MAX_DIM = 16384


def image_to_array(msg: Any) -> np.ndarray:
    """Any supported sensor_msgs/Image -> (H, W) or (H, W, C) ndarray viewing the message's buffer."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageFormatError(f'unsupported encoding {enc!r} (supported: {", ".join(ENCODINGS)})')
    dtype, channels = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageFormatError(f'empty image ({w}x{h})')
    if h > MAX_DIM or w > MAX_DIM:
        raise ImageFormatError(f'image {w}x{h} is larger than {MAX_DIM} pixels on a side')
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise ImageFormatError(f'step {step} is smaller than width*channels*bytes = {row_bytes} ({enc})')
    if step % itemsize:
        raise ImageFormatError(f'step {step} is not a multiple of the {itemsize}-byte pixel component')
    buf = np.frombuffer(msg.data, np.uint8)
    if buf.size < step * (h - 1) + row_bytes:
        raise ImageFormatError(f'data has {buf.size} bytes, {w}x{h} {enc} with step {step} needs '
                               f'{step * (h - 1) + row_bytes}')
    if itemsize > 1 and buf.ctypes.data % itemsize:  # unaligned buffer: copy before a wider view
        buf = buf.copy()
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, row_bytes), strides=(step, 1), writeable=False)
    if itemsize > 1:
        order = '>' if msg.is_bigendian else '<'
        rows = rows.view(np.dtype(dtype).newbyteorder(order))
        if msg.is_bigendian:
            rows = rows.astype(dtype)
    return rows.reshape(h, w, channels) if channels > 1 else rows


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB. Raises ImageFormatError for encodings the model can't use."""
    if msg.encoding not in TO_RGB:
        raise ImageFormatError(f'encoding {msg.encoding!r} is not a colour/grey 8-bit image '
                               f'(accepted: {", ".join(TO_RGB)})')
    arr = image_to_array(msg)
    code = TO_RGB[msg.encoding]
    if msg.encoding.startswith('yuv422') and arr.shape[1] % 2:
        raise ImageFormatError(f'{msg.encoding} image of odd width {arr.shape[1]} (two pixels share U and V)')
    if msg.encoding.startswith('bayer_') and min(arr.shape[:2]) < 2:
        raise ImageFormatError(f'{msg.encoding} image {arr.shape[1]}x{arr.shape[0]} smaller than one 2x2 cell')
    if code is None:
        return arr
    try:
        return cv2.cvtColor(arr, code)
    except cv2.error as exc:   # a shape OpenCV's conversion refuses: the frame is rejected, the node goes on
        raise ImageFormatError(f'cannot convert {arr.shape[1]}x{arr.shape[0]} {msg.encoding} to RGB: '
                               f'{str(exc).strip().splitlines()[-1]}') from None


# JPEG start-of-frame markers (they carry the image size); C4, C8 and CC are other segments
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def encoded_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding it; None for other formats or no header."""
    if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24 and data[12:16] == b'IHDR':
        return int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
    if data[:2] != b'\xff\xd8':
        return None
    pos = 2
    while pos + 4 <= len(data):   # segments: FF, marker, 2-byte length (counting itself), payload
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:          # fill byte
            pos += 1
            continue
        if marker in _JPEG_SOF and pos + 9 <= len(data):   # length, precision, height, width
            return int.from_bytes(data[pos + 7:pos + 9], 'big'), int.from_bytes(data[pos + 5:pos + 7], 'big')
        if marker == 0xDA:          # start of scan before any frame header
            return None
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
    return None


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, any format string) -> (H, W, 3) uint8 RGB."""
    buf = np.frombuffer(msg.data, np.uint8)
    if buf.size == 0:
        raise ImageFormatError('compressed image has no data')
    size = encoded_image_size(buf[:65536].tobytes())   # a small file may declare a huge image: check first
    if size is not None and (max(size) > MAX_DIM or min(size) < 1):
        raise ImageFormatError(f'compressed image declares {size[0]}x{size[1]} pixels (at most {MAX_DIM} on a '
                               f'side): not decoded')
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageFormatError(f'cannot decode compressed image (format {msg.format!r}, {buf.size} bytes)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _image_array(arr, encoding):
    """(C-contiguous array of the encoding's dtype, height, width, step) or ValueError."""
    dtype, channels = ENCODINGS[encoding]
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not ((arr.ndim == 2 and channels == 1) or (arr.ndim == 3 and arr.shape[2] == channels)):
        raise ValueError(f'array of shape {arr.shape} does not match encoding {encoding}')
    h, w = arr.shape[:2]
    return arr, h, w, w * channels * arr.dtype.itemsize


def array_to_image_fields(arr: np.ndarray, encoding: str) -> dict:
    """ndarray -> dict(height, width, encoding, is_bigendian, step, data=bytes) for a sensor_msgs/Image."""
    arr, h, w, step = _image_array(arr, encoding)
    return dict(height=h, width=w, encoding=encoding, is_bigendian=int(sys.byteorder == 'big'), step=step,
                data=arr.tobytes())


_CDR_ORDER = '<' if sys.byteorder == 'little' else '>'
_CDR_ENCAPSULATION = b'\x00\x01\x00\x00' if sys.byteorder == 'little' else b'\x00\x00\x00\x00'


def _cdr_string(text: str, offset: int) -> bytes:
    """A CDR string at ``offset`` bytes into the payload: 4-byte aligned length (with the NUL), bytes, NUL."""
    raw = text.encode() + b'\0'
    return b'\0' * (-offset % 4) + struct.pack(_CDR_ORDER + 'I', len(raw)) + raw


def image_cdr(arr: np.ndarray, encoding: str, header: Any) -> bytes:
    """ndarray -> a serialized sensor_msgs/Image (CDR, this machine's byte order) with ``header``'s stamp and
    frame_id, what ``rclpy.serialization.serialize_message`` gives for the same message; one copy of the pixels."""
    arr, h, w, step = _image_array(arr, encoding)
    out = struct.pack(_CDR_ORDER + 'iI', header.stamp.sec, header.stamp.nanosec)
    out += _cdr_string(header.frame_id, len(out))
    out += b'\0' * (-len(out) % 4) + struct.pack(_CDR_ORDER + 'II', h, w)
    out += _cdr_string(encoding, len(out))
    out += struct.pack('B', sys.byteorder == 'big')                        # is_bigendian: the data is native
    out += b'\0' * (-len(out) % 4) + struct.pack(_CDR_ORDER + 'II', step, arr.nbytes)
    return b''.join((_CDR_ENCAPSULATION, out, memoryview(arr).cast('B')))


def rgb_to_compressed_bytes(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 90) -> bytes:
    """RGB uint8 -> encoded bytes (for CompressedImage.data)."""
    ext = '.jpg' if fmt in ('jpeg', 'jpg') else '.png'
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == '.jpg' else []
    ok, enc = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError('cv2.imencode failed')
    return enc.tobytes()
