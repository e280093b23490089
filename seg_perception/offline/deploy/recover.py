"""Rebuild a training checkpoint from an exported ``.onnx`` file, for fine-tuning a shipped model whose
training checkpoint is gone (``seg-perception recover``).

Export folds each BatchNorm into the convolution before it (``W' = W * g / s``, ``b' = beta - m * g / s``), so
the file holds the folded weights under generated names. Recovery walks the ONNX ``Conv`` nodes and the model's
``nn.Conv2d`` calls in execution order (they correspond one to one; the counts and shapes are checked), copies
each folded weight into its convolution, and gives the BatchNorm after it the statistics ``(m, v)`` of the
folded convolution's output measured on calibration images, with ``gamma = sqrt(v + eps)`` and
``beta = b' + m``: the BatchNorm then computes ``x + b'`` in eval mode exactly and approximately in training mode
(where batch statistics replace ``(m, v)``), so fine-tuning starts from the shipped model's function. Every other
initializer (kept under its parameter name) is copied by name; anything left unmatched on either side (an
initializer of the file, a parameter of the model) is an error. The result
is checked against ONNX Runtime on the calibration images before it is written.
"""
import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from ...errors import UserError
from ..argtypes import positive_int
from ..graph.onnx_graph import load_onnx, read_metadata

PARITY_RTOL = 1e-3


def _conv_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, str | None]]:
    """``(conv name, conv, name of the BatchNorm2d that consumes its output or None)`` in call order."""
    calls, last = [], {}
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def on_conv(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        calls.append([names[module], module, None])
        last['conv'] = (len(calls) - 1, output)

    def on_bn(module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        if 'conv' in last and last['conv'][1] is inputs[0]:
            calls[last['conv'][0]][2] = names[module]

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_hook(on_bn))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [tuple(c) for c in calls]


def _onnx_convs(proto: onnx.ModelProto) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == 'Conv' and n.input[1] in inits]
    return convs, inits


def recover_state_dict(model: nn.Module, proto: onnx.ModelProto, images: torch.Tensor) -> dict:
    """A state dict for ``model`` (the architecture the file was exported from) rebuilt from ``proto``;
    ``images`` (N, 3, H, W, normalised) give the BatchNorm statistics."""
    model.eval()
    calls = _conv_calls(model, images[:1])
    convs, inits = _onnx_convs(proto)
    if len(calls) != len(convs):
        raise UserError(f'the file has {len(convs)} convolutions, {type(model).__name__} calls {len(calls)}: '
                        'not an export of this architecture, or one whose export merges or reorders convolutions '
                        '(recover rebuilds TopFormer and the adaptive TopFormer)')
    state = {k: v.clone() for k, v in model.state_dict().items()}
    used, filled = set(), set()
    # 1. everything the file keeps under its parameter name (export wraps the model as ``model.``)
    for key in state:
        for candidate in (f'model.{key}', key):
            if candidate in inits:
                if tuple(inits[candidate].shape) != tuple(state[key].shape):
                    raise UserError(f'{key}: shape {tuple(inits[candidate].shape)} in the file, '
                                    f'{tuple(state[key].shape)} in the model')
                state[key] = torch.from_numpy(inits[candidate].copy())
                used.add(candidate)
                filled.add(key)
                break
    # 2. convolutions, folded ones with their BatchNorm as identity + folded bias while measuring
    folded = {}
    for (name, conv, bn), node in zip(calls, convs):
        weight = inits[node.input[1]]
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise UserError(f'{name}: the file has a {tuple(weight.shape)} kernel there, the model '
                            f'{tuple(conv.weight.shape)}: not an export of this architecture')
        bias = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else None
        used.update(node.input[1:3])
        state[f'{name}.weight'] = torch.from_numpy(weight.copy())
        filled.update({f'{name}.weight', f'{name}.bias'} | ({f'{bn}.weight', f'{bn}.bias'} if bn else set()))
        if bn is None:
            if bias is not None:
                if conv.bias is None:
                    raise UserError(f'{name}: the file has a bias the model has no place for')
                state[f'{name}.bias'] = torch.from_numpy(bias.copy())
            continue
        if conv.bias is not None:
            state[f'{name}.bias'] = torch.zeros_like(conv.bias)
        bias = torch.from_numpy(np.zeros(weight.shape[0], np.float32) if bias is None else bias.copy())
        eps = dict(model.named_modules())[bn].eps
        state[f'{bn}.running_mean'] = torch.zeros_like(bias)
        state[f'{bn}.running_var'] = torch.full_like(bias, 1 - eps)
        state[f'{bn}.weight'] = torch.ones_like(bias)
        state[f'{bn}.bias'] = bias
        folded[name] = (bn, bias, eps)
    left = [n for n in inits if n.startswith('model.') and n not in used]
    if left:
        raise UserError(f'initializers of the file left unmatched: {", ".join(left[:8])}')
    missing = [k for k, _ in model.named_parameters() if k not in filled]
    if missing:   # e.g. a transformer's linear layers, exported as anonymous (transposed) MatMul weights
        raise UserError(f'{len(missing)} parameters of {type(model).__name__} not found in the file '
                        f'({", ".join(missing[:4])}, ...): recover rebuilds networks of convolutions + BatchNorm '
                        'whose other weights keep their names')
    # 3. statistics of each folded convolution's output on the calibration images (the model now computes
    #    exactly what the file computes)
    model.load_state_dict(state)
    modules = dict(model.named_modules())
    sums = {}

    def measure(name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            y = output.detach().double()
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + y.sum(dim=(0, 2, 3))
            s[1] = s[1] + (y * y).sum(dim=(0, 2, 3))
            s[2] += y.numel() // y.shape[1]
        return hook

    handles = [modules[name].register_forward_hook(measure(name)) for name in folded]
    try:
        with torch.no_grad():
            for k in range(len(images)):
                model(images[k:k + 1])
    finally:
        for h in handles:
            h.remove()
    # 4. BatchNorms that compute x + b' with the measured statistics
    for name, (bn, bias, eps) in folded.items():
        total, squares, count = sums[name]
        mean = (total / count).float()
        var = (squares / count - (total / count) ** 2).clamp_min(0).float()
        state[f'{bn}.running_mean'] = mean
        state[f'{bn}.running_var'] = var
        state[f'{bn}.weight'] = torch.sqrt(var + eps)
        state[f'{bn}.bias'] = bias + mean
    return state


def recover(onnx_path: str | Path, arch: str, images: list[np.ndarray], out: str | Path) -> dict:
    """Write a training checkpoint rebuilt from ``onnx_path`` to ``out``; returns a report with the parity."""
    import onnxruntime as ort

    from ...nets import create_model
    from ..predict import normalize

    onnx_path = Path(onnx_path)
    proto = load_onnx(onnx_path)
    meta = read_metadata(proto)
    num_classes = len(meta['names'])
    h, w = meta['input_size']
    import cv2
    batch = torch.stack([normalize(cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR), meta['mean'], meta['std'],
                                   meta['white_balance']) for im in images])
    model = create_model(arch, num_classes=num_classes)
    state = recover_state_dict(model, proto, batch)
    model.load_state_dict(state)
    model.eval()
    # parity against the file: its 1/8 logits (logits models) or its labels and confidence
    from .export import knob_name, postprocess
    session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    outputs = [o.name for o in session.get_outputs()]
    # a file with a knob (adaptive, token passing) at 1: every tile refined, no token stopped, what the model
    # computes without one
    knob = {knob_name(model): np.array(1.0, np.float32)} if len(session.get_inputs()) > 1 else {}
    agree, worst = [], 0.0
    with torch.no_grad():
        for k in range(min(len(batch), 8)):
            x = batch[k:k + 1]
            logits = model(x)
            if 'logits' in outputs:
                ref = session.run(['logits'], {'images': x.numpy(), **knob})[0]
                if meta.get('logits_layout') == 'nhwc':
                    ref = ref.transpose(0, 3, 1, 2)
                agree.append(float((logits.argmax(1).numpy() == ref.argmax(1)).mean()))
                worst = max(worst, float(np.abs(logits.numpy() - ref).max() / max(np.abs(ref).max(), 1e-6)))
            else:
                labels, confidence = postprocess(logits, x.shape[-2:])
                ref_labels, ref_conf = session.run(['labels', 'confidence'], {'images': x.numpy(), **knob})
                agree.append(float((labels.numpy() == ref_labels).mean()))
                worst = max(worst, float(np.abs(confidence.numpy() - ref_conf).max()))
    report = {'source': str(onnx_path), 'arch': arch, 'labels_agree': float(np.mean(agree)),
              'max_rel_diff': worst}
    if report['labels_agree'] < 0.999 or worst > PARITY_RTOL:
        raise UserError(f'the model rebuilt as {arch} differs from {onnx_path} (labels agree '
                        f'{100 * report["labels_agree"]:.1f} %, max relative difference {worst:.3g}): not an export '
                        'of this architecture, or one recover cannot rebuild (convolutions + BatchNorm only)')
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({'model': state, 'arch': arch, 'num_classes': num_classes, 'classes': meta['names'],
                'palette': [list(c) for c in meta['palette']], 'mean': meta['mean'], 'std': meta['std'],
                'input_size': [h, w], 'resize_mode': meta.get('resize_mode', 'resize'),
                'white_balance': meta['white_balance'],
                'recovered_from': {'file': onnx_path.name, 'sha256': _sha256(onnx_path)}}, out)
    return report


def _sha256(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', help='exported .onnx file (BatchNorm folded, as `export` writes it)')
    parser.add_argument('--arch', required=True, help='architecture it was exported from (seg-perception flops '
                        '--help lists them)')
    parser.add_argument('--calib', required=True, help='images for the BatchNorm statistics: a dataset folder, '
                        'an image folder, a dataset YAML or a bag')
    parser.add_argument('--calib-count', type=positive_int, default=64, help='calibration images used')
    parser.add_argument('-o', '--out', required=True, help='checkpoint to write (.pt); use it as `init:` in a '
                        'training config')


def run(args: argparse.Namespace) -> int:
    from .quantize import load_calibration_images

    if Path(args.out).exists():
        raise UserError(f'{args.out}: exists; give a new --out')
    images = load_calibration_images(args.calib, count=args.calib_count)
    report = recover(args.model, args.arch, images, args.out)
    print(f'{args.out}: {args.arch} from {args.model}; labels agree {100 * report["labels_agree"]:.2f} %, '
          f'max relative difference {report["max_rel_diff"]:.2e}')
    return 0
