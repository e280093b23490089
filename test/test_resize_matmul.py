"""The network's bilinear Resize nodes as two matrix products (graph/resize_matmul.py): the same values as
PyTorch's bilinear interpolation at any size (up, down, odd, to 1), the labels tail of a labels model kept,
export rewrites by default, int8 refuses a rewritten graph and the rewrite refuses an int8 one."""
import glob
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from seg_perception.offline import cli
from seg_perception.offline.deploy.quantize import quantize_model
from seg_perception.offline.graph import resize_matmul
from seg_perception.runtime.engine import SegmentationEngine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Upsample(torch.nn.Module):
    def forward(self, x, like):
        return F.interpolate(x, size=like.shape[-2:], mode='bilinear', align_corners=False) * 2.0


def _ops(proto):
    return [node.op_type for node in proto.graph.node]


def test_rewrite_equals_torch_interpolation(tmp_path):
    path = tmp_path / 'up.onnx'
    dyn = {'x': {2: 'h', 3: 'w'}, 'like': {2: 'H', 3: 'W'}}
    torch.onnx.export(_Upsample(), (torch.zeros(1, 4, 5, 7), torch.zeros(1, 1, 13, 3)), str(path),
                      input_names=['x', 'like'], output_names=['y'], dynamic_axes=dyn, opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    assert resize_matmul.resize_as_matmul(proto) == 1
    assert 'Resize' not in _ops(proto) and resize_matmul.is_rewritten(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((5, 7), (13, 3)), ((4, 5), (32, 40)), ((17, 23), (68, 92)), ((3, 3), (1, 1)),
                             ((1, 6), (8, 12)), ((9, 12), (9, 12))]:
        x = rng.standard_normal((1, 4, h, w)).astype(np.float32)
        like = np.zeros((1, 1, oh, ow), np.float32)
        ref = _Upsample()(torch.from_numpy(x), torch.from_numpy(like)).numpy()
        got = session.run(None, {'x': x, 'like': like})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f'{(h, w)} -> {(oh, ow)}')


def test_export_rewrites_the_network_not_the_labels_tail(tmp_path):
    kept, rewritten = tmp_path / 'kept.onnx', tmp_path / 'rewritten.onnx'
    common = ['export', '--arch', 'topformer_tiny', '--num-classes', '6', '--input-size', '64', '96',
              '--resize-mode', 'resize']
    assert cli.main(common + ['-o', str(rewritten)]) == 0
    assert _ops(onnx.load(str(rewritten))).count('Resize') == 1   # the tail: labels at 64x96
    # the same weights (an export without a checkpoint draws new ones): the file as exported, then rewritten
    assert cli.main(common + ['--keep-resize', '-o', str(kept)]) == 0
    assert _ops(onnx.load(str(kept))).count('Resize') == 9
    assert resize_matmul.convert_file(str(kept), str(rewritten)) == 8
    rgb = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a, b = (SegmentationEngine(str(p)).infer(rgb) for p in (kept, rewritten))
    assert np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
    # the rewritten file is not what int8 quantizes
    with pytest.raises(ValueError, match='quantize the file as exported'):
        quantize_model(str(rewritten), str(tmp_path / 'int8.onnx'), [rgb])


def test_cli_refuses_int8_and_bad_files(tmp_path, capsys):
    int8 = os.path.join(REPO, 'models', 'topformer_tiny_scenes_int8.onnx')
    if not os.path.isfile(int8):
        pytest.skip('needs models/topformer_tiny_scenes_int8.onnx')
    assert resize_matmul.main([int8, '-o', str(tmp_path / 'x.onnx')]) == 2
    assert 'quantized' in capsys.readouterr().out
    bad = tmp_path / 'bad.onnx'
    bad.write_text('not a model')
    assert resize_matmul.main([str(bad), '-o', str(tmp_path / 'y.onnx')]) == 2
    assert capsys.readouterr().out.startswith(f'error: {bad}')
    assert not (tmp_path / 'x.onnx').exists() and not (tmp_path / 'y.onnx').exists()


@pytest.mark.parametrize('path', [p for p in sorted(glob.glob(os.path.join(REPO, 'models', '*.onnx')))
                                  if '_int8' not in p], ids=os.path.basename)
def test_shipped_float_models_are_rewritten(path):
    assert resize_matmul.resize_as_matmul(onnx.load(path)) == 0


def test_export_int8_quantizes_the_resize_graph_and_compares_with_the_shipped_one(tmp_path, capsys):
    """``export --int8``: the twin is quantized from the graph with its Resize nodes, and its report compares it
    with the fp32 file as written (rewritten)."""
    import cv2
    calib = tmp_path / 'calib'
    calib.mkdir()
    for i in range(4):
        cv2.imwrite(str(calib / f'{i}.png'), np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8))
    fp32, int8 = tmp_path / 'model.onnx', tmp_path / 'model_int8.onnx'
    assert cli.main(['export', '--arch', 'topformer_tiny', '--num-classes', '6', '--input-size', '64', '96',
                     '--resize-mode', 'resize', '--head', 'logits', '-o', str(fp32), '--int8', '--calib', str(calib),
                     '--calib-count', '4']) == 0
    out = capsys.readouterr().out
    assert out.index('rewritten as matrix products') < out.index(f'int8 {int8}')
    assert f'vs fp32 {fp32.stat().st_size / 1e6:.2f} MB' in out      # the size of the file as shipped
    assert resize_matmul.is_rewritten(onnx.load(str(fp32)))
    assert _ops(onnx.load(str(int8))).count('Resize') == 8 and not resize_matmul.is_rewritten(onnx.load(str(int8)))
