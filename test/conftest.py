"""Shared fixtures: small real ONNX models (built with onnx.helper, no torch) and an isolated ROS domain."""
import os
import random
import sys

import pytest

from seg_perception.launch_support import large_data_env

# One DDS domain per test session, discovery kept on this machine, large images through shared memory (the
# profile under the variable name the installed Fast DDS reads: FASTRTPS_* for Fast DDS 2.x, i.e. Jazzy).
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.update(large_data_env(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                              'config', 'fastdds_large_data.xml')))

sys.path.insert(0, os.path.dirname(__file__))

from onnx_models import make_tiny_model  # noqa: E402


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
    """A 6-class seg_perception model with dynamic H/W (labels/confidence outputs)."""
    return make_tiny_model(str(tmp_path_factory.mktemp('models') / 'tiny.onnx'))


@pytest.fixture(scope='session')
def tiny_logits_model(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp('models') / 'tiny_logits.onnx'), output_kind='logits',
                           dynamic=False, resize_mode='letterbox', input_size=(64, 96))


@pytest.fixture(scope='session')
def ros2cli_venv():
    """Path of a venv with the real ros2 CLI, launch, launch_ros and colcon (test/ros2cli_env.py): built once
    (~70-200 s) and cached in ~/.cache/seg_perception/ros2cli-venv/<key>; skipped only without cmake/g++/make."""
    import ros2cli_env
    reason = ros2cli_env.missing_tools()
    if reason:
        pytest.skip(reason)
    return ros2cli_env.ros2cli_venv()
