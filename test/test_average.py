"""`seg-perception average`: checkpoints averaged tensor by tensor (seg_perception.offline.training.average)."""
import pytest
import torch

from seg_perception.nets import create_model
from seg_perception.offline.cli import main as cli_main
from seg_perception.offline.deploy import export as ex

NAMES = ['floor', 'thing', 'other']


def _checkpoint(path, seed, num_classes=3, arch='topformer_tiny'):
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes).eval()
    with torch.no_grad():   # BatchNorm statistics that differ between the inputs, as after training
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    torch.save({'model': model.state_dict(), 'arch': arch, 'num_classes': num_classes,
                'classes': NAMES[:num_classes] + ['x'] * (num_classes - 3), 'palette': [[1, 2, 3]] * num_classes,
                'mean': [10.0, 20.0, 30.0], 'std': [2.0, 3.0, 4.0], 'input_size': [64, 96], 'resize_mode': 'resize',
                'iter': 10, 'optimizer': {'state': {}}, 'history': [{'mIoU': 0.1}]}, path)
    return model.state_dict()


def test_weighted_mean_of_every_float_tensor_and_it_exports(tmp_path):
    torch.set_num_threads(1)
    a, b = _checkpoint(tmp_path / 'a.pt', 1), _checkpoint(tmp_path / 'b.pt', 2)
    out = tmp_path / 'soup.pt'
    assert cli_main(['average', f'{tmp_path / "a.pt"}:3', str(tmp_path / 'b.pt'), '-o', str(out)]) == 0
    soup = torch.load(out, weights_only=True)
    assert soup['model'].keys() == a.keys()
    floats = [k for k, v in a.items() if v.is_floating_point()]
    assert any('running_var' in k for k in floats)                 # BatchNorm statistics are averaged too
    for key in floats:
        torch.testing.assert_close(soup['model'][key], (3 * a[key] + b[key]) / 4, rtol=1e-6, atol=1e-6)
    for key in set(a) - set(floats):                                # counters: the first input's
        assert torch.equal(soup['model'][key], a[key])
    assert not {'iter', 'optimizer', 'history'} & set(soup)         # a start or an export, not a resume
    assert soup['classes'] == NAMES and soup['input_size'] == [64, 96] and soup['arch'] == 'topformer_tiny'
    assert [s['weight'] for s in soup['averaged_from']] == [3.0, 1.0]

    onnx_path = tmp_path / 'soup.onnx'
    assert cli_main(['export', '--checkpoint', str(out), '--fixed-size', '-o', str(onnx_path)]) == 0
    model = create_model('topformer_tiny', num_classes=3).eval()
    model.load_state_dict(soup['model'])
    assert all(r['ok'] for r in ex.check_parity(model, onnx_path, [(64, 96)]))


@pytest.mark.parametrize('case, message', [
    ('one input', 'give two or more checkpoints'),
    ('weight 0', 'the weight after the colon must be a positive number'),
    ('other classes', "num_classes 4 differs from"),
    ('not a checkpoint', 'not a training checkpoint'),
    ('out exists', 'exists; give a new --out'),
])
def test_mistakes_are_one_line_and_exit_2(tmp_path, capsys, case, message):
    _checkpoint(tmp_path / 'a.pt', 1)
    _checkpoint(tmp_path / 'b.pt', 2, num_classes=4 if case == 'other classes' else 3)
    (tmp_path / 'notes.pt').write_text('not torch')
    out = tmp_path / 'soup.pt'
    if case == 'out exists':
        out.write_bytes(b'')
    inputs = {'one input': ['a.pt'], 'weight 0': ['a.pt:0', 'b.pt'], 'not a checkpoint': ['a.pt', 'notes.pt']}
    argv = ['average', *[str(tmp_path / name) for name in inputs.get(case, ['a.pt', 'b.pt'])], '-o', str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
    assert case == 'out exists' or not out.exists()
