#!/usr/bin/env bash
# .ci/jazzy_env.sh VENV [PYTHON]
#
# Makes (or reuses) a venv with ROS 2 Jazzy from PyPI wheels (setup.py's `ros-jazzy` extra: ros-jazzy-rclpy
# 7.1.6 + Fast DDS and the message packages) plus the package's runtime dependencies and pytest, so the ROS part
# of the test suite runs on Jazzy as well as on Kilted (.venv). The package itself is installed through its
# extra (`pip install '.[ros-jazzy]'`, which is what the README tells users) and then removed again, so the
# tests import the checkout's code. The venv is reused while this script and setup.py's extras are unchanged
# (stamp file VENV/.stamp).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 VENV [PYTHON]" >&2; exit 2; }
VENV=$(realpath -m "$1")
PY=${2:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STAMP=$(cat "$0" "$ROOT/setup.py" | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "Jazzy venv up to date: $VENV"
  exit 0
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }
pip install --upgrade pip
pip install "$ROOT[ros-jazzy]" onnx pytest pytest-timeout
pip uninstall -y seg_perception
"$VENV/bin/python" -c 'import importlib.metadata as m, rclpy, sensor_msgs.msg, diagnostic_msgs.msg; print("ok: rclpy", m.version("ros-jazzy-rclpy"))'
echo "$STAMP" > "$VENV/.stamp"
