"""MAC counting: papers' convention for the mobile models, generic modules, and the CLI."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seg_perception.nets import create_model
from seg_perception.offline import cli
from seg_perception.offline.evaluation.flops import count_macs, count_params

torch.set_num_threads(1)

# FACTS.md: mmcv 1.x style with BatchNorm counted, 1x3x512x512, 150 classes (G)
MMCV_MACS = {
    'topformer_tiny': 0.577, 'topformer_small': 1.165, 'topformer_base': 1.813,
    'seaformer_tiny': 0.608, 'seaformer_small': 1.088, 'seaformer_base': 1.827, 'seaformer_large': 6.530,
}
# FACTS.md: torch FlopCounterMode FLOPs / 2 (convolutions and matrix products only)
PRODUCT_MACS = {
    'topformer_tiny': 0.534, 'topformer_small': 1.112, 'topformer_base': 1.752,
    'seaformer_tiny': 0.563, 'seaformer_small': 1.031, 'seaformer_base': 1.758, 'seaformer_large': 6.340,
}


@pytest.mark.parametrize('name', list(MMCV_MACS))
def test_macs_agree_with_papers(name):
    total, details = count_macs(create_model(name), (1, 3, 512, 512))
    assert abs(total / 1e9 - MMCV_MACS[name]) <= 0.02 * MMCV_MACS[name]
    products = (details['conv'] + details['matmul']) / 1e9
    assert abs(products - PRODUCT_MACS[name]) <= 0.001 + 0.002 * PRODUCT_MACS[name]


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4, bias=False)

    def forward(self, x, scale=1.0):
        x = self.act(self.bn(self.conv(x)))
        tokens = self.norm(x.flatten(2).transpose(1, 2))
        q = tokens.unsqueeze(1)
        F.scaled_dot_product_attention(q, q, q)
        return self.fc(torch.matmul(tokens.transpose(1, 2), tokens) @ tokens.transpose(1, 2)[..., :8] * scale)


def test_count_macs_generic_module():
    total, d = count_macs(_Toy(), (1, 3, 4, 4), scale=2.0)
    n = 16
    assert d['conv'] == n * 8 * 27 and d['bias'] == n * 8
    assert d['norm'] == 2 * n * 8 + 2 * n * 8
    assert d['activation'] == n * 8
    assert d['attention'] == n * n * (8 + 8)
    assert d['matmul'] == 8 * n * 8 + 8 * 8 * 8
    assert d['linear'] == 8 * 8 * 4
    assert total == sum(d.values())


def test_count_params():
    assert count_params(nn.Linear(3, 2)) == 8


def test_cli(capsys):
    assert cli.main(['flops', '--arch', 'topformer_tiny', '--num-classes', '19', '--input-size', '64', '96']) == 0
    out = capsys.readouterr().out
    assert 'params:' in out and 'MACs:' in out and '64x96' in out
