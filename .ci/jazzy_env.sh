#!/usr/bin/env bash
# .ci/jazzy_env.sh VENV [PYTHON]
#
# Makes (or reuses) a venv with ROS 2 Jazzy from PyPI wheels (setup.py's `ros-jazzy` extra: ros-jazzy-rclpy
# 7.1.6 + Fast DDS 2.14 and the message packages) plus the package's runtime dependencies and pytest, so the ROS
# part of the test suite runs on Jazzy as well as on Kilted.
#   1. once (stamp VENV/.stamp = this script): the venv, Jazzy's rosidl generators and ament_cmake wheels, and
#      tf2_msgs and vision_msgs (no PyPI wheels) generated and compiled from the sources make_env.sh uses
#      (shared/ros2cli/upstream-src.tgz), as make_env.sh does for Kilted. Jazzy has no rosidl_default_generators
#      wheel: a two-line CMake config stands in for it (upstream it only pulls in rosidl_core_generators).
#      Without cmake/g++ or the sources that step is left out and the tests skip what needs those messages.
#   2. whenever setup.py changes (stamp VENV/.deps): `pip install '.[ros-jazzy]'` (what the README tells users)
#      then the package removed again, so the tests import the checkout's code.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 VENV [PYTHON]" >&2; exit 2; }
VENV=$(realpath -m "$1")
PY=${2:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROS2CLI=${SEG_PERCEPTION_ROS2CLI:-$(dirname "$ROOT")/shared/ros2cli}
STAMP=$(sha256sum "$0" | cut -c1-16)
DEPS=$(sha256sum "$ROOT/setup.py" | cut -c1-16)
PYTHON=$VENV/bin/python
pip() { "$PYTHON" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }

if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "== Jazzy venv $VENV: wheels"
  rm -rf "$VENV" "$VENV.src"
  "$PY" -m venv "$VENV"
  pip install --upgrade pip
  pip install 'ros-jazzy-rclpy[fastrtps]' ros-jazzy-std-msgs ros-jazzy-geometry-msgs ros-jazzy-action-msgs \
    ros-jazzy-rosidl-core-generators ros-jazzy-rosidl-default-runtime ros-jazzy-ament-cmake \
    ros-jazzy-ament-cmake-ros ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest \
    ros-jazzy-ament-cmake-include-directories ros-jazzy-python-cmake-module ros-jazzy-ament-package \
    ros-jazzy-ament-lint numpy catkin-pkg pyyaml 'setuptools>=65,<81'
  missing=$(for t in cmake cc c++ make; do command -v $t >/dev/null || echo -n "$t "; done)
  if [ -n "$missing" ] || [ ! -f "$ROS2CLI/upstream-src.tgz" ]; then
    echo "tf2_msgs and vision_msgs NOT built for Jazzy (missing: ${missing:-$ROS2CLI/upstream-src.tgz})"
  else
    echo "== Jazzy venv: tf2_msgs and vision_msgs (rosidl: C, C++, Fast DDS, introspection, Python)"
    PYINC=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    NPINC=$("$PYTHON" -c 'import numpy; print(numpy.get_include())')
    # the wheels' CMake exports name the manylinux build's /opt/python: point them at this interpreter
    { grep -rlE '/opt/python/cp[0-9]+-cp[0-9]+' "$VENV"/share/*/cmake 2>/dev/null || true; } | while read -r f; do
      sed -i -E "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g; \
                 s#/opt/python/cp[0-9]+-cp[0-9]+/include/python3\.[0-9]+#$PYINC#g" "$f"
    done
    mkdir -p "$VENV/share/rosidl_default_generators/cmake"
    printf '%s\n' 'find_package(rosidl_core_generators REQUIRED)' 'set(rosidl_default_generators_FOUND TRUE)' \
      > "$VENV/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake"
    mkdir -p "$VENV.src" && tar -xzf "$ROS2CLI/upstream-src.tgz" -C "$VENV.src"
    for pkg in geometry2/tf2_msgs vision_msgs/vision_msgs; do
      B=$(mktemp -d)
      ( export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
        cd "$B"
        cmake "$VENV.src/src/$pkg" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
          -DPython3_EXECUTABLE="$PYTHON" > cmake.log 2>&1 || { tail -40 cmake.log; exit 1; }
        make -j"$(nproc)" > make.log 2>&1 || { tail -40 make.log; exit 1; }
        make install > install.log 2>&1 || { tail -40 install.log; exit 1; } )
      rm -rf "$B"
    done
    rm -rf "$VENV.src"
    env -u AMENT_PREFIX_PATH "$PYTHON" -c 'import tf2_msgs.msg, vision_msgs.msg'
  fi
  echo "$STAMP" > "$VENV/.stamp"
  rm -f "$VENV/.deps"
fi

if [ "$(cat "$VENV/.deps" 2>/dev/null)" != "$DEPS" ]; then
  echo "== Jazzy venv: '.[ros-jazzy]' and the test tools"
  pip install "$ROOT[ros-jazzy]" onnx pytest pytest-timeout
  pip uninstall -y seg_perception
  echo "$DEPS" > "$VENV/.deps"
fi
"$PYTHON" -c 'import importlib.metadata as m, rclpy, sensor_msgs.msg; print("Jazzy venv ready: rclpy",
m.version("ros-jazzy-rclpy"), "| vision_msgs:", bool(__import__("importlib").util.find_spec("vision_msgs")))'
