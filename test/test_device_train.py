"""scripts/device_train.py: what comes back from a lease (weights in parts, no optimizer) merges into the run's
checkpoint, and run specs are parsed or refused."""
import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'device_train.py'


@pytest.fixture(scope='module')
def device_train():
    spec = importlib.util.spec_from_file_location('device_train', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parts_merge_into_the_checkpoint(device_train, tmp_path):
    model = {f'layer{i}.weight': torch.randn(64, 256) for i in range(5)}   # 64 KiB each
    model['bn.num_batches_tracked'] = torch.tensor(7)
    ckpt = {'model': model, 'optimizer': {'state': {0: torch.zeros(3)}}, 'arch': 'topformer_tiny', 'iter': 42,
            'history': {'train': [{'iter': 42, 'loss': 0.5}], 'val': []}}
    torch.save(ckpt, tmp_path / 'last.pt')
    names = device_train.save_parts(tmp_path / 'last.pt', tmp_path / 'back', part_mib=0.15)
    assert len(names) == 3      # two 64 KiB tensors fit in 0.15 MiB, a third does not
    assert all((tmp_path / 'back' / n).stat().st_size < 0.2 * 2 ** 20 for n in names)
    device_train.merge(tmp_path / 'back', tmp_path / 'merged.pt')
    merged = torch.load(tmp_path / 'merged.pt', weights_only=True)
    assert set(merged['model']) == set(model)
    assert all(torch.equal(merged['model'][k], v) for k, v in model.items())
    assert merged['iter'] == 42 and merged['history'] == ckpt['history'] and 'optimizer' not in merged


def test_run_specs(device_train):
    name, config, overrides = device_train.parse_run('tiny=config/train/x.yaml out=/tmp/a crop_size=[64,96]')
    assert (name, config, overrides) == ('tiny', 'config/train/x.yaml', ['out=/tmp/a', 'crop_size=[64,96]'])
    with pytest.raises(argparse.ArgumentTypeError, match='NAME=CONFIG'):   # a usage error of the command line
        device_train.parse_run('config/train/x.yaml')


def test_run_dir_is_the_configs_out_or_its_override(device_train):
    config = str(Path(__file__).resolve().parents[1] / 'config' / 'train' / 'topformer_tiny_camvid_s4.yaml')
    assert device_train.run_dir(config, []) == Path('runs/topformer_tiny_camvid_s4')
    assert device_train.run_dir(config, ['out=/tmp/elsewhere']) == Path('/tmp/elsewhere')
