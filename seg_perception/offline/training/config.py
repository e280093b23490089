"""The training config schema: one flat YAML per experiment, checked before anything runs.

``DEFAULTS`` lists every key with its default (ultralytics-style); the YAML file and then the ``key=value``
overrides (values parsed with ``yaml.safe_load``) replace them. Unknown keys are refused with a close-match hint,
every value is type-checked against its default, and impossible values (sizes not multiples of the stride, an
unknown resize mode) are refused with the key named.
"""
import difflib
import math
from pathlib import Path

import yaml

from ...runtime.metadata import IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES, WHITE_BALANCES

SIZE_DIVISOR = 32

DEFAULTS = {
    # model
    'arch': 'topformer_tiny',      # a name from nets.list_models()
    'num_classes': 0,              # 0: the number of classes of the training set
    'init': '',                    # checkpoint to start from (ours or official); shape mismatches are skipped
    'init_new_classes_from': {},   # {new class id: class id}: more classes than `init`, new ones copied from these
    # data
    'data': '',                    # dataset folder, dataset YAML or rosbag2 path
    'val_data': '',                # '' = `data` with split `val_split`; 'none' = no validation
    'layout': '',                  # '' = detect (ade20k, cityscapes, camvid, generic, rosbag)
    'split': 'train',
    'val_split': 'val',
    'image_topic': '',             # rosbag specs only
    'gt_topic': '',
    'input_size': [256, 320],      # [H, W] the network input at inference (the engine resizes to it)
    'resize_mode': 'resize',       # how images are fitted into input_size: 'resize' (stretch) or 'letterbox'
    'crop_size': [192, 256],       # [H, W] training crop, taken after fitting to input_size and scaling
    'scale_range': [0.5, 2.0],
    'hflip': 0.5,                  # probability
    'photometric': 0.5,            # probability of colour jitter (brightness, contrast, saturation, hue)
    'domain_randomization': 0.0,   # probability of the camera pipeline (blur, noise, JPEG, gamma, colour cast, fog)
    'class_recolor': 0.0,          # probability of recolouring/retexturing each class's pixels at random
    'same_look': {},               # {class: class}: recoloured as that class (one look, e.g. floor under tables)
    'texture_grain': 0.0,          # probability (per recoloured class) of fine grain mixed into its texture
    'haze': -1.0,                  # probability of haze/fog; < 0: 0.15 x domain_randomization
    'flat_haze': 0.0,              # share of hazes that veil the whole frame evenly (fog) instead of the far part
    'shadows': 0.0,                # probability of soft cast shadows (dark blurred polygons)
    'random_conv': 0.0,            # probability of a random convolution of the image (texture randomization)
    'mean': IMAGENET_MEAN,         # RGB, 0-255 scale
    'std': IMAGENET_STD,
    'white_balance': 'none',       # each image's colour balance before normalising: 'none' or 'gray_world'
    'batch_size': 8,               # total over all processes
    'workers': 2,                  # data-loading processes per training process
    # schedule and loss
    'iters': 2000,
    'epochs': 0,                   # > 0: train this many passes over the training set instead of `iters`
    'lr': 1e-3,
    'weight_decay': 0.01,
    'warmup_iters': 100,
    'warmup_ratio': 1e-3,          # learning rate factor at iteration 0
    'poly_power': 1.0,
    'min_lr': 0.0,
    'aux_weight': -1.0,            # weight of auxiliary outputs' losses; < 0: the model's own aux_loss_weight
    'loss_kwargs': {},             # further keyword arguments of the model's training_loss
    'freeze': '',                  # comma list of the model's top-level modules kept as loaded from init
                                   # (no gradients, eval mode), e.g. 'backbone,decode_head' under a new head
    'teacher': '',                 # checkpoint of a teacher (e.g. the static twin of a token-pass model)
    'kd_weight': 0.0,
    'kd_temperature': 1.0,
    'find_unused_parameters': False,  # DDP option, for models that skip parameters in some steps
    # validation, logging, checkpoints
    'val_interval': 500,
    'val_limit': 0,                # > 0: validate on the first N images only
    'save_interval': 0,            # 0 = val_interval; iterations between last.pt writes
    'log_interval': 10,
    'out': 'runs/train',
    'resume': False,               # true: continue from out/last.pt; or a path to a last.pt
    'exist_ok': False,             # allow starting a fresh run in a directory holding last.pt
    # runtime
    'seed': 0,
    'deterministic': True,
    'threads': 0,                  # torch intra-op threads per process; 0 = torch default
    'device': '',                  # '' = cuda (local rank) when available, else cpu
}

_TYPES = {'resume': (bool, str)}
# numbers with a range (NaN fails every comparison): (keys, test, what the message asks for)
_RANGES = (
    (('hflip', 'photometric', 'domain_randomization', 'class_recolor', 'texture_grain', 'flat_haze', 'shadows',
      'random_conv'), lambda v: 0 <= v <= 1, 'a probability in [0, 1]'),
    (('haze',), lambda v: v <= 1, 'a probability <= 1 (< 0: the default)'),
    (('lr', 'kd_temperature', 'val_interval', 'log_interval'), lambda v: v > 0, 'positive'),
    (('std',), lambda v: 0 < v < math.inf, 'positive and finite'),
    (('mean',), math.isfinite, 'finite'),
    (('num_classes', 'workers', 'epochs', 'weight_decay', 'warmup_iters', 'warmup_ratio', 'poly_power', 'min_lr',
      'kd_weight', 'val_limit', 'save_interval', 'seed', 'threads'), lambda v: v >= 0, '>= 0'),
)
_LISTS = {'input_size': (int, 2), 'crop_size': (int, 2), 'scale_range': (float, 2), 'mean': (float, 3),
          'std': (float, 3)}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(key, value):
    """(ok, value) for ``value`` against the type of ``DEFAULTS[key]``; ints are accepted (as floats) for
    floats, None (as '') for strings, and lists are checked element-wise."""
    default = DEFAULTS[key]
    if key in _TYPES:
        return isinstance(value, _TYPES[key]), value
    if key in _LISTS:
        elem, length = _LISTS[key]
        ok = isinstance(value, (list, tuple)) and len(value) == length and all(
            _is_number(v) if elem is float else _is_int(v) for v in value)
        return ok, [elem(v) for v in value] if ok else value
    if isinstance(default, str):
        return (True, '') if value is None else (isinstance(value, str), value)
    if isinstance(default, bool):
        return isinstance(value, bool), value
    if isinstance(default, int):
        return _is_int(value), value
    if isinstance(default, float):
        return (True, float(value)) if _is_number(value) else (False, value)
    if isinstance(default, dict):
        return (True, dict(value)) if isinstance(value, dict) else (False, value)
    return isinstance(value, type(default)), value


def _type_name(key):
    if key in _TYPES:
        return ' or '.join(t.__name__ for t in _TYPES[key])
    if key in _LISTS:
        elem, length = _LISTS[key]
        return f'a list of {length} {elem.__name__}s'
    return type(DEFAULTS[key]).__name__


def config_keys_help() -> str:
    """Every config key with its type and default, one per line (for ``seg-perception train --help``)."""
    width = max(len(k) for k in DEFAULTS)
    types = {key: _type_name(key) for key in DEFAULTS}
    type_width = max(len(t) for t in types.values())
    lines = ['config keys (YAML or key=value; type, default):']
    lines += [f'  {key:<{width}}  {types[key]:<{type_width}}  {value!r}' for key, value in DEFAULTS.items()]
    return '\n'.join(lines)


def check_config(cfg: dict) -> dict:
    """Return ``cfg`` merged over DEFAULTS; unknown keys (ValueError, with a close-match hint), wrong types
    (TypeError) and impossible values (ValueError) are refused."""
    unknown = [k for k in cfg if k not in DEFAULTS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.6)
            hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        raise ValueError(f'unknown config key(s): {", ".join(hints)}; valid keys: {", ".join(DEFAULTS)}')
    out = {}
    for key, value in {**DEFAULTS, **cfg}.items():
        ok, out[key] = _check_value(key, value)
        if not ok:
            raise TypeError(f'config key {key!r} must be {_type_name(key)}, got {value!r} ({type(value).__name__})')
    if out['batch_size'] < 1 or (out['iters'] < 1 and out['epochs'] < 1):
        raise ValueError('batch_size and iters (or epochs) must be positive')
    for keys, ok, requirement in _RANGES:
        for key in keys:
            if not all(ok(v) for v in (out[key] if isinstance(out[key], list) else [out[key]])):
                raise ValueError(f'config key {key!r} must be {requirement}, got {out[key]!r}')
    if not out['data']:
        raise ValueError('config key "data" (the training dataset) is required')
    for key in ('input_size', 'crop_size'):
        if min(out[key]) < 1 or any(v % SIZE_DIVISOR for v in out[key]):
            raise ValueError(f'{key} {out[key]} must be positive multiples of {SIZE_DIVISOR} (the export stride)')
    if out['resize_mode'] not in RESIZE_MODES:
        raise ValueError(f'resize_mode {out["resize_mode"]!r} must be one of {", ".join(RESIZE_MODES)}')
    if out['white_balance'] not in WHITE_BALANCES:
        raise ValueError(f'white_balance {out["white_balance"]!r} must be one of {", ".join(WHITE_BALANCES)}')
    if not 0 < out['scale_range'][0] <= out['scale_range'][1]:
        raise ValueError(f'scale_range {out["scale_range"]} must be an increasing pair of positive factors')
    weights = out['loss_kwargs'].get('class_weights')
    if weights is not None and (not isinstance(weights, list) or not all(_is_number(w) and w > 0 for w in weights)
                                or (out['num_classes'] and len(weights) != out['num_classes'])):
        raise ValueError(f'loss_kwargs.class_weights {weights!r} must be positive numbers, one per class '
                         f'({out["num_classes"] or "num_classes"})')
    for key in ('same_look', 'init_new_classes_from'):
        if not all(isinstance(k, int) and isinstance(v, int) and 0 <= k < 255 and 0 <= v < 255
                   for k, v in out[key].items()):
            raise ValueError(f'{key} {out[key]!r} must map class ids to class ids (integers 0-254)')
    return out


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict:
    """['lr=0.01', 'crop_size=[64,64]'] -> {'lr': 0.01, 'crop_size': [64, 64]} (values via yaml.safe_load)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise ValueError(f'override {pair!r} is not key=value')
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ''
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] | dict = ()) -> dict:
    """Read a flat YAML config, apply ``key=value`` overrides and check the result."""
    cfg = {}
    if path:
        try:
            with open(path) as f:
                cfg = yaml.safe_load(f) or {}
        except UnicodeDecodeError:
            raise ValueError(f'{path}: not a text file (a config is a YAML file, see config/train/)') from None
        if not isinstance(cfg, dict):
            raise ValueError(f'{path}: a config is a flat mapping of keys to values')
    cfg.update(parse_overrides(overrides) if not isinstance(overrides, dict) else overrides)
    return check_config(cfg)
