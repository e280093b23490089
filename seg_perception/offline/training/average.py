"""Average training checkpoints of one network tensor by tensor (a weight soup): ``seg-perception average``.

    seg-perception average runs/a/last.pt:2 runs/b/last.pt runs/c/last.pt -o runs/soup.pt

Runs that started from the same weights and were trained a little differently (another seed, loss or data mix)
stay close enough in weight space that their average is a model of its own, often better off the training
distribution than each of them. Every floating-point tensor of the ``model`` state (BatchNorm running statistics
included) becomes the weighted mean of the inputs' (``PATH:WEIGHT``, weight 1 by default); integer tensors (the
BatchNorm batch counters) are taken from the first input. The result keeps the first input's model description
(architecture, classes, palette, normalisation, input size) and drops the training state (optimizer,
scheduler, iteration), so it is a start (``init:``) or an export (``export --checkpoint``), not a resume. Inputs
must be the same architecture with the same classes and the same tensor names and shapes.
"""
import argparse
import math
from pathlib import Path

import torch

from ...errors import UserError
from ...nets.checkpoint import CHECKPOINT_INFO_KEYS, torch_load_weights


def parse_input(spec: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:WEIGHT`` -> (path, finite weight > 0)."""
    path, sep, weight = spec.rpartition(':')
    if not sep or not path:
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        return spec, 1.0   # a colon in the path itself
    if not 0 < value < math.inf:
        raise UserError(f'{spec}: the weight after the colon must be a positive number, not {weight}')
    return path, value


def _load(path: str) -> dict:
    checkpoint = torch_load_weights(path, 'training checkpoint')
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get('model'), dict) and 'arch' in checkpoint):
        raise UserError(f'{path}: not a training checkpoint (no model state and arch; `seg-perception train` or '
                        '`recover` writes them)')
    return checkpoint


def average(inputs: list[tuple[str, float]]) -> dict:
    """The weighted average of the checkpoints ``[(path, weight), ...]`` as a checkpoint dict (see the module)."""
    loaded = [(path, _load(path), weight) for path, weight in inputs]
    first_path, first, _ = loaded[0]
    total = sum(weight for _, _, weight in loaded)
    state = {}
    for path, checkpoint, _ in loaded[1:]:
        for key in ('arch', 'num_classes', 'classes'):
            if checkpoint.get(key) != first.get(key):
                raise UserError(f'{path}: {key} {checkpoint.get(key)!r} differs from {first_path}\'s '
                                f'{first.get(key)!r}')
        if checkpoint['model'].keys() != first['model'].keys():
            extra = sorted(checkpoint['model'].keys() ^ first['model'].keys())
            raise UserError(f'{path}: tensor names differ from {first_path}\'s ({len(extra)} names, e.g. {extra[0]})')
    for key, tensor in first['model'].items():
        shapes = {tuple(c['model'][key].shape) for _, c, _ in loaded}
        if len(shapes) > 1:
            raise UserError(f'{key}: shapes differ between the inputs ({sorted(shapes)})')
        if tensor.is_floating_point():
            state[key] = sum(c['model'][key].to(torch.float64) * w for _, c, w in loaded).div(total).to(tensor.dtype)
        else:
            state[key] = tensor.clone()
    out = {key: first[key] for key in CHECKPOINT_INFO_KEYS if key in first}
    out['model'] = state
    out['averaged_from'] = [{'file': path, 'weight': weight} for path, _, weight in loaded]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('inputs', nargs='+', metavar='CHECKPOINT[:WEIGHT]',
                        help='training checkpoints of one architecture and class list (.pt), each with an optional '
                             'weight (default 1)')
    parser.add_argument('-o', '--out', required=True, help='checkpoint to write (.pt)')


def run(args: argparse.Namespace) -> int:
    if Path(args.out).exists():
        raise UserError(f'{args.out}: exists; give a new --out')
    inputs = [parse_input(spec) for spec in args.inputs]
    if len(inputs) < 2:
        raise UserError('give two or more checkpoints to average')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)   # as export and recover do
    checkpoint = average(inputs)
    torch.save(checkpoint, args.out)
    total = sum(weight for _, weight in inputs)
    print(f'{args.out}: {checkpoint["arch"]}, ' + ' + '.join(f'{weight / total:.3g} x {path}'
                                                            for path, weight in inputs))
    return 0
