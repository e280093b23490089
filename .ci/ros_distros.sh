#!/usr/bin/env bash
# .ci/ros_distros.sh [VENV]   (run by `make test` after the main suite; VENV = the project venv, default .venv)
#
# The ROS part of the test suite again, in two more environments:
#   * Jazzy (the LTS) from PyPI's ros-jazzy-* wheels: rclpy 7.1.6, Fast DDS 2.14, with tf2_msgs and vision_msgs
#     built from source (.ci/jazzy_env.sh, cached);
#   * Kilted with vision_msgs and tf2_msgs, which have no PyPI wheels: the ros2cli venv that
#     shared/ros2cli/make_env.sh builds (cached by test/ros2cli_env.py), plus pytest and onnx for the tests.
# In .venv (Kilted wheels, no vision_msgs/tf2_msgs) the same tests cover the fallbacks (no LabelInfo, pose from
# parameters). Humble has no PyPI wheels and is not tested. Tests named test_ros2cli_* run the node in the ros2cli
# venv whatever the interpreter (the main run has them): deselected here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
CACHE=${SEG_PERCEPTION_CACHE:-$HOME/.cache/seg_perception}
TESTS=(test/test_node.py test/test_tf.py test/test_labelinfo.py test/test_qos_overrides.py)

echo "== ROS tests on Jazzy wheels"
.ci/jazzy_env.sh "$CACHE/jazzy-venv"
"$CACHE/jazzy-venv/bin/python" -m pytest -q -p no:cacheprovider -k 'not ros2cli' "${TESTS[@]}"

echo "== ROS tests on Kilted with vision_msgs and tf2_msgs (ros2cli venv)"
KILTED=$("$VENV/bin/python" -c 'import sys; sys.path.insert(0, "test"); import ros2cli_env as e; r = e.missing_tools()
print(e.ros2cli_venv() if r is None else "")')
if [ -z "$KILTED" ]; then
  echo "skipped: cannot build the ros2cli venv here (cmake/g++/make missing)"
  exit 0
fi
"$KILTED/bin/python" -c 'import pytest, pytest_timeout, onnx' 2>/dev/null ||
  "$KILTED/bin/python" -m pip install -q --disable-pip-version-check pytest pytest-timeout onnx
"$KILTED/bin/python" -m pytest -q -p no:cacheprovider -k 'not ros2cli' "${TESTS[@]}"
