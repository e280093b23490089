"""Checks on a model path before any parser reads it (robot side: the standard library only).

A model path comes from a parameter or the command line; ONNX Runtime's protobuf parser should only ever see a
regular file of sane size that starts like an ONNX model. ONNX has no magic number, but every ``ModelProto``
written by onnx starts with its ``ir_version`` field: the byte 0x08 (field 1, varint) and a small version."""
import os
import stat

MAX_MODEL_BYTES = 2 * 1024**3   # protobuf's own limit for one message; single-file models only
_IR_VERSION_TAG = 0x08
_MAX_IR_VERSION = 64


class ModelFileError(ValueError):
    """A model path that is not a usable model file; the message names the path and the reason."""


def check_model_file(path: str, max_bytes: int = MAX_MODEL_BYTES) -> int:
    """Size in bytes of the ONNX file at ``path``, or ModelFileError: not found, not a regular file (a folder,
    a device, a FIFO), empty, larger than ``max_bytes``, or not starting like an ONNX model."""
    path = str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelFileError(f'model file not found: {path}') from None
    except OSError as exc:
        raise ModelFileError(f'model file {path} cannot be read: {exc.strerror}') from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f'model file {path} is not a regular file')
    if info.st_size == 0:
        raise ModelFileError(f'model file {path} is empty')
    if info.st_size > max_bytes:
        raise ModelFileError(f'model file {path} is {info.st_size} bytes, more than the {max_bytes}-byte limit')
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
    except OSError as exc:
        raise ModelFileError(f'model file {path} cannot be read: {exc.strerror}') from None
    if len(head) < 2 or head[0] != _IR_VERSION_TAG or not 1 <= head[1] <= _MAX_IR_VERSION:
        raise ModelFileError(f'{path} is not an ONNX model (it does not start with an ONNX ir_version field)')
    return info.st_size
