"""TopFormer and SeaFormer: structure, official checkpoints, exactness, exportable ops and ONNX parity."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from reference import REFERENCE, gen_weights, needs_reference

from seg_perception.nets import create_model, load_official_checkpoint
from seg_perception.nets._layers import adaptive_avg_pool2d, interpolate_linear_1d

torch.set_num_threads(1)


# backbone + decode head, 150 classes (FACTS.md, measured on the official code)
PARAMS = {
    'topformer_tiny': 1_389_654, 'topformer_small': 3_034_662, 'topformer_base': 5_062_646,
    'seaformer_tiny': 1_667_318, 'seaformer_small': 3_990_118, 'seaformer_base': 8_605_654,
    'seaformer_large': 13_951_510,
}
VARIANTS = list(PARAMS)
TINY = ['topformer_tiny', 'seaformer_tiny']


def _official_state_dict(name):
    sd = gen_weights().make_state_dict(str(REFERENCE / 'official_keys' / f'{name}_keys.txt'))
    return {k: torch.from_numpy(v) for k, v in sd.items()}


@pytest.fixture(scope='module')
def tiny_checkpoints(tmp_path_factory):
    """Generated official-format checkpoints for the tiny variants: {name: (path, state_dict)}."""
    root = tmp_path_factory.mktemp('ckpt')
    out = {}
    for name in TINY:
        sd = _official_state_dict(name)
        path = root / f'{name}.pth'
        torch.save({'state_dict': sd}, path)
        out[name] = (path, sd)
    return out


def _loaded_tiny(name, tiny_checkpoints):
    return load_official_checkpoint(create_model(name).eval(), tiny_checkpoints[name][0])


@pytest.mark.parametrize('name', VARIANTS)
def test_forward_shapes_and_params(name):
    model = create_model(name).eval()
    assert model.checkpoint_format == 'mmseg'
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    with torch.no_grad():
        for h, w in [(64, 64), (96, 128)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 150, h // 8, w // 8)
    assert create_model(name, num_classes=7).eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7, 8, 8)


@needs_reference
@pytest.mark.parametrize('name', VARIANTS)
def test_official_keys_fill_every_entry(name):
    """Every official key maps onto one of ours with the same shape, and every one of ours is filled."""
    keys = gen_weights().read_keys_file(str(REFERENCE / 'official_keys' / f'{name}_keys.txt'))
    model = create_model(name)
    mapped = model.checkpoint_filter_fn({k: torch.empty(shape) for k, shape in keys})
    own = model.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in own.items())


@needs_reference
@pytest.mark.parametrize('name', TINY)
def test_exact_to_official_output(name, tiny_checkpoints):
    model = _loaded_tiny(name, tiny_checkpoints)
    x = torch.from_numpy(np.load(REFERENCE / 'input_256.npy'))
    ref = np.load(REFERENCE / 'outputs' / f'{name}_out256.npy')
    with torch.no_grad():
        out = model(x).numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@needs_reference
@pytest.mark.parametrize('name', TINY)
def test_checkpoint_key_mismatch_is_refused(name, tiny_checkpoints, tmp_path):
    _, sd = tiny_checkpoints[name]
    extra = dict(sd, **{'backbone.extra_layer.weight': torch.zeros(3)})
    torch.save({'state_dict': extra}, tmp_path / 'extra.pth')
    with pytest.raises(KeyError, match='backbone.extra_layer.weight'):
        load_official_checkpoint(create_model(name), tmp_path / 'extra.pth')

    missing_key = 'decode_head.linear_fuse.bn.running_var'
    missing = {k: v for k, v in sd.items() if k != missing_key}
    torch.save({'state_dict': missing}, tmp_path / 'missing.pth')
    with pytest.raises(KeyError, match=missing_key):
        load_official_checkpoint(create_model(name), tmp_path / 'missing.pth')


@needs_reference
def test_checkpoint_filter_drops_aux_head_and_accepts_ours(tiny_checkpoints):
    name = 'seaformer_tiny'
    model = _loaded_tiny(name, tiny_checkpoints)
    _, sd = tiny_checkpoints[name]
    with_aux = dict(sd, **{'auxiliary_head.conv_seg.weight': torch.zeros(150, 32, 1, 1)})
    assert sorted(model.checkpoint_filter_fn(with_aux)) == sorted(model.state_dict())
    ours = model.state_dict()
    assert model.checkpoint_filter_fn(ours).keys() == ours.keys()


def test_adaptive_avg_pool_equals_torch():
    gen = torch.Generator().manual_seed(0)
    for h, w in [(1, 1), (2, 3), (5, 7), (15, 20), (16, 16), (23, 40), (45, 80)]:
        x = torch.randn(2, 3, h, w, generator=gen)
        for out_h in sorted({1, (h - 1) // 2 + 1, max(1, h // 3), h}):
            for out_w in sorted({1, (w - 1) // 2 + 1, max(1, w // 3), w}):
                torch.testing.assert_close(adaptive_avg_pool2d(x, (out_h, out_w)),
                                           F.adaptive_avg_pool2d(x, (out_h, out_w)), rtol=1e-6, atol=1e-6)


def test_linear_interpolation_equals_torch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 16, generator=gen)
    for size in [1, 2, 3, 7, 8, 15, 16, 23, 40, 90]:
        torch.testing.assert_close(interpolate_linear_1d(x, size),
                                   F.interpolate(x, size=size, mode='linear', align_corners=False),
                                   rtol=1e-5, atol=1e-5)


@needs_reference
@pytest.mark.filterwarnings('ignore::DeprecationWarning')
@pytest.mark.parametrize('name', TINY)
def test_onnx_dynamic_export_matches_torch(name, tiny_checkpoints, tmp_path):
    """One file exported at 256x256 (legacy exporter, dynamic H/W) matches torch at 256x256 and 480x640."""
    model = _loaded_tiny(name, tiny_checkpoints)
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(model, (torch.zeros(1, 3, 256, 256),), str(path), dynamo=False, opset_version=17,
                      input_names=['image'], output_names=['logits'],
                      dynamic_axes={'image': {0: 'n', 2: 'h', 3: 'w'}, 'logits': {0: 'n', 2: 'h8', 3: 'w8'}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    gen = torch.Generator().manual_seed(1)
    for h, w in [(256, 256), (480, 640)]:
        x = torch.randn(1, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {'image': x.numpy()})[0]
        assert out.shape == ref.shape == (1, 150, h // 8, w // 8)
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
