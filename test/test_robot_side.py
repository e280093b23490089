"""The robot side must import and run without torch (robots don't have it)."""
import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is not allowed on the robot side')
sys.meta_path.insert(0, NoTorch())
import numpy as np
import seg_perception.runtime.engine, seg_perception.runtime.imgmsg, seg_perception.runtime.worker
import seg_perception.runtime.stats, seg_perception.runtime.metadata, seg_perception.paths
MODULES
e = seg_perception.runtime.engine.SegmentationEngine(sys.argv[1])
print(e.infer(np.zeros((30, 40, 3), np.uint8)).labels.shape)
assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch was imported'
print('ok')
'''


def _run(code, model):
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    return subprocess.run([sys.executable, '-c', code, model], env=env, capture_output=True, text=True, timeout=120)


def test_runtime_imports_without_torch(tiny_model):
    out = _run(SCRIPT.replace('MODULES', ''), tiny_model)
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr


def test_node_imports_without_torch(tiny_model):
    pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed')
    out = _run(SCRIPT.replace('MODULES', 'import seg_perception.node'), tiny_model)
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr
