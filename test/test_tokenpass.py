"""Token-pass ViT (DoViT): static equivalence, stopping, gather/scatter, ONNX Runtime parity, MACs, training."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg_perception.nets import create_model, list_models
from seg_perception.nets.tokenpass import (
    TokenPassViT,
    gather_tokens,
    scatter_tokens,
    select_kept_tokens,
)

torch.set_num_threads(1)

SMALL = dict(num_classes=6, embed_dim=32, depth=4, num_heads=2, aux_indices=(1, 2, 3), pos_grid=(4, 4))


def _small_pair(seed=0, **kw):
    """A small token-pass model (aux heads scaled up so confidences spread over (1/6, 1)) and its static twin
    with the same weights."""
    torch.manual_seed(seed)
    tp = create_model('tokenpass_vit_mini', **{**SMALL, **kw}).eval()
    with torch.no_grad():
        for head in tp.aux_heads:
            head.fc.weight.normal_(0, 0.6)
    static = create_model('static_vit_mini', **SMALL).eval()
    static.load_state_dict(tp.state_dict())
    return tp, static


def _confidences(model, x, threshold):
    """Max softmax probability of every aux head on the tokens it sees, for a run at ``threshold``."""
    with torch.no_grad():
        _, aux, _, _ = model._run(x, threshold)
    return torch.cat([a.softmax(-1).amax(-1).flatten() for a in aux])


def _safe_thresholds(model, x, candidates, margin=1e-4):
    """Candidates not within ``margin`` of any token's confidence (no decision flips from float noise)."""
    return [t for t in candidates if (_confidences(model, x, t) - t).abs().min() > margin]


@pytest.fixture(scope='module')
def pair():
    return _small_pair()


def test_variants_registered_and_static_twins_share_keys():
    names = list_models()
    for size in ('mini', 'tiny', 'small', 'base'):
        assert f'tokenpass_vit_{size}' in names and f'static_vit_{size}' in names
    tp, static = create_model('tokenpass_vit_mini', num_classes=6), create_model('static_vit_mini', num_classes=6)
    assert list(tp.state_dict()) == list(static.state_dict())
    assert isinstance(tp, TokenPassViT) and not hasattr(static, 'forward_with_stats')
    with torch.no_grad():
        assert tp.eval()(torch.randn(1, 3, 64, 96), 0.5).shape == (1, 6, 8, 12)


@pytest.mark.parametrize('threshold', [None, 1.0, 1.5])
def test_threshold_at_least_one_equals_static_twin(pair, threshold):
    tp, static = pair
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(tp(x, threshold), static(x))
        if threshold is not None:
            logits, kept, macs = tp.forward_with_stats(x, torch.tensor(threshold))
            assert torch.equal(logits, static(x))
            assert kept.tolist() == [1.0, 1.0, 1.0]
            assert macs.item() == pytest.approx(tp.macs_for_kept(64, 80, [21] * 4))


def test_threshold_zero_stops_everything_at_first_aux_head(pair):
    tp, _ = pair
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits, kept, macs = tp.forward_with_stats(x, torch.tensor(0.0))
        tokens, grid = tp.embed(x)
        for blk in tp.blocks[:tp.aux_indices[0]]:
            tokens = blk(tokens)
        first_head_route = tp.decode(tokens, grid)
    assert kept.tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(logits, first_head_route)
    n = 4 * 6 + 1
    assert macs.item() == pytest.approx(tp.macs_for_kept(64, 96, [n] + [1] * 3))


def test_stopping_is_cumulative_and_macs_fall_with_threshold(pair):
    tp, _ = pair
    x = torch.randn(1, 3, 64, 96)
    macs, kept = [], []
    with torch.no_grad():
        for t in (1.0, 0.9, 0.7, 0.5, 0.3, 0.0):
            _, k, m = tp.forward_with_stats(x, torch.tensor(t))
            assert all(a >= b for a, b in zip(k.tolist(), k.tolist()[1:]))
            macs.append(m.item())
            kept.append(k.sum().item())
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]
    assert kept == sorted(kept, reverse=True) and 0 < kept[2] < kept[0]


@pytest.mark.parametrize('seed', range(5))
def test_gather_scatter_puts_every_token_back(seed):
    g = torch.Generator().manual_seed(seed)
    b, n, c = 3, 17, 5
    tokens = torch.randn(b, n, c, generator=g)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    assert torch.equal(scatter_tokens(torch.zeros_like(tokens), perm, gather_tokens(tokens, perm)), tokens)
    ids = perm[:, :7]
    changed = scatter_tokens(tokens, ids, gather_tokens(tokens, ids) + 1.0)
    touched = torch.zeros(b, n, dtype=torch.bool).scatter(1, ids, True)
    assert torch.equal(changed[touched], tokens[touched] + 1.0)
    assert torch.equal(changed[~touched], tokens[~touched])

    stopped = torch.rand(b, n, generator=g) < 0.6
    stopped[:, 0] = False
    stopped[1, 1:] = True  # an image where every patch token stopped: the cls token is still gathered
    ids, valid = select_kept_tokens(stopped)
    assert ids.shape[1] == int((~stopped).sum(1).max()) >= 1
    for i in range(b):
        active = torch.nonzero(~stopped[i]).flatten()
        assert torch.equal(ids[i, :len(active)], active)
        assert valid[i].tolist() == [True] * len(active) + [False] * (ids.shape[1] - len(active))
        assert sorted(ids[i].tolist()) == sorted(set(ids[i].tolist()))
    ids, valid = select_kept_tokens(stopped, (0.25, 0.5, 1.0))
    assert ids.shape[1] in {5, 9, 17}


def test_batch_equals_images_one_by_one(pair):
    tp, _ = pair
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched = tp(x, 0.6)
        single = torch.cat([tp(x[i:i + 1], 0.6) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_token_buckets_change_compute_not_output():
    tp, _ = _small_pair()
    bucketed, _ = _small_pair(token_buckets=(0.25, 0.5, 0.75, 1.0))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for t in (0.0, 0.5, 0.7, 1.0):
            a, ka, ma = tp.forward_with_stats(x, torch.tensor(t))
            b, kb, mb = bucketed.forward_with_stats(x, torch.tensor(t))
            assert torch.allclose(a, b, atol=1e-5) and torch.equal(ka, kb) and mb >= ma


@pytest.mark.parametrize('threshold', [None, 0.0, 0.6, 1.0])
def test_macs_agree_with_count_macs(pair, threshold):
    flops = pytest.importorskip('seg_perception.offline.evaluation.flops')
    tp, static = pair
    shape = (1, 3, 48, 80)
    if threshold is None:
        expected = tp.macs_for_kept(48, 80)
        assert flops.count_macs(static, shape)[0] == expected
    else:
        with torch.no_grad():
            expected = tp.forward_with_stats(torch.zeros(shape), torch.tensor(threshold))[2].item()
    assert flops.count_macs(tp, shape, exit_threshold=threshold)[0] == pytest.approx(expected, rel=1e-6)


class _Stats(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, exit_threshold):
        return self.model.forward_with_stats(images, exit_threshold)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_onnx_runtime_matches_torch_for_thresholds(pair, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    tp, _ = pair
    path = str(tmp_path / 'tp.onnx')
    torch.onnx.export(_Stats(tp).eval(), (torch.randn(1, 3, 64, 64), torch.tensor(0.5)), path, dynamo=False,
                      opset_version=17, input_names=['images', 'exit_threshold'],
                      output_names=['logits', 'kept_fraction', 'macs'],
                      dynamic_axes={'images': {0: 'n', 2: 'h', 3: 'w'}, 'logits': {0: 'n', 2: 'h8', 3: 'w8'}})
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    g = torch.Generator().manual_seed(3)
    checked = 0
    for shape in ((1, 3, 64, 64), (1, 3, 48, 96), (2, 3, 64, 80)):
        x = torch.randn(*shape, generator=g)
        for t in [0.0, 1.0] + _safe_thresholds(tp, x, (0.4, 0.55, 0.7, 0.85)):
            with torch.no_grad():
                ref = [r.numpy() for r in tp.forward_with_stats(x, torch.tensor(t))]
            got = session.run(None, {'images': x.numpy(), 'exit_threshold': np.array(t, np.float32)})
            np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4 * np.abs(ref[0]).max())
            np.testing.assert_array_equal(got[1], ref[1])
            np.testing.assert_allclose(got[2], ref[2], rtol=1e-6)
            checked += 1
    assert checked >= 9


def test_export_module_adds_threshold_and_stats(pair, tmp_path):
    export = pytest.importorskip('seg_perception.offline.deploy.export')
    tp, _ = pair
    meta = export.build_metadata(6, (64, 64), arch='tokenpass_vit_mini')
    report = export.export_model(tp, tmp_path / 'tp.onnx', meta, (64, 64), exit_thresholds=(1.0, 0.6, 0.0))
    assert report['inputs'] == ['images', 'exit_threshold']
    assert report['outputs'][-2:] == ['kept_fraction', 'macs']
    assert all(row['ok'] for row in report['parity'])


def test_training_dict_loss_and_annealing():
    tp, static = _small_pair()
    tp.train()
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 6, (2, 64, 64))
    target[0, :8] = 255
    tp.set_threshold_schedule(0, 100)
    assert tp.train_threshold == 1.0
    tp.set_threshold_schedule(50, 100)
    assert tp.train_threshold == pytest.approx(1 - 0.5 * (1 - tp.exit_conf))
    tp.set_threshold_schedule(500, 100)
    assert tp.train_threshold == pytest.approx(tp.exit_conf)
    tp.train_threshold = 0.5  # make tokens stop so gradients also flow through the gather/scatter path
    with torch.no_grad():
        assert tp.eval().forward_with_stats(x, torch.tensor(0.5))[1][0] < 1.0
    out = tp.train()(x)
    assert out['logits'].shape == (2, 6, 8, 8) and len(out['aux']) == 3
    assert all(a.shape == (2, 6, 8, 8) for a in out['aux'])
    with torch.no_grad():
        teacher = F.interpolate(static.eval()(x), scale_factor=2.0)  # any size: resized to the student's
    loss, parts = tp.training_loss(out, target, teacher_logits=teacher, kd_weight=0.5)
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {'ce', 'aux0', 'aux1', 'aux2', 'kd'}
    loss.backward()
    for name in ('blocks.0.attn.qkv.weight', 'blocks.1.mlp.fc2.weight', 'aux_heads.0.fc.weight', 'head.weight'):
        assert tp.get_parameter(name).grad.abs().sum() > 0, name
    static.train()
    static_out = static(x)
    assert len(static_out['aux']) == 3 and tp.aux_loss_weight == 0.4


def test_bench_tokenpass_prints_halves(pair, tmp_path, capsys):
    export = pytest.importorskip('seg_perception.offline.deploy.export')
    pytest.importorskip('seg_perception.runtime.engine')
    import cv2

    from seg_perception.offline.cli import main

    tp, static = pair
    for name, model in (('tp', tp), ('static', static)):
        meta = export.build_metadata(6, (64, 64), arch=name, resize_mode='resize')
        export.export_model(model, tmp_path / f'{name}.onnx', meta, (64, 64), check=False)
    data = tmp_path / 'data'
    for sub in ('images', 'masks', 'meta'):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(data / 'images' / f'{i:03d}.png'), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        cv2.imwrite(str(data / 'masks' / f'{i:03d}.png'), rng.integers(0, 6, (64, 64), dtype=np.uint8))
        (data / 'meta' / f'{i:03d}.json').write_text(f'{{"clutter": {i / 4}}}')
    assert main(['bench', 'tokenpass', '--model', str(tmp_path / 'tp.onnx'), '--static',
                 str(tmp_path / 'static.onnx'), '--data', str(data), '--threshold', '0.5', '--warmup', '0',
                 '--json', str(tmp_path / 'bench.json')]) == 0
    out = capsys.readouterr().out
    assert '| 2 | easy half |' in out and '| 2 | cluttered half |' in out and 'split by clutter' in out
    report = json.loads((tmp_path / 'bench.json').read_text())
    assert report['groups']['all']['tp_macs'] < report['groups']['all']['static_macs']
