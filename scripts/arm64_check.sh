#!/usr/bin/env bash
# The robot-side engine on an arm64 Python under qemu-user: are its labels the x86 labels? (correctness only:
# timings under emulation mean nothing). Debian/Ubuntu x86_64 host, run as root from the repository root:
#
#   scripts/arm64_check.sh [WORK_DIR]        # default WORK_DIR: /var/tmp/seg_perception_arm64
#
# Environment: MODEL (default models/topformer_tiny_scenes.onnx), FRAMES (default 4, from the sample bag),
# PYTHON (the x86 Python with seg_perception's runtime and rosbags; default .venv/bin/python),
# ORT_VERSION (default 1.20.1), SUITE (Debian suite of the arm64 root, default bookworm: Python 3.11).
#
# Steps: apt-get installs qemu-user-static and debootstrap; `debootstrap --foreign --arch=arm64` fetches and
# unpacks a minimal arm64 Debian (no second stage, so no binfmt_misc is needed) plus python3 (unpacked with
# dpkg-deb); pip downloads the aarch64 wheels of onnxruntime, numpy, OpenCV (headless) and PyYAML and unpacks
# them beside it; then scripts/engine_labels.py runs on the same frames with the x86 Python and with
# `qemu-aarch64-static -L ROOT ROOT/usr/bin/python3`, and the labels and logits are compared.
set -euo pipefail

WORK=${1:-/var/tmp/seg_perception_arm64}
MODEL=${MODEL:-models/topformer_tiny_scenes.onnx}
FRAMES=${FRAMES:-4}
PYTHON=${PYTHON:-.venv/bin/python}
ORT_VERSION=${ORT_VERSION:-1.20.1}
SUITE=${SUITE:-bookworm}
ROOT=$WORK/root
SITE=$WORK/site-packages

[ -f seg_perception/runtime/engine.py ] || { echo "run from the repository root" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "model $MODEL: no such file" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (apt-get, debootstrap)" >&2; exit 2; }
mkdir -p "$WORK"

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap
fi

if [ ! -e "$ROOT/usr/bin/python3" ]; then
    echo "== debootstrap --foreign arm64 $SUITE -> $ROOT"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 "$SUITE" "$ROOT" \
        http://deb.debian.org/debian >"$WORK/debootstrap.log"
    # --foreign unpacks the essential packages only; unpack the rest it downloaded (python3 and its libraries)
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$ROOT" --keep-directory-symlink
    done
fi
PYVER=$(ls "$ROOT"/usr/bin/ | grep -E '^python3\.[0-9]+$' | head -1 | sed 's/python//')
echo "== arm64 root has Python $PYVER"

if [ ! -d "$SITE/onnxruntime" ]; then
    echo "== aarch64 wheels (onnxruntime $ORT_VERSION, numpy, opencv-python-headless, pyyaml)"
    mkdir -p "$WORK/wheels" "$SITE"
    "$PYTHON" -m pip download -q --only-binary=:all: --dest "$WORK/wheels" \
        --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64 \
        --python-version "${PYVER/./}" --implementation cp \
        "onnxruntime==$ORT_VERSION" numpy opencv-python-headless pyyaml
    for whl in "$WORK"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$whl" "$SITE"; done
fi

echo "== frames and x86 labels"
"$PYTHON" - "$WORK/frames.npz" "$FRAMES" <<'EOF'
import sys
import numpy as np
from seg_perception.offline.data.bags import TOPICS, iter_bag_pairs
frames = [image for _, image, _ in iter_bag_pairs('samples/scenes_sample', TOPICS['image'][0], TOPICS['labels'][0])]
step = max(1, len(frames) // int(sys.argv[2]))
np.savez_compressed(sys.argv[1], **{f'frame_{i}': f for i, f in enumerate(frames[::step][:int(sys.argv[2])])})
EOF
"$PYTHON" scripts/engine_labels.py --model "$MODEL" --frames "$WORK/frames.npz" --out "$WORK/x86.npz"

echo "== arm64 labels (qemu-aarch64-static, slow)"
env -i PATH=/usr/bin:/bin PYTHONPATH="$SITE:$PWD" PYTHONNOUSERSITE=1 \
    qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python$PYVER" scripts/engine_labels.py \
    --model "$MODEL" --frames "$WORK/frames.npz" --out "$WORK/arm64.npz"

echo "== compare"
"$PYTHON" - "$WORK/x86.npz" "$WORK/arm64.npz" <<'EOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
n = sum(k.startswith('labels_') for k in a.files)
worst, equal_frames = 1.0, 0
for i in range(n):
    la, lb = a[f'labels_{i}'], b[f'labels_{i}']
    agree = float((la == lb).mean()) if la.shape == lb.shape else 0.0
    equal_frames += bool(agree == 1.0)
    worst = min(worst, agree)
    line = f'frame {i}: {la.shape[1]}x{la.shape[0]} labels equal on {100 * agree:.4f} % of pixels'
    if f'logits_{i}' in a.files:
        d = np.abs(a[f'logits_{i}'] - b[f'logits_{i}']).max() / np.abs(a[f'logits_{i}']).max()
        line += f', logits max |diff| / max |logit| = {d:.1e}'
    print(line)
print(f'{equal_frames}/{n} frames with identical labels; worst frame {100 * worst:.4f} %')
sys.exit(0 if worst >= 0.999 else 1)
EOF
