"""The front door: every user mistake in every ``seg-perception`` sub-command is one line on stderr, exit code 2,
no traceback; help texts teach (every option has help and shows its default, one example per command)."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_perception.offline import argtypes, cli

ROOT = Path(__file__).resolve().parents[1]
BAG = ROOT / 'samples' / 'scenes_sample'
MODEL = ROOT / 'models' / 'topformer_tiny_scenes.onnx'
TOKENPASS = ROOT / 'models' / 'tokenpass_vit_mini_scenes.onnx'
ADAPTIVE = ROOT / 'models' / 'adaptive_topformer_tiny_scenes.onnx'
E = ['--arch', 'topformer_tiny', '--num-classes', '6', '--input-size', '64', '64']   # an export without a checkpoint


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Things a user gets wrong: a text file posing as a checkpoint or model, an empty dataset, a run folder
    that already holds a run, a config with a typo."""
    d = tmp_path_factory.mktemp('mistakes')
    (d / 'notes.pt').write_text('not a checkpoint\n')
    (d / 'notes.onnx').write_text('not a model\n')
    empty = d / 'empty_dataset'
    (empty / 'images').mkdir(parents=True)
    (empty / 'masks').mkdir()
    (empty / 'classes.yaml').write_text('names: [floor, wall]\n')
    run = d / 'run'
    run.mkdir()
    (run / 'last.pt').write_bytes(b'')
    (d / 'typo.yaml').write_text(f'data: {BAG}\nval_intervall: 10\n')
    (d / 'good.yaml').write_text(f'data: {BAG}\nimage_topic: /camera/image_raw\nout: {run}\n')
    (d / 'empty.yaml').write_text(f'data: {empty}\nout: {d / "fresh"}\n')
    (d / 'evil.yaml').write_text(f'data: !!python/object/apply:os.system ["touch {d}/pwned"]\n')
    (d / 'broken.yaml').write_text('root: [unclosed\n')
    (d / 'existing_bag').mkdir()
    (d / 'existing_bag' / 'keep.txt').write_text('x')
    (d / 'trunc.onnx').write_bytes(MODEL.read_bytes()[:4096])
    for name, mask in (('mismatch', np.zeros((12, 16), np.uint8)), ('badmask', np.full((24, 32), 77, np.uint8)),
                       ('two_class', np.zeros((24, 32), np.uint8))):
        (d / name / 'images').mkdir(parents=True)
        (d / name / 'masks').mkdir()
        cv2.imwrite(str(d / name / 'images' / 'a.png'), np.zeros((24, 32, 3), np.uint8))
        cv2.imwrite(str(d / name / 'masks' / 'a.png'), mask)
    (d / 'two_class' / 'classes.yaml').write_text('names: [floor, wall]\n')
    (d / 'typo_data.yaml').write_text('layout: generic\nroot: two_class\nsplt: val\n')
    (d / 'mix_typo.yaml').write_text('mix:\n  - {root: two_class, weight: 2}\n')
    (d / 'mix_int.yaml').write_text('mix: 5\n')
    (d / 'list_data.yaml').write_text('- root\n- split\n')
    (d / 'root_list.yaml').write_text('layout: camvid\nroot: [1, 2]\n')
    (d / 'mix_map.yaml').write_text(f'mix:\n  - {{root: {BAG}, label_map: {{0: 99}}}}\n')
    (d / 'split_data.yaml').write_text('layout: camvid\nroot: two_class\nsplit: nosuch\n')
    import onnx
    import torch

    from seg_perception.nets import create_model
    proto = onnx.load(str(MODEL))   # as exported before metadata was checked: NaN in its mean
    next(p for p in proto.metadata_props if p.key == 'mean').value = '[NaN, 116.28, 103.53]'
    onnx.save(proto, str(d / 'nan_mean.onnx'))
    torch.save({'model': create_model('topformer_tiny', num_classes=6).state_dict(), 'arch': 'topformer_tiny',
                'num_classes': 6, 'input_size': [64, 64]}, d / 'tiny6.pt')   # a real 6-class checkpoint, untrained
    assert cli.main(['render', '--generator', 'raycast', '--out', str(d / 'rendered'), '--split', 'val', '--frames',
                     '1', '--width', '32', '--height', '24']) == 0
    return d


# (command, arguments, words the one line must contain); {d} is the fixture folder
MISTAKES = [
    ('render', ['--out', '{d}/r', '--clutter', 'lots'], ['--clutter']),
    ('render', ['--out', '{d}/r', '--layouts', 'castle'], ['castle']),
    ('render', ['--bag', '{d}/existing_bag', '--frames', '1'], ['existing_bag', 'exists']),
    ('render', [], ['--out']),
    ('cover', ['{d}/nowhere', '--out', '{d}/c'], ['nowhere', 'no masks']),
    ('cover', ['{d}', '--out', '{d}'], ['--out']),
    ('train', ['{d}/missing.yaml'], ['missing.yaml', 'not found']),
    ('train', ['{d}/typo.yaml'], ['val_intervall', "did you mean 'val_interval'"]),
    ('train', ['{d}/good.yaml', 'lr=fast'], ['lr']),
    ('train', ['{d}/good.yaml', 'hflip=1.5'], ['hflip', 'probability', '1.5']),
    ('train', ['{d}/evil.yaml'], ['python/object/apply']),
    ('train', ['{d}/good.yaml', 'iters'], ['iters', 'key=value']),
    ('train', ['{d}/good.yaml'], ['last.pt', 'exist']),
    ('train', ['{d}/empty.yaml'], ['empty_dataset', 'no image']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/nowhere'], ['nowhere', 'not found']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}', '--merge', 'covered_floor'], ['--merge', 'covered_floor']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}'], ['not a dataset']),
    ('evaluate', ['--model', str(MODEL), '--data', str(BAG), '--image-topic', '/cam'],
     ['/cam', '/camera/image_raw']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/empty_dataset'], ['empty_dataset', 'no image']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/broken.yaml'], ['broken.yaml']),
    ('evaluate', ['--model', '{d}/missing.onnx', '--data', str(BAG)], ['missing.onnx', 'not found']),
    ('evaluate', ['--model', str(MODEL), '--data', str(BAG), '--input-size', '0', '512'], ['input_size', '(0, 512)']),
    ('evaluate', ['--model', '{d}/notes.onnx', '--data', str(BAG)], ['notes.onnx', 'not an ONNX']),
    ('evaluate', ['--model', '{d}/notes.pt', '--data', str(BAG)], ['notes.pt', 'not a seg_perception checkpoint']),
    ('export', ['--checkpoint', '{d}/notes.pt', '-o', '{d}/x.onnx'], ['notes.pt', 'not a seg_perception checkpoint']),
    ('export', ['--checkpoint', '{d}/missing.pt', '-o', '{d}/x.onnx'], ['missing.pt', 'not found']),
    ('export', ['--arch', 'topformer_tiny', '--num-classes', '6', '-o', '{d}/x.onnx'], ['--input-size']),
    ('export', ['--arch', 'topformr_tiny', '--num-classes', '6', '--input-size', '64', '64', '-o', '{d}/x.onnx'],
     ['topformr_tiny', 'topformer_tiny']),
    ('flops', ['--arch', 'topformer_tny'], ['topformer_tny', 'did you mean']),
    ('flops', ['--arch', 'topformer_tiny', '--input-sise', '64', '64'], ["did you mean '--input-size'"]),
    ('bench', ['tokenpass', '--model', '{d}/missing.onnx', '--static', str(MODEL), '--data', str(BAG)],
     ['missing.onnx', 'not found']),
    ('bench', ['tokenpass', '--model', str(TOKENPASS), '--static', str(MODEL), '--data', '{d}/nowhere'],
     ['nowhere', 'not found']),
    ('bench', ['nosuchbench'], ['nosuchbench']),
    ('bench', ['tokenpas'], ["did you mean 'tokenpass'"]),
    ('replay', ['{d}/nowhere'], ['nowhere', 'not found']),
    ('replay', ['{d}'], ['not a', 'bag']),
    ('replay', [str(BAG), '--image-topic', '/cam'], ['/cam', '/camera/image_raw']),
    ('replay', [str(BAG), '--model', '{d}/notes.onnx'], ['notes.onnx', 'not an ONNX']),
    ('occupancy', ['{d}/nowhere'], ['nowhere', 'not found']),
    ('occupancy', [str(BAG), '--model', '{d}/notes.onnx'], ['notes.onnx', 'not an ONNX']),
    ('calibrate', ['--model', str(MODEL), '--data', '{d}/nowhere', '-o', '{d}/c.onnx'], ['nowhere', 'not found']),
    ('calibrate', ['--model', '{d}/notes.onnx', '--data', str(BAG), '-o', '{d}/c.onnx'], ['notes.onnx']),
    ('soak', ['--model', '{d}/missing.onnx'], ['missing.onnx', 'not found']),
    ('soak', ['--minutes', '0.05'], ['--minutes', '10 seconds']),
    ('recover', ['{d}/missing.onnx', '--arch', 'topformer_tiny', '--calib', str(BAG), '-o', '{d}/r.pt'],
     ['missing.onnx', 'not found']),
    ('recover', [str(MODEL), '--arch', 'topformer_tiny', '--calib', str(BAG), '-o', '{d}/notes.pt'],
     ['notes.pt', 'exists']),
    ('recover', [str(TOKENPASS), '--arch', 'tokenpass_vit_mini', '--calib', str(BAG), '-o', '{d}/r.pt'],
     ['TokenPassViT', 'not found in the file', 'convolutions + BatchNorm']),
    ('average', ['{d}/missing.pt', '{d}/notes.pt', '-o', '{d}/soup.pt'], ['missing.pt', 'not found']),
    ('average', ['{d}/notes.pt:2', '{d}/notes.pt', '-o', '{d}/soup.pt'], ['notes.pt', 'not a training checkpoint']),
    ('demo', ['--bag', '{d}/nowhere'], ['nowhere', 'not found']),
    ('demo', ['--bag', str(BAG), '--image-topic', '/cam'], ['/cam', '/camera/image_raw']),
    ('demo', ['--model', '{d}/notes.onnx'], ['notes.onnx', 'not an ONNX']),
    ('replay', [str(BAG), '--model', '{d}/missing.onnx'], ['missing.onnx', 'not found']),
    ('replay', [str(BAG), '--model', '{d}/notes.onnx', '--out', '{d}/replay_out'], ['notes.onnx', 'not an ONNX']),
    ('replay', [str(BAG), '--out', '{d}/existing_bag'], ['existing_bag', 'not a replay report']),
    # session 52's audit: values that crashed deep inside or ran and exited 0 with nonsense
    ('render', ['--out', '{d}/r', '--generator', 'raycast', '--width', '1'], ['--width', '1', '2 pixels']),
    ('render', ['--out', '{d}/r', '--height', '1'], ['--height', '1', '2 pixels']),
    ('render', ['--out', '{d}/r', '--clutter', 'nan,nan'], ['--clutter', 'nan,nan', '[0, 1]']),
    ('render', ['--out', '{d}/r', '--clutter', '1,0'], ['--clutter', '1,0', 'lo <= hi']),
    ('render', ['--out', '{d}/r', '--clutter', '0,5'], ['--clutter', '0,5', '[0, 1]']),
    ('render', ['--out', '{d}/r', '--layouts', ''], ['--layouts', 'room, corridor, open']),
    ('render', ['--out', '{d}/r', '--generator', 'raycast', '--layouts', ','], ['--layouts', "','"]),
    ('render', ['--out', '{d}/r', '--fov', '0,0'], ['--fov', '0,0', '(0, 180)']),
    ('render', ['--out', '{d}/r', '--fov', '170,200'], ['--fov', '170,200', '(0, 180)']),
    ('render', ['--out', '{d}/r', '--fov=-10,10'], ['--fov', '-10,10', '(0, 180)']),
    ('render', ['--out', '{d}/r', '--generator', 'raycast', '--fov', '0,0'], ['--fov', '0,0', '(0, 180)']),
    ('render', ['--out', '{d}/r', '--cam-height=-1,0'], ['--cam-height', '-1,0', '> 0']),
    ('render', ['--out', '{d}/r', '--pitch=-inf,inf'], ['--pitch', '-inf,inf', '[-90, 90]']),
    ('cover', ['{d}/rendered', '--split', 'val', '--inset', '100000', '--out', '{d}/c'], ['--inset', '100000', '99']),
    ('bench', ['costmap', '--resolution', '100'], ['--resolution', '100', 'needs sizes >= resolution']),
    ('bench', ['costmap', '--resolution', '0.00001'], ['--resolution', '1e-05', '10000 cells']),
    ('bench', ['costmap', '--grid', 'inf'], ['--grid', 'inf', 'finite']),
    ('bench', ['costmap', '--camera-z', 'inf'], ['--camera-z', 'inf', 'finite']),
    ('soak', ['--minutes', 'nan'], ['--minutes', 'nan', '10 seconds']),
    ('soak', ['--minutes', 'inf'], ['--minutes', 'inf', 'finite']),
    ('bench', ['node-cpu', '--model', '{d}/notes.onnx', '--seconds', '1'], ['notes.onnx', 'not an ONNX']),
    ('bench', ['node-cpu', '--model', '{d}/trunc.onnx', '--seconds', '1'], ['trunc.onnx', 'cannot load model']),
    ('occupancy', [str(BAG), '--sweep', '0.5,7'], ['--sweep', '0.5,7', '7 must be in [0, 1]']),
    ('occupancy', [str(BAG), '--sweep', 'nan'], ['--sweep', 'nan', 'in [0, 1]']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/typo_data.yaml'], ['typo_data.yaml', "'splt'", 'split']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/mix_typo.yaml'], ['mix_typo.yaml', 'mix entry 1', "'weight'"]),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/mix_int.yaml'], ['mix_int.yaml', 'mix must be a list']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/list_data.yaml'], ['list_data.yaml', 'mapping']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/root_list.yaml'], ['root_list.yaml', 'root', '[1, 2]']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/mix_map.yaml'], ['mix_map.yaml', 'mix entry 1', '99']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/split_data.yaml'], ['CamVid nosuch']),
    ('train', ['{d}/empty.yaml', 'data={d}/typo_data.yaml'], ['typo_data.yaml', "'splt'"]),
    ('bench', ['tokenpass', '--model', str(TOKENPASS), '--static', str(MODEL), '--data', '{d}/mix_typo.yaml'],
     ['mix_typo.yaml', "'weight'"]),
    ('evaluate', ['--model', str(MODEL), '--data', str(BAG), '--layout', 'bogus'], ['bogus', 'generic']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/mismatch'], ['a.png', '32x24', '16x12']),
    ('calibrate', ['--model', str(MODEL), '--data', '{d}/mismatch', '-o', '{d}/c.onnx'], ['a.png', '32x24', '16x12']),
    ('train', ['{d}/empty.yaml', 'data={d}/mismatch'], ['a.png', '32x24', '16x12']),
    ('bench', ['refine-rule', '--model', str(MODEL), '--data', '{d}/mismatch'], ['a.png', '32x24', '16x12']),
    ('evaluate', ['--model', str(MODEL), '--data', '{d}/badmask'], ['a.png', 'label value 77']),
    ('calibrate', ['--model', str(MODEL), '--data', '{d}/badmask', '-o', '{d}/c.onnx'], ['a.png', 'label value 77']),
    ('evaluate', ['--model', str(MODEL), '--data', str(BAG), '--gt-topic', '/camera/camera_info'],
     ['/camera/camera_info', 'CameraInfo']),
    ('evaluate', ['--model', str(MODEL), '--data', str(BAG), '--image-topic', '/camera/camera_info'],
     ['/camera/camera_info', 'CameraInfo']),
    ('bench', ['tokenpass', '--model', str(TOKENPASS), '--static', str(MODEL), '--data', '{d}/two_class'],
     ['6 classes', 'the dataset has 2']),
    ('bench', ['adaptive', '--model', str(ADAPTIVE), '--static', str(MODEL), '--data', '{d}/two_class'],
     ['6 classes', 'the dataset has 2']),
    ('bench', ['refine-rule', '--model', str(MODEL), '--data', '{d}/two_class'], ['6 classes', 'the dataset has 2']),
    ('bench', ['cascade', '--small', str(MODEL), '--large', str(MODEL), '--data', '{d}/two_class'],
     ['6 classes', 'the dataset has 2']),
    ('bench', ['cascade', '--small', str(MODEL), '--large', str(MODEL), '--data', str(BAG), '--shares', '2'],
     ['--shares 2', '[-1, 1]']),
    ('bench', ['cascade', '--small', str(MODEL), '--large', str(MODEL), '--data', str(BAG), '--shares', '0.1', 'nan'],
     ['--shares nan', '[-1, 1]']),
    ('bench', ['adaptive', '--model', str(ADAPTIVE), '--data', str(BAG), '--plot', '{d}/chart.txt'],
     ['--plot', 'chart.txt', '.png']),
    ('bench', ['adaptive', '--model', str(ADAPTIVE), '--data', str(BAG), '--plot', '{d}'], ['--plot', 'is a folder']),
    ('train', ['{d}/good.yaml', 'arch=nosuch'], ['nosuch', 'unknown model']),
    ('recover', [str(MODEL), '--arch', 'nosuch', '--calib', str(BAG), '-o', '{d}/r.pt'], ['nosuch', 'unknown model']),
    ('bench', ['adaptive-cost', '--arch', 'nosuch'], ['nosuch', 'unknown model']),
    ('bench', ['adaptive-cost', '--arch', 'topformer_tiny'], ['--arch topformer_tiny', 'not an adaptive']),
    ('bench', ['adaptive-cost', '--static', 'nosuch'], ['nosuch', 'unknown model']),
    ('recover', ['{d}/notes.onnx', '--arch', 'topformer_tiny', '--calib', str(BAG), '-o', '{d}/r.pt'],
     ['notes.onnx', 'not an ONNX']),
    ('recover', ['{d}/trunc.onnx', '--arch', 'topformer_tiny', '--calib', str(BAG), '-o', '{d}/r.pt'],
     ['trunc.onnx', 'cannot load model']),
    ('bench', ['engine', '--models', '{d}/trunc.onnx', '--sizes', '64x64'], ['trunc.onnx', 'cannot load model']),
    ('bench', ['ops', '--model', '{d}/notes.onnx'], ['notes.onnx', 'not an ONNX']),
    ('bench', ['engine', '--models', 'topformer_tiny:0', '--sizes', '64x64'], ['topformer_tiny:0', 'positive integer']),
    ('export', [*E[:4], '--input-size', '33', '320', '-o', '{d}/x.onnx'], ['33 320', 'stride 32']),
    ('export', ['--checkpoint', '{d}/tiny6.pt', '--num-classes', '7', '-o', '{d}/x.onnx'],
     ['tiny6.pt', '7 classes', '--num-classes']),
    ('export', [*E, '--token-buckets', '0.5', '1', '-o', '{d}/x.onnx'], ['--token-buckets', 'topformer_tiny']),
    ('export', [*E, '--tile-buckets', '0.5', '1', '-o', '{d}/x.onnx'], ['--tile-buckets', 'topformer_tiny']),
    ('export', [*E, '--opset', '3', '-o', '{d}/x.onnx'], ['--opset 3', 'torchscript exporter']),
    ('export', [*E, '--std', 'inf', '1', '1', '-o', '{d}/x.onnx'], ['--std inf', 'finite']),
    ('export', [*E, '--int8', '-o', '{d}/x.onnx'], ['--int8', '--calib']),
    ('export', [*E, '--int8', '--calib', '{d}/nowhere', '-o', '{d}/x.onnx'], ['nowhere', 'not found']),
    ('evaluate', ['--model', '{d}/nan_mean.onnx', '--data', str(BAG)], ['nan_mean.onnx', 'mean', 'finite']),
    ('train', ['{d}/good.yaml', 'device=bogus'], ['bogus', 'not a torch device']),
    ('train', ['{d}/good.yaml', 'device=cuda:99'], ['cuda:99']),
    ('train', ['{d}/good.yaml', 'loss_kwargs={{bogus: 1}}'], ['loss_kwargs', 'bogus']),
    ('train', [str(MODEL)], ['topformer_tiny_scenes.onnx', 'not a text file']),
    ('average', ['{d}/notes.pt:inf', '{d}/notes.pt', '-o', '{d}/soup.pt'], ['notes.pt:inf', 'positive number']),
    ('average', ['{d}/notes.pt', '{d}/notes.pt', '-o', '{d}/notes.onnx/soup.pt'], ['notes.onnx', 'exists']),
    ('flops', ['--arch', 'topformer_tiny', '--input-size', '100000', '100000'],
     ['--input-size 100000 100000', 'pixels']),
]


def run_cli(argv, capfd):
    """(exit code, stdout, stderr) of ``seg-perception ARGV`` run in this process (an uncaught exception, i.e.
    a traceback, fails the test by propagating)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


def test_every_command_has_a_mistake_row_and_an_example():
    covered = {cmd for cmd, _, _ in MISTAKES}
    assert set(cli.COMMANDS) <= covered, f'add MISTAKES rows for {sorted(set(cli.COMMANDS) - covered)}'
    assert set(cli.COMMANDS) <= set(cli.EXAMPLES), f'add EXAMPLES for {sorted(set(cli.COMMANDS) - set(cli.EXAMPLES))}'


@pytest.mark.parametrize('command,args,words', MISTAKES, ids=[f'{c}-{i}' for i, (c, _, _) in enumerate(MISTAKES)])
def test_mistake_is_one_line_exit_2(command, args, words, files, capfd, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    argv = [command] + [a.format(d=files) for a in args]
    code, out, err = run_cli(argv, capfd)
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and 'Traceback' not in err, (err, out)
    for word in words:
        assert word.format(d=files).lower() in lines[0].lower(), (word, lines[0])
    assert not (files / 'pwned').exists(), 'a config value was evaluated'


@pytest.mark.parametrize('command', list(cli.COMMANDS))
def test_usage_mistake_is_one_line(command, capfd):
    """An unknown option (or, first, the required arguments missing): one line naming it."""
    code, _, err = run_cli([command, '--no-such-option'], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert '--no-such-option' in err or 'required' in err, err


def test_unknown_command_suggests_the_nearest(capfd):
    code, _, err = run_cli(['evalute'], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown command 'evalute'" in err and "did you mean 'evaluate'" in err


def test_programming_errors_keep_their_traceback(monkeypatch):
    from seg_perception.offline.evaluation import flops

    def broken(args):
        raise ZeroDivisionError('a bug')

    monkeypatch.setattr(flops, 'run', broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(['flops', '--arch', 'topformer_tiny'])


def test_top_level_help_is_plain_text_with_one_example_per_command(capfd):
    code, out, _ = run_cli(['--help'], capfd)
    assert code == 0
    assert '``' not in out and ':func:' not in out and ':class:' not in out
    for name in cli.COMMANDS:
        assert f'seg-perception {name} ' in out, name


def _walk(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _walk(child)


@pytest.mark.parametrize('command', list(cli.COMMANDS))
def test_every_option_has_help_and_shows_its_default(command):
    _, parser = cli.build_parser(command)
    for p in _walk(parser):
        text = p.format_help()
        assert '``' not in text, p.prog
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f'{p.prog} {action.option_strings or action.dest} has no help'
            shown = p.formatter_class(p.prog)._get_help_string(action)
            has_default = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
            if has_default:
                assert 'default' in shown.lower(), f'{p.prog} {action.option_strings} hides its default'


# numeric options that take plain int/float: the command checks the value with its own message (tested with it;
# e.g. cascade shares in [-1, 1], where -1 sends every frame to the large model)
PLAIN_NUMBERS = {'bench cascade --shares', 'calibrate --quantile', 'calibrate --tap-shrinkage',
                 'calibrate --costmap-min-confidence', 'soak --minutes', 'bench node-cpu --max-rate',
                 'bench node-cpu --threads'}
BAD_VALUE = {argtypes.positive_int: '0', argtypes.non_negative_int: '-1', argtypes.positive_float: '0',
             argtypes.non_negative_float: '-0.5', argtypes.share: '1.5', argtypes.ros_domain_id: '233',
             argtypes.finite_float: 'nan'}


def _parsers_with_argv(parser, argv):
    yield argv, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers_with_argv(child, [*argv, name])


@pytest.mark.parametrize('command', list(cli.COMMANDS))
def test_numeric_options_refuse_values_out_of_range(command, capfd):
    """Every numeric option is range-checked while the command line is parsed: a count of 0 or -1, a share of
    1.5, ... is one line naming the option and the value, exit 2, before any work (plain int/float only where
    PLAIN_NUMBERS says why)."""
    _, parser = cli.build_parser(command)
    checked = 0
    for argv, p in _parsers_with_argv(parser, [command]):
        for action in p._actions:
            if action.type in (int, float):
                assert f'{" ".join(argv)} {action.option_strings[0]}' in PLAIN_NUMBERS, \
                    f'{" ".join(argv)} {action.option_strings}: plain {action.type.__name__}; use seg_perception.' \
                    'offline.argtypes or add it to PLAIN_NUMBERS with the reason'
            if action.type not in BAD_VALUE:
                continue
            option, bad = action.option_strings[0], BAD_VALUE[action.type]
            values = [bad] * (action.nargs if isinstance(action.nargs, int) else 1)
            code, _, err = run_cli([*argv, option, *values], capfd)
            assert code == 2 and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, (argv, option, err)
            assert f'{option}: {bad} must be' in err, err
            checked += 1
    # train: numbers are key=value config entries; average: weights inside CHECKPOINT:WEIGHT (checked in run)
    assert checked or command in ('train', 'average'), f'{command}: no range-checked option'


def test_train_help_lists_config_keys_with_types_and_defaults(capfd):
    from seg_perception.offline.training.config import DEFAULTS
    code, out, _ = run_cli(['train', '--help'], capfd)
    assert code == 0
    for key in DEFAULTS:
        assert f'\n  {key} ' in out, key
    assert 'lr ' in out and '0.001' in out and 'int' in out and 'float' in out


def test_console_script_mistake_has_no_traceback(tmp_path):
    """A process of its own, as a user runs it (the console script calls the same main)."""
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    proc = subprocess.run([sys.executable, '-m', 'seg_perception.offline.cli', 'evaluate', '--model', str(MODEL),
                           '--data', str(tmp_path / 'nowhere')],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'seg-perception evaluate: error: {tmp_path / "nowhere"}: not found (give a dataset folder, a dataset '
        'YAML or a rosbag2 folder)']


def test_images_options_take_render_output_folder_yaml_and_bag(tmp_path):
    """--calib and the other image options read what render writes (split subfolders), a folder of images, a
    dataset YAML and a bag."""
    import cv2

    from seg_perception.offline.data.images import load_images

    rng = np.random.default_rng(0)
    plain = tmp_path / 'plain'
    plain.mkdir()
    for i in range(3):
        cv2.imwrite(str(plain / f'{i}.png'), rng.integers(0, 255, (24, 32, 3), np.uint8))
    rendered = tmp_path / 'rendered'
    for split in ('train', 'val'):
        (rendered / 'images' / split).mkdir(parents=True)
        (rendered / 'masks' / split).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(rendered / 'images' / split / f'{split}{i}.png'),
                        rng.integers(0, 255, (24, 32, 3), np.uint8))
            cv2.imwrite(str(rendered / 'masks' / split / f'{split}{i}.png'), np.zeros((24, 32), np.uint8))
    (rendered / 'classes.yaml').write_text('names: [floor, wall]\n')
    spec = tmp_path / 'data.yaml'
    spec.write_text('root: rendered\nsplit: val\n')
    counts = {
        'plain folder': len(load_images(plain)),
        'render output (all splits)': len(load_images(rendered)),
        'render output split': len(load_images(rendered, split='train')),
        'dataset YAML': len(load_images(spec)),
        'bag': len(load_images(BAG, count=5)),
    }
    assert counts == {'plain folder': 3, 'render output (all splits)': 4, 'render output split': 2,
                      'dataset YAML': 2, 'bag': 5}
    for image in load_images(BAG, count=1) + load_images(rendered, count=1):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    with pytest.raises(cli.UserError, match='/camera/nope.*its topics'):
        load_images(BAG, topic='/camera/nope')
