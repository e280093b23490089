"""Loading nothing unsafe: model paths are checked before ONNX Runtime parses them, torch files are read with
weights_only=True only, and what is not a checkpoint says so (never "retry with weights_only=False")."""
import os
import pickle

import numpy as np
import pytest

from seg_perception.errors import UserError
from seg_perception.runtime.engine import EngineError, SegmentationEngine
from seg_perception.runtime.model_file import ModelFileError, check_model_file


def test_model_file_checks(tmp_path, tiny_model):
    assert check_model_file(tiny_model) == os.path.getsize(tiny_model)
    fifo = tmp_path / 'fifo.onnx'
    os.mkfifo(fifo)
    (tmp_path / 'empty.onnx').write_bytes(b'')
    (tmp_path / 'text.onnx').write_text('ir_version: 8\n')
    cases = {
        tmp_path / 'missing.onnx': 'model file not found',
        tmp_path: 'is not a regular file',
        fifo: 'is not a regular file',            # would block a reader forever
        tmp_path / 'empty.onnx': 'is empty',
        tmp_path / 'text.onnx': 'is not an ONNX model',
    }
    for path, reason in cases.items():
        with pytest.raises(ModelFileError, match=reason) as info:
            check_model_file(path)
        assert str(path) in str(info.value)
    with pytest.raises(ModelFileError, match='more than the 100-byte limit'):
        check_model_file(tiny_model, max_bytes=100)


def test_engine_refuses_a_non_model_before_onnx_runtime_sees_it(tmp_path):
    path = tmp_path / 'model.onnx'
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    with pytest.raises(EngineError, match='is not an ONNX model'):
        SegmentationEngine(str(path))


class _Exploit:
    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_torch_files_only_with_weights_only(tmp_path):
    torch = pytest.importorskip('torch')
    from seg_perception.nets.checkpoint import torch_load_weights

    exploit = _Exploit()
    exploit.marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pt'
    evil.write_bytes(pickle.dumps({'model': exploit}))
    text = tmp_path / 'notes.pt'
    text.write_text('a text file\n')
    numpy_pickle = tmp_path / 'arrays.pt'
    torch.save({'x': np.zeros(3)}, numpy_pickle)
    for path in (evil, text, numpy_pickle):
        with pytest.raises(UserError, match='not a seg_perception checkpoint') as info:
            torch_load_weights(path)
        assert 'weights_only' not in str(info.value) and str(path) in str(info.value)
    assert not exploit.marker.exists(), 'the pickle ran code'
    good = tmp_path / 'good.pt'
    torch.save({'model': {'w': torch.zeros(2)}, 'arch': 'x'}, good)
    assert torch_load_weights(good)['arch'] == 'x'
    with pytest.raises(FileNotFoundError):
        torch_load_weights(tmp_path / 'missing.pt')


def test_no_weights_only_false_advice_anywhere():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'seg_perception')
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                with open(os.path.join(folder, name)) as f:
                    text = f.read().replace(' ', '')
                assert 'weights_only=False' not in text, name
