"""RTFormer: structure, parameter counts, exactness against the official PaddleSeg model, checkpoint loading and
ONNX export. The reference data (generated weights, input, official logits) lives in
../shared/reference beside the checkout (or $SEG_PERCEPTION_REFERENCE)."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import REFERENCE, gen_weights

from seg_perception.nets import create_model, load_official_checkpoint
from seg_perception.nets.rtformer import adaptive_max_pool2d_exact

torch.set_num_threads(1)

VARIANTS = ['rtformer_slim', 'rtformer_base']

# FACTS.md counts Paddle parameters, which include BatchNorm running mean/variance.
PADDLE_PARAMS = {'rtformer_slim': (5_379_123, 5_417_734), 'rtformer_base': (17_791_059, 17_941_990)}
# The same models counted as torch parameters (BatchNorm statistics are buffers).
TORCH_PARAMS = {'rtformer_slim': (5_365_043, 5_403_398), 'rtformer_base': (17_765_971, 17_916_390)}


def _official_state(variant):
    return gen_weights().make_state_dict(str(REFERENCE / 'official_keys' / f'{variant}_keys.txt'))


def _write_pdparams(path, state):
    with open(path, 'wb') as f:
        pickle.dump(state, f, protocol=4)
    return path


@pytest.fixture(scope='module')
def slim_state():
    return _official_state('rtformer_slim')


@pytest.fixture(scope='module')
def slim_official(slim_state):
    model = create_model('rtformer_slim', num_classes=19).eval()
    model.load_state_dict(model.checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in slim_state.items()}))
    return model


@pytest.mark.parametrize('variant', VARIANTS)
def test_builds_and_runs_at_two_sizes(variant):
    model = create_model(variant, num_classes=7).eval()
    for h, w in ((64, 128), (96, 160)):
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert out.shape == (1, 7, h // 8, w // 8)


def test_train_forward_returns_aux_logits():
    x = torch.randn(2, 3, 64, 128)
    logits, aux = create_model('rtformer_slim', num_classes=5).train()(x)
    assert logits.shape == aux.shape == (2, 5, 8, 16)
    (logits.sum() + aux.sum()).backward()
    out = create_model('rtformer_slim', num_classes=5, aux_head=False).train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 8, 16)


@pytest.mark.parametrize('variant', VARIANTS)
def test_param_counts_match_facts(variant):
    for aux_head, paddle_count, torch_count in zip((False, True), PADDLE_PARAMS[variant], TORCH_PARAMS[variant]):
        model = create_model(variant, num_classes=19, aux_head=aux_head)
        assert model.paddle_param_count() == paddle_count
        assert sum(p.numel() for p in model.parameters()) == torch_count
    assert create_model(variant, num_classes=19).paddle_param_count() == PADDLE_PARAMS[variant][1]


def test_slim_matches_official_logits(tmp_path, slim_state):
    model = create_model('rtformer_slim', num_classes=19).eval()
    load_official_checkpoint(model, _write_pdparams(tmp_path / 'model.pdparams', slim_state))
    x = torch.from_numpy(np.load(REFERENCE / 'input_256x512.npy'))
    ref = np.load(REFERENCE / 'outputs' / 'rtformer_slim_logits8_256.npy')
    with torch.no_grad():
        out = model(x).numpy()
    assert out.shape == ref.shape == (1, 19, 32, 64)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_base_loads_official_names_and_shapes():
    state = {k: torch.from_numpy(v) for k, v in _official_state('rtformer_base').items()}
    for aux_head in (True, False):
        model = create_model('rtformer_base', num_classes=19, aux_head=aux_head)
        model.load_state_dict(model.checkpoint_filter_fn(state), strict=True)


def test_model_without_aux_head_loads_official_checkpoint(tmp_path, slim_state, slim_official):
    model = create_model('rtformer_slim', num_classes=19, aux_head=False).eval()
    load_official_checkpoint(model, _write_pdparams(tmp_path / 'model.pdparams', slim_state))
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(model(x), slim_official(x))


def test_filter_returns_own_state_dict_unchanged(slim_official):
    own = slim_official.state_dict()
    assert slim_official.checkpoint_filter_fn(own) is own


def test_extra_key_is_refused(tmp_path, slim_state):
    path = _write_pdparams(tmp_path / 'extra.pdparams', {**slim_state, 'layer9.conv.weight': np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match='layer9.conv.weight'):
        load_official_checkpoint(create_model('rtformer_slim', num_classes=19), path)


def test_missing_key_is_refused(tmp_path, slim_state):
    state = dict(slim_state)
    del state['layer4.attn_l.k']
    path = _write_pdparams(tmp_path / 'missing.pdparams', state)
    with pytest.raises(KeyError, match='layer4.attn_l.k'):
        load_official_checkpoint(create_model('rtformer_slim', num_classes=19), path)


class _RunsShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_with_disallowed_global_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = _write_pdparams(tmp_path / 'evil.pdparams', {'conv1.0.weight': _RunsShellCommand(f'touch {marker}')})
    with pytest.raises(pickle.UnpicklingError, match='system'):
        load_official_checkpoint(create_model('rtformer_slim', num_classes=19), path)
    assert not marker.exists()


def test_adaptive_max_pool_equals_torch_on_many_sizes():
    torch.manual_seed(0)
    for h in range(1, 41):
        for w in (1, 3, 11, 12, 13, 20, 23, 37, 40):
            x = torch.randn(2, 3, h, w)
            for size in ((12, 12), (5, 7), (1, 1)):
                assert torch.equal(adaptive_max_pool2d_exact(x, size), F.adaptive_max_pool2d(x, size)), (h, w, size)


def test_samples_in_a_batch_are_independent(slim_official):
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        both = slim_official(x)
        single = torch.cat([slim_official(x[:1]), slim_official(x[1:])])
    assert torch.allclose(both, single, rtol=0, atol=1e-5 * single.abs().max())


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_onnx_dynamic_export_matches_torch(tmp_path, slim_official):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    path = tmp_path / 'rtformer_slim.onnx'
    torch.onnx.export(slim_official, (torch.randn(1, 3, 64, 128),), str(path), dynamo=False, opset_version=17,
                      input_names=['image'], output_names=['logits'],
                      dynamic_axes={'image': {0: 'batch', 2: 'height', 3: 'width'},
                                    'logits': {0: 'batch', 2: 'height_8', 3: 'width_8'}})
    onnx.checker.check_model(onnx.load(str(path)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    # 96x224 pools a 3x7 map up to 12x12; 480x640 pools 15x20 down with uneven bins.
    for h, w in ((96, 224), (480, 640)):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ref = slim_official(x).numpy()
        out, = session.run(None, {'image': x.numpy()})
        assert out.shape == ref.shape == (1, 19, h // 8, w // 8)
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
