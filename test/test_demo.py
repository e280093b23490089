"""`seg-perception demo` end to end: an alias of `replay --live` (node process + bag replay over DDS + report)."""
import argparse
import json
import os
import subprocess
import sys

import cv2
import pytest

pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')

from seg_perception.offline.data.bags import write_bag  # noqa: E402
from seg_perception.offline.data.render import render_frames  # noqa: E402
from seg_perception.offline.evaluation import demo  # noqa: E402


def test_demo_is_replay_live_on_the_sample_bag():
    args = argparse.Namespace(bag=None, model=None, merge=None, image_topic=None, out='out/demo', rate=1.0,
                              timeout=120.0)
    argv = demo.replay_argv(args)
    assert argv[0].endswith(os.path.join('samples', 'scenes_sample')) and '--live' in argv
    assert argv[argv.index('--out') + 1] == 'out/demo' and '--model' not in argv
    # the default model's covered floor is floor in the sample's 6-class truth; another model merges nothing
    assert argv[argv.index('--merge') + 1] == 'covered_floor:floor'
    assert '--merge' not in demo.replay_argv(argparse.Namespace(**{**vars(args), 'model': 'm.onnx'}))
    argv = demo.replay_argv(argparse.Namespace(**{**vars(args), 'model': 'm.onnx', 'merge': ['a:b', 'c:d']}))
    assert argv[argv.index('--model'):] == ['--model', 'm.onnx', '--merge', 'a:b', '--merge', 'c:d']


def test_demo_replays_a_rendered_bag_through_the_node(tmp_path, tiny_model):
    bag = tmp_path / 'bag'
    write_bag(str(bag), render_frames(6, seed=3, width=160, height=120, seq_len=3), rate_hz=20.0)
    out = tmp_path / 'out'
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    proc = subprocess.run([sys.executable, '-m', 'seg_perception.offline.cli', 'demo', '--bag', str(bag),
                           '--model', tiny_model, '--out', str(out), '--timeout', '60'],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / 'report.json').read_text())
    live, = report['live']
    assert live['frames_sent'] == 6
    assert live['labels_received'] >= 5          # newest-frame policy may drop one under load
    assert live['stamps_kept'] and live['labels_equal_offline'] == live['labels_received']
    assert report['models'][0]['metrics']['num_pixels'] > 0 and 0 <= report['models'][0]['metrics']['mIoU'] <= 1
    assert 0 <= live['mIoU'] <= 1
    assert int(live['node_diagnostics']['frames_received']) == 6 + live['warmup_frames'] == 8
    strip = cv2.imread(str(out / 'strip.png'))
    assert strip.shape[1] == 3 * 320             # input | model over input | ground truth
    md = (out / 'report.md').read_text()
    assert 'output rate' in md and 'its own domain' in md
