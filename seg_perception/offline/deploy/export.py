"""Export a segmentation model to one self-contained ONNX file with seg_perception metadata, and check it.

The shipped graph follows the convention of :mod:`seg_perception.runtime.metadata` (``output_kind`` 'labels'):
input ``images`` (1, 3, H, W) float32 normalised RGB (H, W dynamic unless ``--fixed-size``), optional scalar
input ``exit_threshold`` for token-pass models, outputs ``labels`` int64 (1, H, W) and ``confidence`` float32
(1, H, W): the model's 1/8 logits are upsampled bilinearly (align_corners=False) to the input size inside the
graph, then softmax max / argmax. Token-pass models (``forward_with_stats``) add ``kept_fraction`` and ``macs``.

Exporter: the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``) by default. With this
project's models (shape-dependent ops written as exportable matmuls / interpolations) it traces in about a
second and the graph is exact at every multiple of the stride. The ``torch.export`` based exporter
(``--exporter dynamo``) takes 20x longer, and specialises the dynamic dimensions when the example input is
small (a 1x1 token grid at 64x64 input fixes H and W at 64), so it is kept only as an option.

Every export is checked: ``onnx.checker`` (full check), then ONNX Runtime against PyTorch on random inputs at
``input_size`` and, for dynamic graphs, at a second size (H + stride, W + 2 * stride: odd and even 1/32 grids).
The 1/8 logits are compared too, read from the shipped graph with its logits tensor added as an extra output
in memory only (the file keeps just the convention's outputs). Relative differences (max |diff| / max |ref|)
above ``tolerance`` (1e-4) raise :class:`ParityError`; label agreement is reported.

Command line (``seg-perception export``)::

    seg-perception export --arch topformer_tiny --checkpoint runs/x/best.pt --input-size 512 512 -o m.onnx
    seg-perception export --arch topformer_tiny --checkpoint topformer-T.pth --official --num-classes 150 \\
        --input-size 512 512 -o m.onnx [--int8 --calib data/val/images --eval-data data/val]

Python API: :func:`export_model` (any ``nn.Module``), :func:`build_metadata`, :func:`check_parity`.
"""
import argparse
import hashlib
import io
import math
import os
import shutil
import tempfile
import textwrap
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
import torch.nn as nn
from torch.onnx import _constants as torch_onnx

from ...classes import IGNORE_INDEX, SCENE_CLASS_NAMES, SCENE_PALETTE
from ...errors import UserError
from ...runtime import metadata as md
from ...runtime.costmap import class_cost_table, parse_class_costs
from ...runtime.metadata import IMAGENET_MEAN, IMAGENET_STD
from ..argtypes import finite_float, non_negative_int, positive_float, positive_int, share
from ..graph.onnx_graph import OUTPUTS, set_metadata, with_logits_output
from ..predict import labels_head as postprocess  # the graph's tail: upsample, argmax, max softmax

DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18
# the opsets `export` takes: up to what torch's exporter supports; from 11 (the graph's half-pixel Resize), from 13
# unless --keep-resize (the rewrite of the Resize nodes as matrix products uses opset-13 Unsqueeze)
MIN_OPSET, MATMUL_RESIZE_MIN_OPSET = 11, 13
MAX_OPSET = {'torchscript': torch_onnx.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, 'dynamo': torch_onnx.ONNX_MAX_OPSET}
# options that only some models take: the constructor keyword and who takes it
BUCKET_OPTIONS = {'token_buckets': 'token-pass models (tokenpass_vit_*)',
                  'tile_buckets': 'adaptive TopFormers (adaptive_topformer_*)'}
STRIDE = 32
PARITY_RTOL = 1e-4
EXPORTERS = ('torchscript', 'dynamo')
TOKEN_PASS_OUTPUTS = ('kept_fraction', 'macs')
MAX_SINGLE_FILE_BYTES = 2 ** 31 - 1


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree on an exported graph beyond the tolerance."""


def is_token_pass(model: nn.Module) -> bool:
    """Adaptive-cost models (token-pass ViT, adaptive TopFormer): a knob input and per-frame stats outputs."""
    return hasattr(model, 'forward_with_stats')


def knob_name(model: nn.Module) -> str:
    """The run-time input of an adaptive-cost model: ``exit_threshold`` (token pass) or the model's own."""
    return getattr(model, 'knob_name', 'exit_threshold')


def stats_outputs(model: nn.Module) -> tuple[str, ...]:
    """The per-frame outputs after labels and confidence: ('kept_fraction', 'macs') or the model's own."""
    return tuple(getattr(model, 'stats_outputs', TOKEN_PASS_OUTPUTS))


class LabelsGraph(nn.Module):
    """The exported graph: a 1/8-logits model plus the in-graph upsampling, softmax max and argmax."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.token_pass = is_token_pass(model)

    def forward(self, images: torch.Tensor, exit_threshold: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if self.token_pass:
            logits, kept_fraction, macs = self.model.forward_with_stats(images, exit_threshold)
            return (*postprocess(logits, images.shape[-2:]), kept_fraction.float().reshape(-1),
                    macs.float().reshape(()))
        return postprocess(self.model(images), images.shape[-2:])


def default_classes(num_classes: int) -> tuple[list[str], list[list[int]]]:
    """(names, palette) for a class count: the project's scene classes for 6, else ``class_i`` with a
    deterministic palette of well-spread hues."""
    if num_classes == len(SCENE_CLASS_NAMES):
        return list(SCENE_CLASS_NAMES), [list(c) for c in SCENE_PALETTE]
    hues = (np.arange(num_classes) * 0.618034 % 1.0 * 180).astype(np.uint8)
    values = np.where(np.arange(num_classes) % 2, 200, 255).astype(np.uint8)
    hsv = np.stack([hues, np.full(num_classes, 200, np.uint8), values], axis=-1)[None]
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    return [f'class_{i}' for i in range(num_classes)], rgb.astype(int).tolist()


def build_metadata(num_classes: int, input_size: Sequence[int], names: Sequence[str] | None = None,
                   palette: Sequence[Sequence[int]] | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, resize_mode: str = 'letterbox', arch: str | None = None,
                   checkpoint_sha256: str | None = None, ignore_index: int = IGNORE_INDEX,
                   description: str | None = None, white_balance: str = 'none') -> dict:
    """Metadata dict (before :func:`export_model` adds ``output_kind``, ``dynamic_hw``, ``stride`` and
    ``static_macs``); missing names / palette / mean / std take the defaults; ``white_balance`` is written when
    it is not 'none' (a file without it means 'none')."""
    default_names, default_palette = default_classes(num_classes)
    names = list(names) if names else default_names
    palette = default_palette if palette is None else palette
    if len(names) != num_classes or len(palette) != num_classes:
        raise ValueError(f'{num_classes} classes but {len(names)} names and {len(palette)} palette entries')
    meta = {
        'names': names,
        'palette': [[int(v) for v in c] for c in palette],
        'mean': [float(v) for v in (mean if mean is not None else IMAGENET_MEAN)],
        'std': [float(v) for v in (std if std is not None else IMAGENET_STD)],
        'input_size': [int(v) for v in input_size],
        'resize_mode': resize_mode,
        'ignore_index': int(ignore_index),
    }
    optional = {'arch': arch, 'checkpoint_sha256': checkpoint_sha256, 'description': description,
                'white_balance': None if white_balance == 'none' else white_balance}
    meta.update({k: v for k, v in optional.items() if v is not None})
    return meta


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def static_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """MACs of one plain forward at ``input_size`` (``offline.flops.count_macs``; no token stopping)."""
    from ..evaluation.flops import count_macs
    total, _ = count_macs(model, (1, 3, *input_size))
    return int(total)


def _example_inputs(model, size, seed, exit_threshold=1.0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 3, *size, generator=generator)
    if is_token_pass(model):
        return images, torch.tensor(float(exit_threshold))
    return (images,)


def _reference(model, inputs):
    """PyTorch outputs by name, computed with the same postprocessing as the graph, plus the logits."""
    with torch.no_grad():
        if is_token_pass(model):
            logits, kept, macs = model.forward_with_stats(*inputs)
            fraction_name, macs_name = stats_outputs(model)
            extra = {fraction_name: kept.float().reshape(-1), macs_name: macs.float().reshape(())}
        else:
            logits, extra = model(*inputs), {}
        labels, confidence = postprocess(logits, inputs[0].shape[-2:])
    out = {'labels': labels, 'confidence': confidence, 'logits': logits, **extra}
    return {k: v.numpy() for k, v in out.items()}


def _rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float('inf'), float('inf')
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    return diff, diff / max(float(np.abs(b).max()) if b.size else 0.0, 1e-12)


def parity_sizes(input_size: Sequence[int], dynamic: bool, stride: int = STRIDE) -> list[tuple[int, int]]:
    """Sizes checked: ``input_size`` and, for dynamic graphs, (H + stride, W + 2 * stride)."""
    h, w = (int(v) for v in input_size)
    return [(h, w)] + ([(h + stride, w + 2 * stride)] if dynamic else [])


def check_parity(model: nn.Module, onnx_model: str | os.PathLike | onnx.ModelProto, sizes: Iterable[Sequence[int]],
                 tolerance: float = PARITY_RTOL, exit_thresholds: Sequence[float] = (1.0, 0.8), seed: int = 0,
                 threads: int | None = None, raise_on_failure: bool = True) -> list[dict]:
    """Run ``onnx_model`` (path or ModelProto) in ONNX Runtime and ``model`` in PyTorch on random inputs.

    Returns one dict per (size, exit threshold): max |diff| and relative diff of ``confidence`` and of the
    1/8 ``logits``, ``label_agreement`` (fraction of equal pixels), for token-pass models the diffs of
    ``kept_fraction`` and ``macs``, and ``ok``. Raises :class:`ParityError` on a relative diff above
    ``tolerance`` (or a kept_fraction / macs mismatch) unless ``raise_on_failure`` is False."""
    import onnxruntime as ort
    proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.log_severity_level = 3
    session = ort.InferenceSession(with_logits_output(proto).SerializeToString(), opts,
                                   providers=['CPUExecutionProvider'])
    input_names = [i.name for i in session.get_inputs()]
    names = [o.name for o in session.get_outputs()]
    model = model.eval()
    thresholds = exit_thresholds if is_token_pass(model) else (None,)
    results = []
    for i, size in enumerate(sizes):
        for threshold in thresholds:
            inputs = _example_inputs(model, size, seed + i, threshold)
            ref = _reference(model, inputs)
            got = dict(zip(names, session.run(names, {n: t.numpy() for n, t in zip(input_names, inputs)})))
            row = {'size': list(size)}
            if threshold is not None:
                row['exit_threshold'] = float(threshold)
            for key in ('confidence', 'logits'):
                row[f'{key}_max_abs'], row[f'{key}_rel'] = _rel_diff(got[key], ref[key])
            row['label_agreement'] = float((got['labels'] == ref['labels']).mean()) \
                if got['labels'].shape == ref['labels'].shape else 0.0
            ok = row['confidence_rel'] <= tolerance and row['logits_rel'] <= tolerance
            for key in stats_outputs(model):
                if key in ref:
                    row[f'{key}_max_abs'], row[f'{key}_rel'] = _rel_diff(got.get(key, np.nan), ref[key])
                    ok = ok and row[f'{key}_rel'] <= tolerance
            row['ok'] = ok
            results.append(row)
    failed = [r for r in results if not r['ok']]
    if failed and raise_on_failure:
        raise ParityError(f'ONNX Runtime differs from PyTorch beyond relative {tolerance:g}: '
                          + '; '.join(format_parity_row(r) for r in failed))
    return results


def format_parity_row(row: dict) -> str:
    text = (f'{row["size"][0]}x{row["size"][1]}'
            + (f' thr={row["exit_threshold"]:g}' if 'exit_threshold' in row else '')
            + f': confidence max|d| {row["confidence_max_abs"]:.2e} (rel {row["confidence_rel"]:.2e}), '
            f'logits max|d| {row["logits_max_abs"]:.2e} (rel {row["logits_rel"]:.2e}), '
            f'labels agree {100 * row["label_agreement"]:.3f}%')
    for key in ('kept_fraction', 'refined_fraction'):
        if f'{key}_max_abs' in row:
            text += f', {key} max|d| {row[f"{key}_max_abs"]:.2e}, macs rel {row["macs_rel"]:.2e}'
    return text + ('' if row['ok'] else ' FAILED')


def _to_proto(wrapper, inputs, input_names, output_names, dynamic, opset, exporter):
    if exporter == 'torchscript':
        axes = {'images': {2: 'height', 3: 'width'}, 'labels': {1: 'height', 2: 'width'},
                'confidence': {1: 'height', 2: 'width'}} if dynamic else None
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)   # the legacy exporter announces its retirement
            torch.onnx.export(wrapper, inputs, buffer, dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=output_names, dynamic_axes=axes, do_constant_folding=True)
        return onnx.load_from_string(buffer.getvalue())
    if exporter == 'dynamo':
        from torch.export import Dim
        shapes = {'images': {2: Dim.DYNAMIC, 3: Dim.DYNAMIC} if dynamic else None}
        if len(inputs) > 1:
            shapes[input_names[1]] = None
        program = torch.onnx.export(wrapper, inputs, None, dynamo=True, opset_version=max(opset, DYNAMO_MIN_OPSET),
                                    input_names=input_names, output_names=output_names, dynamic_shapes=shapes,
                                    external_data=False, verbose=False)
        return program.model_proto
    raise ValueError(f'unknown exporter {exporter!r}; choose from {EXPORTERS}')


def export_model(model: nn.Module, path: str | Path, meta: dict, input_size: Sequence[int], dynamic: bool = True,
                 opset: int = DEFAULT_OPSET, exporter: str = 'torchscript',
                 check: bool = True, tolerance: float = PARITY_RTOL, exit_thresholds: Sequence[float] = (1.0, 0.8),
                 seed: int = 0) -> dict:
    """Export ``model`` (eval forward -> 1/8 logits; token-pass models via ``forward_with_stats``) to ``path``.

    ``meta``: the metadata dict (see :func:`build_metadata`); ``output_kind``, ``dynamic_hw``, ``stride``
    and ``input_size`` are set here, ``static_macs`` too unless given (``offline.flops.count_macs``). Writes one
    .onnx file (weights inside), runs ``onnx.checker`` and, if ``check``, :func:`check_parity` (a failure
    removes the file and raises :class:`ParityError`). Returns a report dict (JSON-ready)."""
    model = model.eval()
    input_size = [int(v) for v in input_size]
    meta = dict(meta, input_size=input_size, output_kind='labels', dynamic_hw=bool(dynamic))
    meta.setdefault('stride', STRIDE)
    if any(v % meta['stride'] for v in input_size):
        raise UserError(f'input size {input_size[0]} {input_size[1]}: both sides must be multiples of the stride '
                        f'{meta["stride"]}')
    if 'static_macs' not in meta:
        meta['static_macs'] = static_macs(model, input_size)
    token_pass = is_token_pass(model)
    if token_pass and getattr(model, 'exit_conf', None) is not None:
        meta.setdefault('exit_threshold', float(model.exit_conf))   # the node's default threshold
    if token_pass and getattr(model, 'refine_conf', None) is not None:
        meta.setdefault('refine_threshold', float(model.refine_conf))
        meta.setdefault('cheap_macs', int(model.cheap_macs(*input_size)))   # the never-refine path
    try:
        md.decode(md.encode(meta))  # refuse bad metadata before spending time on the export
    except ValueError as exc:   # from the options, the checkpoint or the classes file
        raise UserError(str(exc)) from None

    inputs = _example_inputs(model, input_size, seed)
    input_names = ['images'] + ([knob_name(model)] if token_pass else [])
    output_names = list(OUTPUTS) + (list(stats_outputs(model)) if token_pass else [])
    start = time.perf_counter()
    proto = _to_proto(LabelsGraph(model).eval(), inputs, input_names, output_names, dynamic, opset, exporter)
    export_s = time.perf_counter() - start
    set_metadata(proto, meta)
    proto.producer_name = 'seg_perception'
    onnx.checker.check_model(proto, full_check=True)
    size_bytes = proto.ByteSize()
    if size_bytes > MAX_SINGLE_FILE_BYTES:
        raise ValueError(f'model is {size_bytes / 2**30:.1f} GiB: too large for a single .onnx file')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)

    report = {
        'path': str(path), 'bytes': path.stat().st_size, 'exporter': exporter,
        'opset': next(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')),
        'export_s': round(export_s, 2), 'inputs': input_names, 'outputs': output_names,
        'dynamic_hw': bool(dynamic), 'input_size': input_size, 'static_macs': meta.get('static_macs'),
        'num_classes': len(meta['names']), 'parity': None,
    }
    if check:
        try:
            report['parity'] = check_parity(model, proto, parity_sizes(input_size, dynamic, meta['stride']),
                                            tolerance, exit_thresholds, seed)
        except ParityError:
            path.unlink()
            raise
    return report


def format_report(report: dict) -> str:
    """A short human-readable summary of an :func:`export_model` report."""
    macs = report.get('static_macs')
    lines = [f'exported {report["path"]} ({report["bytes"] / 1e6:.2f} MB, {report["num_classes"]} classes, '
             f'opset {report["opset"]}, {report["exporter"]} exporter, {report["export_s"]:.1f} s)',
             f'  inputs {report["inputs"]} -> outputs {report["outputs"]}; '
             f'input size {report["input_size"][0]}x{report["input_size"][1]}, '
             f'{"dynamic" if report["dynamic_hw"] else "fixed"} H/W'
             + (f'; {macs / 1e9:.3f} GMACs' if macs else '')]
    for row in report.get('parity') or []:
        lines.append('  parity ' + format_parity_row(row))
    return '\n'.join(lines)


# ---------------------------------------------------------------- command line

def read_training_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict, info) from one of our trainer's checkpoints (a dict with 'model' and optional 'arch',
    'num_classes', 'classes', 'palette', 'mean', 'std', 'input_size', 'resize_mode') or from a bare state dict."""
    from ...nets.checkpoint import CHECKPOINT_INFO_KEYS, torch_load_weights
    obj = torch_load_weights(path)
    if not isinstance(obj, dict):
        raise UserError(f'{path}: not a seg_perception checkpoint (a {type(obj).__name__}, not a dict)')
    if isinstance(obj.get('model'), dict):
        info = {k: obj[k] for k in CHECKPOINT_INFO_KEYS if obj.get(k) is not None}
        return obj['model'], info
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise UserError(f'{path}: not a seg_perception checkpoint (no "model" state dict, not a bare state dict); '
                    'use --official for an official checkpoint')


def read_classes_file(path: str | os.PathLike) -> tuple[list[str], list | None, int | None]:
    """(names, palette or None, ignore_index or None) from a YAML list of names, a {id: name} mapping, or a
    mapping with 'names' (list or {id: name}) and optional 'palette' / 'ignore_index'."""
    import yaml
    data = yaml.safe_load(Path(path).read_text())
    palette = ignore_index = None
    if isinstance(data, dict) and 'names' in data:
        palette, ignore_index = data.get('palette'), data.get('ignore_index')
        data = data['names']
    if isinstance(data, dict):
        data = [data[k] for k in sorted(data, key=int)]
    if not isinstance(data, list) or not data:
        raise ValueError(f'{path}: expected a list of class names (or a mapping with "names")')
    return [str(n) for n in data], palette, ignore_index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--arch', help='model name (seg_perception.nets.list_models()); default: the checkpoint\'s')
    parser.add_argument('--checkpoint', help='our training checkpoint (.pt), or an official one with --official')
    parser.add_argument('--official', action='store_true', help='--checkpoint is an official mmseg/paddle file')
    parser.add_argument('--num-classes', type=positive_int, help='default: the checkpoint\'s, else the --classes count')
    parser.add_argument('--input-size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='network input size the engine resizes to (default: the checkpoint\'s)')
    parser.add_argument('--resize-mode', choices=md.RESIZE_MODES,
                        help="how the engine fits images into the input size (default: the training checkpoint's; "
                             "'resize' for our checkpoints that predate recording it; 'letterbox' for official or "
                             "bare weights)")
    parser.add_argument('--classes', help='YAML with the class names (and optional palette)')
    parser.add_argument('--mean', type=finite_float, nargs=3,
                        help='0-255 RGB mean (default: checkpoint, else ImageNet)')
    parser.add_argument('--std', type=positive_float, nargs=3,
                        help='0-255 RGB std (default: checkpoint, else ImageNet)')
    parser.add_argument('--white-balance', choices=md.WHITE_BALANCES,
                        help="each frame's colour balance before normalising, made by the engine (default: the "
                             "training checkpoint's, else none)")
    parser.add_argument('--fixed-size', action='store_true', help='fixed H/W (default: dynamic)')
    parser.add_argument('--head', choices=('labels', 'logits'), default='labels',
                        help='labels: upsampling + argmax inside the graph (labels at the network size); logits: '
                             'the graph ends at the 1/8 logits and the engine makes labels at the camera size, '
                             'equal to bilinear-then-argmax (exactly up to 8 classes), for less '
                             '(runtime/upsample.py; the shipped models)')
    parser.add_argument('--logits-layout', choices=('auto', *md.LOGITS_LAYOUTS), default='auto',
                        help='with --head logits: nchw (N, C, h, w) or nhwc per-pixel rows (N, h, w, C), which the '
                             'engine reads without a transpose; auto: nhwc above 8 classes, where that pays')
    parser.add_argument('--keep-resize', action='store_true',
                        help="keep the network's bilinear Resize nodes (default: rewritten as two matrix products "
                             'after the checks and the int8 twin, 1.1-1.2x faster in ONNX Runtime; '
                             'graph/resize_matmul.py)')
    parser.add_argument('--description', help='free text stored in the metadata')
    parser.add_argument('--class-costs', default='',
                        help="the model's default costmap table stored in the metadata, 'name:cost, ...' (-1 unknown, "
                             "0 free .. 100 lethal; e.g. 'road:0, pavement:0, sky:-1'); classes not named take the "
                             'built-in table by name')
    parser.add_argument('--exit-threshold', type=share,
                        help='token-pass: default exit threshold stored in the model (default: its exit_conf)')
    parser.add_argument('--token-buckets', type=share, nargs='+', metavar='FRACTION',
                        help='token-pass: pad the kept tokens up to these fractions of all tokens, so TensorRT '
                             'sees a few fixed shapes (e.g. 0.25 0.5 0.75 1.0)')
    parser.add_argument('--refine-threshold', type=share,
                        help='adaptive TopFormer: default refine threshold stored in the model (default: its '
                             'refine_conf; 0 = never refine, 1 = always)')
    parser.add_argument('--tile-buckets', type=share, nargs='+', metavar='FRACTION',
                        help='adaptive TopFormer: pad the refined tiles up to these fractions of all tiles '
                             '(e.g. 0.125 0.25 0.5 1.0), so TensorRT sees a few fixed shapes')
    parser.add_argument('--opset', type=positive_int, default=DEFAULT_OPSET, help='ONNX opset version')
    parser.add_argument('--exporter', choices=EXPORTERS, default='torchscript', help='torch.onnx exporter')
    parser.add_argument('--tolerance', type=positive_float, default=PARITY_RTOL,
                        help='relative ORT vs PyTorch tolerance')
    parser.add_argument('-o', '--output', required=True, help='the .onnx file to write')
    group = parser.add_argument_group('int8 (ONNX Runtime static quantization, QDQ, per-channel)')
    group.add_argument('--int8', action='store_true', help='also write an int8 model')
    group.add_argument('--int8-output', help='default: OUTPUT with _int8 before .onnx')
    group.add_argument('--calib', help='calibration images: a folder of images (or a dataset with images/) '
                                       'or a rosbag2 path with --calib-topic')
    group.add_argument('--calib-topic', default='/camera/image_raw', help='image topic when --calib is a bag')
    group.add_argument('--calib-count', type=positive_int, default=64, help='calibration images (evenly spaced)')
    group.add_argument('--eval-data', help='held-out dataset (folder, dataset YAML or bag): mIoU fp32 vs int8')
    group.add_argument('--eval-split', help='split of --eval-data (default: val, or every image if none)')
    group.add_argument('--eval-count', type=non_negative_int, default=0, help='limit the evaluation images (0: all)')
    group.add_argument('--threads', type=non_negative_int, default=1,
                       help='ONNX Runtime threads for the int8 comparison')


def _resolve(args):
    """Model, metadata and input size from the arguments, the checkpoint's info filling the gaps."""
    from ...nets import create_model, load_official_checkpoint
    from ..predict import checkpoint_preprocessing
    state, info, sha = None, {}, None
    if args.checkpoint:
        sha = file_sha256(args.checkpoint)
        if not args.official:
            state, info = read_training_checkpoint(args.checkpoint)
    names, palette, ignore_index = (read_classes_file(args.classes) if args.classes
                                    else (info.get('classes'), info.get('palette'), None))
    arch = args.arch or info.get('arch')
    num_classes = args.num_classes or info.get('num_classes') or (len(names) if names else None)
    prep = checkpoint_preprocessing(info)   # what training used; explicit flags override it
    input_size = args.input_size or prep['input_size']
    missing = [flag for flag, value in (('--arch', arch), ('--num-classes', num_classes),
                                        ('--input-size', input_size)) if not value]
    if missing:
        raise ValueError(f'give {", ".join(missing)} (not found in a training checkpoint)')
    model = create_model(arch, num_classes=int(num_classes))
    buckets = {name: tuple(getattr(args, name)) for name in BUCKET_OPTIONS if getattr(args, name)}
    for name in buckets:
        if not hasattr(model, name):
            raise ValueError(f'--{name.replace("_", "-")} is for {BUCKET_OPTIONS[name]}, not {arch}')
    if buckets:   # the model's constructor checks the fractions
        model = create_model(arch, num_classes=int(num_classes), **buckets)
    if args.checkpoint and args.official:
        load_official_checkpoint(model, args.checkpoint)
    elif state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:   # names and shapes that differ: the first one it lists
            first = next((line.strip() for line in str(exc).splitlines()[1:]), str(exc))
            raise ValueError(f'{args.checkpoint}: its weights do not fit {arch} with {num_classes} classes '
                             f'({textwrap.shorten(first, 200)}); check --arch and --num-classes') from None
    meta = build_metadata(int(num_classes), input_size, names=names, palette=palette,
                          mean=args.mean or prep['mean'], std=args.std or prep['std'],
                          resize_mode=args.resize_mode or prep['resize_mode'], arch=arch, checkpoint_sha256=sha,
                          ignore_index=IGNORE_INDEX if ignore_index is None else ignore_index,
                          description=args.description,
                          white_balance=args.white_balance or prep['white_balance'])
    if args.exit_threshold is not None:
        meta['exit_threshold'] = float(args.exit_threshold)
    if args.refine_threshold is not None:
        meta['refine_threshold'] = float(args.refine_threshold)
    if args.class_costs:
        costs = parse_class_costs(args.class_costs)
        class_cost_table(meta['names'], costs)          # a ValueError names an unknown class or a bad cost
        meta['class_costs'] = costs
    return model, meta, input_size


def _check_options(args: argparse.Namespace) -> None:
    """Mistakes in the options alone, found before anything is loaded or exported."""
    low = MIN_OPSET if args.keep_resize else MATMUL_RESIZE_MIN_OPSET
    if not low <= args.opset <= MAX_OPSET[args.exporter]:
        raise UserError(f'--opset {args.opset}: the {args.exporter} exporter takes {low} to '
                        f'{MAX_OPSET[args.exporter]} here' + ('' if args.keep_resize else
                                                             f' (from {MIN_OPSET} with --keep-resize)'))
    if args.std and not all(math.isfinite(v) for v in args.std):
        raise UserError(f'--std {" ".join(map(str, args.std))}: must be finite positive numbers')
    if args.int8 and not args.calib:
        raise UserError('--int8 needs --calib (a folder of images or a rosbag with --calib-topic)')


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    calib_images = None
    if args.int8:   # before the export: a --calib that cannot be read stops here
        from .quantize import load_calibration_images
        calib_images = load_calibration_images(args.calib, args.calib_topic, args.calib_count)
    try:
        model, meta, input_size = _resolve(args)
    except (ValueError, KeyError) as exc:  # arguments that do not fit the checkpoint; missing files go as they are
        raise UserError(exc.args[0] if exc.args else str(exc)) from None
    try:
        report = export_model(model, args.output, meta, input_size, dynamic=not args.fixed_size, opset=args.opset,
                              exporter=args.exporter, tolerance=args.tolerance)
    except ParityError as exc:
        print(f'error: {exc}')
        return 1
    print(format_report(report))
    if args.head == 'logits':   # parity was checked on the labels graph; the surgery keeps the weights as they are
        from ...runtime.upsample import LogitsUpsampler
        from ..graph.logits_head import convert_file
        layout = args.logits_layout
        if layout == 'auto':
            layout = 'nhwc' if len(meta['names']) > LogitsUpsampler.FEW else 'nchw'
        convert_file(args.output, args.output, layout)
        print(f'  converted to a logits model (outputs logits at 1/8, {layout}): {args.output}')
    with tempfile.TemporaryDirectory() as tmp:
        # int8 is quantized from the graph with its Resize nodes (int8 Resize is fast; quantized matrices are not
        # exact) and compared with the fp32 file as shipped (rewritten)
        source = args.output
        if args.int8 and not args.keep_resize:
            source = shutil.copyfile(args.output, Path(tmp) / 'with_resize.onnx')
        if not args.keep_resize:
            from ..graph.resize_matmul import convert_file as resize_to_matmul
            replaced = resize_to_matmul(args.output, args.output)
            print(f'  {replaced} bilinear Resize node(s) rewritten as matrix products: {args.output}')
        if args.int8:
            from .quantize import format_int8_report, quantize_and_compare
            int8_path = args.int8_output or str(Path(args.output).with_name(Path(args.output).stem + '_int8.onnx'))
            int8_report = quantize_and_compare(source, int8_path, calib_images, eval_data=args.eval_data,
                                               eval_count=args.eval_count, eval_split=args.eval_split,
                                               threads=args.threads, reference=args.output)
            print(format_int8_report(int8_report))
    return 0
