"""The training loop on a few tiny generated images (generic dataset layout): config checks, loss falls,
checkpoints round-trip and resume exactly, determinism, model families' outputs, DDP with 2 gloo processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from seg_perception.classes import SCENE_PALETTE
from seg_perception.offline.data.render import write_classes_yaml
from seg_perception.offline.training import augment
from seg_perception.offline.training import config as tc
from seg_perception.offline.training import train as tr
from seg_perception.runtime.metadata import IMAGENET_MEAN

REPO = Path(__file__).resolve().parents[1]
TRAIN_FORMAT_KEYS = {'model', 'arch', 'num_classes', 'classes', 'palette', 'mean', 'std', 'input_size', 'resize_mode',
                     'white_balance'}


def write_scenes(root, n=2, size=(64, 96), seed=0):
    """A generic-layout dataset: images/ (RGB png), masks/ (class ids), classes.yaml; floor below a
    background band, with a few class-coloured rectangles on noisy class colours."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'masks').mkdir(exist_ok=True)
    write_classes_yaml(root / 'classes.yaml')
    h, w = size
    for k in range(n):
        label = np.full((h, w), 5, np.uint8)
        label[h // 2:] = 0
        for cls in (1, 2, 3, 4):
            y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
            label[y:y + rng.integers(8, 16), x:x + rng.integers(8, 16)] = cls
        image = np.asarray(SCENE_PALETTE, np.int16)[label] + rng.integers(-20, 20, (h, w, 3))
        image = np.clip(image, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'images' / f'{k:04d}.png'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / 'masks' / f'{k:04d}.png'), label)
    return root


def tiny_config(data, out, **kw):
    cfg = dict(data=str(data), val_data=str(data), arch='topformer_tiny', input_size=[64, 96],
               crop_size=[64, 96], scale_range=[0.75, 1.25], batch_size=2, workers=0, iters=4, lr=5e-3,
               warmup_iters=2, val_interval=1000, log_interval=1, out=str(out), threads=1)
    cfg.update(kw)
    return cfg


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    torch.set_num_threads(1)
    return write_scenes(tmp_path_factory.mktemp('scenes'))


def losses(report):
    return [row['loss'] for row in report['history']['train']]


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match="'lrr' \\(did you mean 'lr'\\?\\)"):
        tc.check_config({'data': 'x', 'lrr': 0.1})
    for bad in ({'iters': 1.5}, {'crop_size': 'big'}, {'crop_size': [64]}, {'crop_size': [64, 9.5]},
                {'deterministic': 'yes'}, {'lr': 'fast'}, {'resume': 3}, {'arch': 7}):
        with pytest.raises(TypeError, match=next(iter(bad))):
            tc.check_config({'data': 'x', **bad})
    with pytest.raises(ValueError, match='data'):
        tc.check_config({})
    with pytest.raises(ValueError, match='multiples of 32'):
        tc.check_config({'data': 'x', 'input_size': [240, 320]})
    with pytest.raises(ValueError, match="white_balance 'auto' must be one of none, gray_world"):
        tc.check_config({'data': 'x', 'white_balance': 'auto'})
    for weights in ([1.0, 2.0], [1.0, 0.0, 1.0], 'balanced'):
        with pytest.raises(ValueError, match='class_weights'):
            tc.check_config({'data': 'x', 'num_classes': 3, 'loss_kwargs': {'class_weights': weights}})
    for key in ('same_look', 'init_new_classes_from'):
        with pytest.raises(ValueError, match=key):
            tc.check_config({'data': 'x', key: {6: 'floor'}})
        assert tc.check_config({'data': 'x', key: {6: 0}})[key] == {6: 0}
    assert tc.check_config({'data': 'x', 'loss_kwargs': {'class_weights': [1, 2.5]}})['loss_kwargs']
    path = tmp_path / 'cfg.yaml'
    path.write_text(yaml.safe_dump({'data': 'd', 'lr': 1, 'crop_size': [64, 64]}))
    cfg = tc.load_config(path, ['crop_size=[32, 64]', 'resume=true', 'layout=generic', 'out=runs/x'])
    assert cfg['lr'] == 1.0 and isinstance(cfg['lr'], float)
    assert cfg['crop_size'] == [32, 64] and cfg['resume'] is True and cfg['layout'] == 'generic'
    with pytest.raises(ValueError, match='key=value'):
        tc.load_config(path, ['lr0.1'])


@pytest.mark.parametrize('path', sorted((REPO / 'config' / 'train').glob('*.yaml')), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from seg_perception.nets import list_models

    cfg = tc.load_config(path)
    assert cfg['arch'] in list_models()


def test_overfit_two_images_loss_falls_and_report(scenes, tmp_path):
    cfg = tiny_config(scenes, tmp_path / 'run', iters=30, lr=1e-2, warmup_iters=0, scale_range=[1.0, 1.0],
                      hflip=0.0, photometric=0.0, val_interval=30)
    report = tr.train(cfg)
    curve = losses(report)
    assert len(curve) == 30 and all(np.isfinite(curve))
    assert np.mean(curve[-5:]) < 0.5 * np.mean(curve[:3]), curve
    run = tmp_path / 'run'
    for name in ('config.yaml', 'last.pt', 'best.pt', 'metrics.json', 'curves.png', 'confusion.png'):
        assert (run / name).is_file(), name
    saved = json.loads((run / 'metrics.json').read_text())
    assert saved['finished'] and saved['iters'] == 30 and saved['val']['mIoU'] is not None
    assert saved['best_iter'] == 30 and saved['sec_per_iter'] > 0


def test_bad_sample_in_a_loader_worker_is_one_line(tmp_path):
    """The first sample is checked when the dataset opens; a later one is read in a loader worker, whose error
    torch re-raises with the worker's traceback in the message: the trainer gives the worker's one line."""
    from seg_perception.errors import UserError
    data = write_scenes(tmp_path / 'data')
    cv2.imwrite(str(data / 'masks' / '0001.png'), np.zeros((32, 48), np.uint8))   # half the image's size
    with pytest.raises(UserError) as caught:
        tr.train(tiny_config(data, tmp_path / 'run', workers=1, val_data='none'))
    message = str(caught.value)
    assert '\n' not in message and message.endswith('0001.png 48x32; they must be the same size'), message


def test_checkpoint_format_and_exact_resume(scenes, tmp_path):
    straight = tr.train(tiny_config(scenes, tmp_path / 'a', iters=6, save_interval=3))
    partial = tr.train(tiny_config(scenes, tmp_path / 'b', iters=6, save_interval=3), stop_after=3)
    assert not partial['finished'] and partial['iters'] == 3

    ckpt = torch.load(tmp_path / 'b' / 'last.pt', map_location='cpu', weights_only=True)
    assert TRAIN_FORMAT_KEYS <= set(ckpt)
    assert ckpt['arch'] == 'topformer_tiny' and ckpt['num_classes'] == 6 and len(ckpt['classes']) == 6
    assert ckpt['input_size'] == [64, 96] and ckpt['mean'] == IMAGENET_MEAN and ckpt['iter'] == 3
    assert all(isinstance(v, torch.Tensor) for v in ckpt['model'].values())
    assert ckpt['optimizer']['state'] and ckpt['scheduler']['iter'] == 3

    with pytest.raises(FileExistsError, match='resume=true'):
        tr.train(tiny_config(scenes, tmp_path / 'b', iters=6))
    resumed = tr.train(tiny_config(scenes, tmp_path / 'b', iters=6, resume=True))
    assert resumed['finished'] and resumed['iters'] == 6
    assert losses(resumed) == losses(straight)
    a = torch.load(tmp_path / 'a' / 'last.pt', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'last.pt', weights_only=True)
    assert b['iter'] == 6
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_same_seed_same_losses(scenes, tmp_path):
    first = losses(tr.train(tiny_config(scenes, tmp_path / 'a', seed=3)))
    second = losses(tr.train(tiny_config(scenes, tmp_path / 'b', seed=3)))
    other = losses(tr.train(tiny_config(scenes, tmp_path / 'c', seed=4)))
    assert first == second
    assert first != other


def test_sampler_streams_split_the_global_batch():
    single = augment.InfiniteSampler(5, 4, seed=1)
    ranks = [augment.InfiniteSampler(5, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    take = lambda sampler, n: [next(it) for it in [iter(sampler)] for _ in range(n)]  # noqa: E731
    stream = take(single, 12)
    r0, r1 = take(ranks[0], 6), take(ranks[1], 6)
    assert [*r0[0:2], *r1[0:2], *r0[2:4], *r1[2:4], *r0[4:6], *r1[4:6]] == stream
    assert sorted(i for i, _ in stream[:5]) == list(range(5))
    assert take(augment.InfiniteSampler(5, 4, seed=1, start_iter=2), 4) == stream[8:12]


@pytest.mark.parametrize('arch', ['rtformer_slim', 'tokenpass_vit_mini'])
def test_model_families_with_aux_outputs(scenes, tmp_path, arch):
    report = tr.train(tiny_config(scenes, tmp_path / arch, arch=arch, iters=2, val_interval=2))
    assert report['finished'] and all(np.isfinite(losses(report)))
    parts = report['history']['train'][-1]
    if arch == 'rtformer_slim':
        assert 'aux0' in parts and 'ce' in parts


def test_distillation_from_static_twin(scenes, tmp_path):
    tr.train(tiny_config(scenes, tmp_path / 'teacher', arch='static_vit_mini', iters=1, val_data='none'))
    report = tr.train(tiny_config(scenes, tmp_path / 'student', arch='tokenpass_vit_mini', iters=2,
                                  val_data='none', teacher=str(tmp_path / 'teacher' / 'last.pt'), kd_weight=1.0))
    assert report['finished'] and all(np.isfinite(losses(report)))
    generic = tr.train(tiny_config(scenes, tmp_path / 'generic', iters=2, val_data='none', kd_weight=0.5,
                                   teacher=str(tmp_path / 'teacher' / 'last.pt')))
    assert 'kd' in generic['history']['train'][-1]


def test_init_from_checkpoint_with_another_head(scenes, tmp_path):
    tr.train(tiny_config(scenes, tmp_path / 'src', iters=1, val_data='none'))
    ckpt = torch.load(tmp_path / 'src' / 'last.pt', weights_only=True)
    from seg_perception.nets import create_model

    model = create_model('topformer_tiny', num_classes=3)
    messages = []
    tr.load_init_weights(model, tmp_path / 'src' / 'last.pt', messages.append)
    same = [k for k, v in model.state_dict().items() if torch.equal(v, ckpt['model'][k])]
    assert len(same) > 0.9 * len(ckpt['model']) and 'kept fresh' in messages[0]

    # one class more, its classifier rows copied from class 0: the old classes' rows as they were
    old_classes = ckpt['model']['decode_head.conv_seg.bias'].shape[0]
    wider = create_model('topformer_tiny', num_classes=old_classes + 1)
    tr.load_init_weights(wider, tmp_path / 'src' / 'last.pt', messages.append, {old_classes: 0})
    for key in ('decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'):
        new, src = wider.state_dict()[key], ckpt['model'][key]
        assert torch.equal(new[:old_classes], src) and torch.equal(new[old_classes], src[0])
    assert 'kept fresh' not in messages[-1]
    with pytest.raises(ValueError, match='no old class for new class'):
        tr.load_init_weights(create_model('topformer_tiny', num_classes=old_classes + 1),
                             tmp_path / 'src' / 'last.pt', messages.append, {old_classes + 5: 0})


def test_frozen_trunk_keeps_its_weights_and_statistics(scenes, tmp_path):
    """``freeze``: a trained TopFormer-tiny under a new per-cell deep head; its trunk and early head leave the run
    as they came in (weights and BatchNorm statistics), the deep head learns; an unknown module is refused."""
    tr.train(tiny_config(scenes, tmp_path / 'tiny', iters=1, val_data='none'))
    src = torch.load(tmp_path / 'tiny' / 'last.pt', weights_only=True)['model']
    report = tr.train(tiny_config(scenes, tmp_path / 'head', arch='adaptive_topformer_cells', iters=2, val_data='none',
                                  init=str(tmp_path / 'tiny' / 'last.pt'), freeze='backbone, decode_head',
                                  aux_weight=0.0))
    assert report['finished']
    out = torch.load(tmp_path / 'head' / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(out[k], v) for k, v in src.items())         # running statistics included
    from seg_perception.nets import create_model

    torch.manual_seed(0)                                                  # the run's seed: its initial deep head
    initial = create_model('adaptive_topformer_cells', num_classes=6).state_dict()
    assert not torch.equal(out['deep.fc1.weight'], initial['deep.fc1.weight'])   # the deep head learnt
    model = create_model('adaptive_topformer_cells', num_classes=6)
    model.freeze(['backbone'])
    model.train()
    assert not model.backbone.training and model.deep.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(ValueError, match=r"cannot freeze \['trunk'\]"):
        model.freeze(['trunk'])
    bad = subprocess.run([sys.executable, '-m', 'seg_perception.offline.cli', 'train',
                          str(REPO / 'config/train/adaptive_topformer_cells_scenes.yaml'), 'freeze=trunk',
                          f'data={scenes}', f'val_data={scenes}', f'init={tmp_path / "tiny" / "last.pt"}',
                          f'out={tmp_path / "bad"}'], capture_output=True, text=True)
    assert bad.returncode == 2 and "freeze='trunk': cannot freeze ['trunk']" in bad.stderr
    assert 'Traceback' not in bad.stderr


def test_ddp_two_gloo_processes(scenes, tmp_path):
    val = write_scenes(tmp_path / 'val', n=3, seed=1)  # 3 images: the ranks validate 2 and 1
    cfg_path = tmp_path / 'ddp.yaml'
    cfg_path.write_text(yaml.safe_dump(tiny_config(scenes, tmp_path / 'ddp', iters=3, val_interval=3,
                                                   batch_size=4, threads=1, val_data=str(val))))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'seg_perception.offline.cli', 'train', str(cfg_path), 'seed=1']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / 'ddp' / 'metrics.json').read_text())
    assert report['world_size'] == 2 and report['finished'] and report['val']['mIoU'] is not None
    assert report['val']['num_pixels'] == 3 * 64 * 96
    ckpt = torch.load(tmp_path / 'ddp' / 'last.pt', weights_only=True)
    assert ckpt['iter'] == 3 and not any(k.startswith('module.') for k in ckpt['model'])
    assert proc.stderr.count('resumed') == 0 and (tmp_path / 'ddp' / 'best.pt').is_file()
