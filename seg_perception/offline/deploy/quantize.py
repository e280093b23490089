"""INT8 static quantization of an exported seg_perception model with ONNX Runtime, and its fp32 comparison.

* QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration on 32-100 images preprocessed
  exactly as :class:`~seg_perception.runtime.engine.SegmentationEngine` does (its ``compute_geometry`` and
  ``preprocess`` at the model's ``input_size``; dynamic-H/W models are calibrated at that size).
  ``quantize_dynamic`` is deliberately not used: its dynamic activation quantization made convolutions about 7x
  slower on this project's CPUs. The static gain depends on the model: depthwise-heavy mobile nets such as
  TopFormer-tiny gain little (about 1.1x for the whole graph at 512x512 on one thread), conv-heavy ones more.
* ``quant_pre_process`` (symbolic shape inference + ORT graph optimisation) runs first.
* The postprocessing (final Resize, ReduceMax, ArgMax, Exp, ReduceSum, Reciprocal) stays in float: quantized,
  it would round the published confidence to 1/255 steps.
* The quantized file keeps the fp32 file's metadata and is one self-contained .onnx file.

:func:`quantize_and_compare` adds the report: mIoU fp32 vs int8 and their label agreement on a held-out
dataset (any layout ``offline.datasets.open_dataset`` reads: generic ``images/`` + ``masks/``, a bag, ...),
and the model latency of both, measured interleaved in the same process on the same images.
"""
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

from ...runtime import engine as eng
from ..data.images import evenly_spaced, load_images
from ..graph.onnx_graph import postprocess_node_names, read_metadata, set_metadata
from ..graph.resize_matmul import is_rewritten

DEFAULT_CALIB_COUNT = 64


def load_calibration_images(src: str | os.PathLike, topic: str = '/camera/image_raw',
                            count: int = DEFAULT_CALIB_COUNT) -> list[np.ndarray]:
    """``count`` RGB uint8 images spread evenly over ``src``: what ``render`` writes, a folder of images, a
    dataset folder or YAML, or a rosbag2 path (messages of ``topic``); see :func:`..data.images.load_images`."""
    return load_images(src, count=count, topic=topic)


def engine_input(rgb: np.ndarray, meta: dict) -> np.ndarray:
    """The ``images`` tensor the engine feeds for ``rgb`` at the model's ``input_size``."""
    geometry = eng.compute_geometry(rgb.shape[:2], tuple(meta['input_size']), meta['resize_mode'],
                                    meta['stride'], meta['dynamic_hw'])
    return eng.preprocess(rgb, geometry, meta['mean'], meta['std'], meta['white_balance'])


def quantize_model(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, images: Iterable[np.ndarray],
                   preprocess: bool = True) -> dict:
    """Write the static-INT8 (QDQ, per-channel) version of ``fp32_path`` to ``int8_path``, calibrated on
    ``images`` (RGB uint8 arrays). Returns a report dict."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = onnx.load(str(fp32_path))
    if is_rewritten(source):
        raise ValueError(f'{fp32_path}: its Resize nodes were rewritten as matrix products (resize_matmul); '
                         'quantize the file as exported (export --int8 does)')
    meta = read_metadata(source)
    input_names = [i.name for i in source.graph.input]
    feeds = []
    for rgb in images:
        feed = {'images': engine_input(rgb, meta)}
        if 'exit_threshold' in input_names:
            feed['exit_threshold'] = np.asarray(1.0, np.float32)
        feeds.append(feed)
    if not feeds:
        raise ValueError('no calibration images')

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_input = str(fp32_path)
        if preprocess:
            model_input = os.path.join(tmp, 'pre.onnx')
            quant_pre_process(str(fp32_path), model_input, skip_symbolic_shape=False)
        excluded = postprocess_node_names(onnx.load(model_input))
        quantized = os.path.join(tmp, 'int8.onnx')
        quantize_static(model_input, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
                        extra_options={'CalibTensorRangeSymmetric': False})
        proto = onnx.load(quantized)
    set_metadata(proto, meta)
    proto.producer_name = 'seg_perception'
    onnx.checker.check_model(proto)
    Path(int8_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(int8_path), save_as_external_data=False)
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {'path': str(int8_path), 'bytes': Path(int8_path).stat().st_size,
            'fp32_bytes': Path(fp32_path).stat().st_size, 'calibration_images': len(feeds),
            'quantize_s': round(time.perf_counter() - start, 2), 'float_postprocess_nodes': excluded,
            'quantize_linear_nodes': ops.get('QuantizeLinear', 0)}


def eval_pairs(spec: str | os.PathLike, count: int = 0,
               split: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(rgb, mask)] spread evenly over a dataset opened with :func:`seg_perception.offline.data.datasets.open_dataset`
    (a folder in any layout it detects, a dataset YAML or a rosbag2 path)."""
    from ..data.datasets import open_dataset
    dataset = open_dataset(spec, split=split)
    if not len(dataset):
        raise ValueError(f'{spec}: empty dataset')
    return [dataset[i] for i in evenly_spaced(len(dataset), count)]


def compare_models(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, images: Sequence[np.ndarray],
                   masks: Sequence[np.ndarray] | None = None, threads: int = 1, latency_runs: int = 20) -> dict:
    """fp32 vs int8 through the engine on ``images``: label agreement, mIoU of each when ``masks`` are
    given, and the median ORT run time of each (runs interleaved on the same inputs, same process)."""
    from ..evaluation.metrics import ConfusionMatrix
    engines = {kind: eng.SegmentationEngine(path, providers=['CPUExecutionProvider'], intra_op_threads=threads)
               for kind, path in (('fp32', fp32_path), ('int8', int8_path))}
    num_classes = engines['fp32'].num_classes
    ignore = engines['fp32'].meta['ignore_index']
    confusion = {kind: ConfusionMatrix(num_classes, ignore) for kind in engines}
    agree = total = 0
    for i, rgb in enumerate(images):
        results = {kind: e.infer(rgb) for kind, e in engines.items()}
        agree += int((results['fp32'].labels == results['int8'].labels).sum())
        total += results['fp32'].labels.size
        if masks is not None:
            for kind, result in results.items():
                confusion[kind].update(result.labels, masks[i])
    report = {'images': len(images), 'label_agreement': agree / max(total, 1), 'threads': threads}
    if masks is not None:
        for kind in engines:
            report[f'miou_{kind}'] = confusion[kind].compute(engines[kind].names)['mIoU']
    times = {kind: [] for kind in engines}
    for run in range(latency_runs + 3):
        rgb = images[run % len(images)]
        for kind, e in engines.items():
            model_ms = e.infer(rgb).model_ms
            if run >= 3:
                times[kind].append(model_ms)
    for kind in engines:
        report[f'latency_ms_{kind}'] = statistics.median(times[kind])
    report['speedup'] = report['latency_ms_fp32'] / report['latency_ms_int8']
    report['input_size'] = list(engines['fp32'].meta['input_size'])
    return report


def quantize_and_compare(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                         calib: str | os.PathLike | list[np.ndarray], topic: str = '/camera/image_raw',
                         count: int = DEFAULT_CALIB_COUNT, eval_data: str | os.PathLike | None = None,
                         eval_count: int = 0, eval_split: str | None = None, threads: int = 1, latency_runs: int = 20,
                         reference: str | os.PathLike | None = None) -> dict:
    """Calibrate, quantize and compare (on ``eval_data`` when given, else on the calibration images).
    ``calib``: the calibration images (RGB uint8), or where to read ``count`` of them (:func:`load_calibration_images`
    with ``topic``). ``reference``: the fp32 file the int8 one is compared with (default ``fp32_path``; ``export``
    passes the file it ships, whose Resize nodes are rewritten as matrix products)."""
    images = calib if isinstance(calib, list) else load_calibration_images(calib, topic, count)
    report = quantize_model(fp32_path, int8_path, images)
    reference = fp32_path if reference is None else reference
    report['fp32_bytes'] = Path(reference).stat().st_size
    if eval_data:
        pairs = eval_pairs(eval_data, eval_count, eval_split)
        report['eval_data'] = str(eval_data)
        report['compare'] = compare_models(reference, int8_path, [p[0] for p in pairs], [p[1] for p in pairs],
                                           threads, latency_runs)
    else:
        report['eval_data'] = None
        report['compare'] = compare_models(reference, int8_path, images, None, threads, latency_runs)
    return report


def format_int8_report(report: dict) -> str:
    cmp = report['compare']
    lines = [f'int8 {report["path"]} ({report["bytes"] / 1e6:.2f} MB vs fp32 {report["fp32_bytes"] / 1e6:.2f} MB; '
             f'{report["calibration_images"]} calibration images, {report["quantize_s"]:.1f} s)',
             f'  on {cmp["images"]} images ({report["eval_data"] or "calibration images, no masks"}): '
             f'labels agree {100 * cmp["label_agreement"]:.2f}%'
             + (f', mIoU fp32 {100 * cmp["miou_fp32"]:.2f} -> int8 {100 * cmp["miou_int8"]:.2f}'
                if cmp.get('miou_fp32') is not None else ''),
             f'  latency at {cmp["input_size"][0]}x{cmp["input_size"][1]}, {cmp["threads"]} thread(s): '
             f'fp32 {cmp["latency_ms_fp32"]:.2f} ms, int8 {cmp["latency_ms_int8"]:.2f} ms '
             f'({cmp["speedup"]:.2f}x)']
    return '\n'.join(lines)
