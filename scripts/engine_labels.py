"""Run the robot-side engine on frames from an .npz and save labels and logits (used by arm64_check.sh on both
the x86 host and an emulated arm64 Python). Needs numpy, OpenCV, onnxruntime, yaml and seg_perception/runtime.

    python scripts/engine_labels.py --model models/topformer_tiny_scenes.onnx --frames f.npz --out labels.npz
"""
import argparse
import platform
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', required=True, help='seg_perception .onnx model')
    parser.add_argument('--frames', required=True, help='.npz with frame_0, frame_1, ... (HxWx3 uint8 RGB)')
    parser.add_argument('--out', required=True, help='.npz to write: labels_i, logits_i (logits models)')
    args = parser.parse_args(argv)
    import onnxruntime

    from seg_perception.runtime.engine import SegmentationEngine
    engine = SegmentationEngine(args.model, intra_op_threads=1, providers=['CPUExecutionProvider'])
    frames = np.load(args.frames)
    out = {}
    for i in range(len(frames.files)):
        result = engine.infer(frames[f'frame_{i}'])
        out[f'labels_{i}'] = result.labels
        if result.logits is not None:
            out[f'logits_{i}'] = result.logits
    np.savez_compressed(args.out, **out)
    print(f'{platform.machine()} Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, '
          f'numpy {np.__version__} (providers: {", ".join(onnxruntime.get_available_providers())}): '
          f'{len(frames.files)} frames -> {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
