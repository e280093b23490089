"""``seg-perception flops``: parameters and multiply-accumulates (MACs) of a model.

Counting follows the convention of the TopFormer / SeaFormer papers (mmcv 1.x ``get_model_complexity_info``
style, with BatchNorm counted) and extends it to functional matrix products:
  * convolutions and linear layers: MACs of the product, plus one per output element for a bias;
  * matrix products (mm / bmm / matmul / einsum / scaled-dot-product attention), wherever they occur;
  * normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm): one per input element, two if affine;
  * activation modules: one per output element; pooling modules: one per input element; ``nn.Upsample``: one
    per output element.
Matrix products inside a counted module (the addmm of ``nn.Linear``, the bin sums of an exportable pooling
module) are not counted again. ``count_macs`` works for any ``nn.Module``.
"""
import argparse
import collections
import difflib

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ...errors import UserError
from ...nets import create_model, list_models
from ...nets._layers import ExportableAdaptiveAvgPool2d
from ...runtime.engine import MAX_INPUT_PIXELS
from ..argtypes import positive_int

__all__ = ['count_macs', 'count_params', 'add_arguments', 'run']

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
                nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
          nn.modules.pooling._AdaptiveMaxPoolNd, ExportableAdaptiveAvgPool2d)
_CONVS = (nn.modules.conv._ConvNd,)
_COUNTED_WHOLE = (nn.Linear,) + _POOLS  # matrix products inside these are not counted again

_OP_CATEGORY = {
    'convolution': 'conv', '_convolution': 'conv', 'convolution_overrideable': 'conv',
    '_slow_conv2d_forward': 'conv', 'cudnn_convolution': 'conv',
    'mm': 'matmul', 'addmm': 'matmul', 'bmm': 'matmul', 'baddbmm': 'matmul', '_scaled_mm': 'matmul',
}


def _first_tensor(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    return None


def _sdpa_cpu_macs(args):
    """MACs of scaled-dot-product attention: q (..., L, E), k (..., S, E), v (..., S, Ev)."""
    q, k, v = args[:3]
    batch = q.numel() // (q.shape[-2] * q.shape[-1])
    return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


class _MacCounter(TorchDispatchMode):
    """Counts matrix products at the aten level and everything else with module hooks."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.macs = collections.Counter()
        self._inside_counted = 0
        self._handles = []

    def _module_macs(self, module, inputs, output):
        x = _first_tensor(inputs)
        y = output if isinstance(output, torch.Tensor) else _first_tensor(output)
        if isinstance(module, _CONVS + (nn.Linear,)):
            if module.bias is not None and y is not None:
                self.macs['bias'] += y.numel()
            if isinstance(module, nn.Linear) and x is not None:
                self.macs['linear'] += y.numel() * module.in_features
        elif isinstance(module, _NORMS) and x is not None:
            affine = getattr(module, 'affine', getattr(module, 'elementwise_affine', False))
            self.macs['norm'] += x.numel() * (2 if affine else 1)
        elif isinstance(module, _ACTIVATIONS) and y is not None:
            self.macs['activation'] += y.numel()
        elif isinstance(module, _POOLS) and x is not None:
            self.macs['pool'] += x.numel()
        elif isinstance(module, nn.Upsample) and y is not None:
            self.macs['upsample'] += y.numel()

    def _pre(self, module, inputs):
        if isinstance(module, _COUNTED_WHOLE):
            self._inside_counted += 1

    def _post(self, module, inputs, output):
        if isinstance(module, _COUNTED_WHOLE):
            self._inside_counted -= 1
        self._module_macs(module, inputs, output)

    def __enter__(self):
        for m in self.model.modules():
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._inside_counted:
            return out
        packet = func._overloadpacket
        name = packet.__name__
        if packet in flop_registry:
            category = _OP_CATEGORY.get(name, 'attention' if 'attention' in name else 'matmul')
            self.macs[category] += flop_registry[packet](*args, **kwargs, out_val=out) // 2
        elif name.startswith('_scaled_dot_product') and 'backward' not in name:
            self.macs['attention'] += _sdpa_cpu_macs(args)
        return out


def count_macs(model: nn.Module, input_shape: tuple[int, ...], **forward_kwargs) -> tuple[int, dict]:
    """Run ``model`` once on zeros of ``input_shape`` (eval mode, no grad) and count MACs.

    Returns (total, details): details maps 'conv', 'matmul', 'attention', 'linear', 'bias', 'norm',
    'activation', 'pool', 'upsample' to MAC counts; total is their sum."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(input_shape, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None)
    counter = _MacCounter(model)
    try:
        with torch.no_grad(), counter:
            model(x, **forward_kwargs)
    finally:
        model.train(was_training)
    details = {k: int(counter.macs.get(k, 0)) for k in
               ('conv', 'matmul', 'attention', 'linear', 'bias', 'norm', 'activation', 'pool', 'upsample')}
    return sum(details.values()), details


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--arch', required=True, help='registered model name (see seg_perception.nets)')
    parser.add_argument('--num-classes', type=positive_int, default=150, help='classes of the segmentation head')
    parser.add_argument('--input-size', type=positive_int, nargs=2, metavar=('H', 'W'), default=(512, 512),
                        help='input height and width')
    parser.add_argument('--details', action='store_true', help='also print MACs per category')


def run(args: argparse.Namespace) -> int:
    if args.arch not in list_models():
        close = difflib.get_close_matches(args.arch, list_models(), n=1)
        raise UserError(f'--arch {args.arch}: unknown model' + (f"; did you mean '{close[0]}'?" if close else '')
                        + f' (known: {", ".join(list_models())})')
    h, w = args.input_size
    if h * w > MAX_INPUT_PIXELS:
        raise UserError(f'--input-size {h} {w}: larger than the engine takes (at most {MAX_INPUT_PIXELS} pixels, '
                        'e.g. 8192 8192)')
    model = create_model(args.arch, num_classes=args.num_classes)
    total, details = count_macs(model, (1, 3, h, w))
    print(f'{args.arch} @ {h}x{w}, {args.num_classes} classes')
    print(f'params: {count_params(model):,} ({count_params(model) / 1e6:.3f} M)')
    print(f'MACs:   {total / 1e9:.3f} G')
    if args.details:
        for key, value in details.items():
            if value:
                print(f'  {key:<10} {value / 1e9:.4f} G')
    return 0
