"""The front door: every user mistake in every ``seg-perception`` sub-command is one line on stderr, exit code 2,
no traceback; help texts teach (every option has help and shows its default, one example per command)."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seg_perception.offline import argtypes, cli

ROOT = Path(__file__).resolve().parents[1]
BAG = ROOT / 'samples' / 'scenes_sample'
MODEL = ROOT / 'models' / 'topformer_tiny_scenes.onnx'
TOKENPASS = ROOT / 'models' / 'tokenpass_vit_mini_scenes.onnx'


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


# numeric options that take plain int/float: any value means something (a pitch, an RGB mean, a share of -1 that
# sends every frame to the large model), or the command checks the value with its own message (tested with it)
PLAIN_NUMBERS = {'bench costmap --camera-pitch', 'export --mean', 'bench cascade --shares', 'export --token-buckets',
                 'export --tile-buckets', 'calibrate --quantile', 'calibrate --tap-shrinkage',
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
