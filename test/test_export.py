"""ONNX export (seg_perception.offline.deploy.export) and INT8 quantization (seg_perception.offline.deploy.quantize)."""
import hashlib

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from seg_perception.classes import SCENE_CLASS_NAMES
from seg_perception.offline.cli import main as cli_main
from seg_perception.offline.deploy import export as ex
from seg_perception.offline.deploy import quantize as qz
from seg_perception.offline.graph.onnx_graph import read_metadata
from seg_perception.runtime import engine as eng
from seg_perception.runtime import metadata as md
from seg_perception.runtime.engine import SegmentationEngine

SIZE = (64, 64)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _topformer(num_classes=6, seed=0):
    from seg_perception.nets import create_model
    torch.manual_seed(seed)
    return create_model('topformer_tiny', num_classes=num_classes).eval()


class TokenPassStub(nn.Module):
    """Stride-8 conv net with the token-pass interface: tokens whose confidence reaches the threshold stop."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, 2, 1))

    def forward(self, x):
        return self.body(x)

    def forward_with_stats(self, x, exit_threshold):
        logits = self.body(x)
        confidence = logits.softmax(dim=1).amax(dim=1)
        kept = (confidence < exit_threshold).float().mean().reshape(1)
        return logits, torch.cat([torch.ones(1), kept]), 1000.0 * (1.0 + kept.sum())


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp('export') / 'topformer_tiny.onnx'
    model = _topformer()
    meta = ex.build_metadata(6, SIZE, arch='topformer_tiny', description='test')
    report = ex.export_model(model, path, meta, SIZE)
    return path, meta, report, model


def _dataset(root, count=8, size=(48, 80)):
    """A generic-layout dataset: images/ (smooth random colours) and masks/ (class ids 0..5)."""
    rng = np.random.default_rng(0)
    (root / 'images').mkdir(parents=True)
    (root / 'masks').mkdir()
    for i in range(count):
        small = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
        rgb = cv2.resize(small, size[::-1], interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(root / 'images' / f'{i:03d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / 'masks' / f'{i:03d}.png'), (rgb[..., 0] // 43).astype(np.uint8))
    return root


def test_export_topformer_tiny(exported):
    path, meta, report, _ = exported
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]   # one file, no .onnx.data
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ['images']
    assert [o.name for o in proto.graph.output] == ['labels', 'confidence']
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3] and all(d.dim_param for d in dims[2:])
    assert report['opset'] >= 17

    decoded = md.decode({p.key: p.value for p in proto.metadata_props})
    for key in ('names', 'palette', 'mean', 'std', 'input_size', 'resize_mode', 'arch', 'description'):
        assert decoded[key] == meta[key], key
    assert decoded['names'] == list(SCENE_CLASS_NAMES)
    assert decoded['output_kind'] == 'labels' and decoded['dynamic_hw'] is True and decoded['stride'] == 32

    sizes = [tuple(row['size']) for row in report['parity']]
    assert sizes == [SIZE, (96, 128)]
    for row in report['parity']:
        assert row['ok'] and row['confidence_rel'] <= 1e-4 and row['logits_rel'] <= 1e-4
        assert row['label_agreement'] > 0.99


def test_dynamic_size_through_engine(exported):
    path, _, _, model = exported
    engine = SegmentationEngine(path, providers=['CPUExecutionProvider'], intra_op_threads=1, input_size='native')
    rgb = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    result = engine.infer(rgb)   # runs at 96x128 (rounded up to the stride)
    assert result.labels.shape == (70, 100) and result.confidence.dtype == np.float32
    geometry = eng.compute_geometry(rgb.shape[:2], None, 'letterbox', 32, dynamic=True)
    assert geometry.net_hw == (96, 128)
    blob = eng.preprocess(rgb, geometry, engine.meta['mean'], engine.meta['std'])
    with torch.no_grad():
        labels, confidence = ex.postprocess(model(torch.from_numpy(blob)), blob.shape[-2:])
    np.testing.assert_allclose(confidence[0, :70, :100].numpy(), result.confidence, atol=1e-5)


def test_parity_failure_is_detected(exported, tmp_path):
    path, _, _, model = exported
    proto = onnx.load(str(path))
    weight = next(t for t in proto.graph.initializer if t.dims and len(t.dims) == 4 and t.dims[0] == 6)
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    with pytest.raises(ex.ParityError, match='FAILED'):
        ex.check_parity(model, proto, [SIZE])
    rows = ex.check_parity(model, proto, [SIZE], raise_on_failure=False)
    assert not rows[0]['ok'] and rows[0]['logits_rel'] > 1e-4


def test_export_training_checkpoint_cli(tmp_path):
    model = _topformer(num_classes=3, seed=1)
    names, palette = ['floor', 'thing', 'other'], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    ckpt = tmp_path / 'best.pt'
    torch.save({'model': model.state_dict(), 'arch': 'topformer_tiny', 'num_classes': 3, 'classes': names,
                'palette': palette, 'mean': [10.0, 20.0, 30.0], 'std': [2.0, 3.0, 4.0], 'input_size': [64, 96],
                'iter': 10, 'history': [{'mIoU': 0.1}]}, ckpt)
    out = tmp_path / 'out' / 'model.onnx'
    assert cli_main(['export', '--checkpoint', str(ckpt), '--fixed-size', '--resize-mode', 'resize',
                     '--class-costs', 'floor:0, thing:70', '-o', str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ['model.onnx']
    meta = read_metadata(out)
    assert meta['class_costs'] == {'floor': 0, 'thing': 70}      # the costmap's table for this model
    assert meta['names'] == names and meta['palette'] == palette
    assert meta['mean'] == [10.0, 20.0, 30.0] and meta['std'] == [2.0, 3.0, 4.0]
    assert meta['input_size'] == [64, 96] and meta['dynamic_hw'] is False and meta['resize_mode'] == 'resize'
    assert meta['arch'] == 'topformer_tiny'
    assert meta['checkpoint_sha256'] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 64, 96]
    assert all(r['ok'] for r in ex.check_parity(model, out, [(64, 96)]))   # the checkpoint's weights are in


def test_cli_refuses_missing_arguments(tmp_path, capsys):
    assert cli_main(['export', '--arch', 'topformer_tiny', '-o', str(tmp_path / 'm.onnx')]) == 2
    err = capsys.readouterr().err   # a user mistake: one line on stderr, exit 2 (offline/cli.py)
    assert '--num-classes' in err and '--input-size' in err and err.count('\n') == 1
    args = ['export', '--arch', 'topformer_tiny', '--num-classes', '6', '--input-size', '64', '96']
    assert cli_main(args + ['--class-costs', 'lava:100', '-o', str(tmp_path / 'm.onnx')]) == 2
    assert "no class 'lava'" in capsys.readouterr().err and not (tmp_path / 'm.onnx').exists()
    assert cli_main(args + ['--class-costs', 'floor=0', '-o', str(tmp_path / 'm.onnx')]) == 2
    assert "'floor=0' is not 'name:cost'" in capsys.readouterr().err


def test_token_pass_export(tmp_path):
    torch.manual_seed(0)
    model = TokenPassStub().eval()
    report = ex.export_model(model, tmp_path / 'tp.onnx', ex.build_metadata(4, SIZE), SIZE,
                             exit_thresholds=(1.0, 0.3))
    assert report['inputs'] == ['images', 'exit_threshold']
    assert report['outputs'] == ['labels', 'confidence', 'kept_fraction', 'macs']
    assert len(report['parity']) == 4 and all(r['ok'] for r in report['parity'])
    engine = SegmentationEngine(tmp_path / 'tp.onnx', providers=['CPUExecutionProvider'], intra_op_threads=1)
    result = engine.infer(np.zeros((40, 40, 3), np.uint8), exit_threshold=0.0)
    assert result.kept_fraction.tolist() == [1.0, 0.0] and result.macs == 1000.0


def test_dynamo_exporter(tmp_path):
    torch.manual_seed(0)
    model = TokenPassStub(num_classes=6).body.eval()
    report = ex.export_model(model, tmp_path / 'd.onnx', ex.build_metadata(6, SIZE), SIZE, exporter='dynamo')
    assert report['opset'] >= 18 and all(r['ok'] for r in report['parity'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['d.onnx']


def test_int8_export_keeps_metadata(exported, tmp_path):
    path, _, _, _ = exported
    data = _dataset(tmp_path / 'data')
    int8 = tmp_path / 'int8' / 'model_int8.onnx'
    report = qz.quantize_and_compare(path, int8, data / 'images', count=8, eval_data=data, latency_runs=2)
    assert sorted(p.name for p in int8.parent.iterdir()) == ['model_int8.onnx']
    assert report['calibration_images'] == 8 and report['quantize_linear_nodes'] > 0
    assert read_metadata(int8) == read_metadata(path)
    proto = onnx.load(str(int8))
    assert {'QuantizeLinear', 'DequantizeLinear', 'Conv'} <= {n.op_type for n in proto.graph.node}
    assert [o.name for o in proto.graph.output] == ['labels', 'confidence']
    cmp = report['compare']
    assert cmp['images'] == 8 and 0.0 <= cmp['label_agreement'] <= 1.0
    assert cmp['miou_fp32'] is not None and cmp['miou_int8'] is not None and cmp['speedup'] > 0
    assert 'int8' in qz.format_int8_report(report)


ZOO = ['topformer_tiny', 'topformer_small', 'topformer_base', 'seaformer_tiny', 'seaformer_small',
       'seaformer_base', 'seaformer_large', 'rtformer_slim', 'rtformer_base', 'tokenpass_vit_mini',
       'static_vit_mini']


@pytest.mark.parametrize('name', ZOO)
def test_every_zoo_variant_exports_with_ort_parity(name, tmp_path):
    """Each listed variant exports to one dynamic file and matches PyTorch in ORT at two sizes."""
    from seg_perception.nets import create_model
    torch.manual_seed(0)
    model = create_model(name, num_classes=6).eval()
    meta = ex.build_metadata(6, SIZE, arch=name)
    report = ex.export_model(model, tmp_path / f'{name}.onnx', meta, SIZE)
    assert {tuple(row['size']) for row in report['parity']} == {SIZE, (96, 128)}
    assert all(row['ok'] and row['logits_rel'] < 1e-4 for row in report['parity'])
    result = SegmentationEngine(str(tmp_path / f'{name}.onnx')).infer(np.zeros((50, 70, 3), np.uint8))
    assert result.labels.shape == (50, 70)
