"""The metadata every exported model carries in its ONNX ``metadata_props`` (all values are strings).

Written by ``seg_perception.offline.deploy.export``, read by ``seg_perception.runtime.engine``; this module is the
one place that defines it.

ONNX graph convention (``output_kind``):
  * input ``images``: float32 (N, 3, H, W), RGB, already normalised with ``mean``/``std`` (0-255 scale), after
    the frame's ``white_balance`` (gray world: each channel scaled to the channels' common mean);
    H and W are dynamic when ``dynamic_hw`` is 'true' (any multiple of ``stride``), else fixed to ``input_size``.
  * optional input ``exit_threshold``: float32 scalar (token-pass models; >= 1.0 means no token stops), or
    ``refine_threshold``: float32 scalar (adaptive TopFormer; 0 = never refine, >= 1.0 = refine every tile).
  * ``output_kind == 'labels'``: outputs ``labels`` int64 (N, H, W) and ``confidence`` float32 (N, H, W)
    (max softmax probability), both at the network input size (logits upsampled bilinearly inside the graph).
  * ``output_kind == 'logits'``: output ``logits`` float32 (N, C, h, w) at any resolution, or (N, h, w, C) per-pixel
    rows when ``logits_layout`` is 'nhwc' (cheaper for the engine with many classes); the engine upsamples and
    takes softmax/argmax.
  * optional extra outputs (token-pass models): ``kept_fraction`` float32 (S,) fraction of tokens still
    active after each stopping stage, ``macs`` float32 scalar: MACs spent on this input; adaptive TopFormer:
    ``refined_fraction`` float32 (1,) fraction of tiles the deep head refined, ``macs``.
"""
import json
import math

FORMAT_VERSION = '1'
# the default normalisation (0-255 RGB) of training and export
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
OUTPUT_KINDS = ('labels', 'logits')
RESIZE_MODES = ('letterbox', 'resize')
LOGITS_LAYOUTS = ('nchw', 'nhwc')
# each frame's colour balance before normalising: none, or gray world (runtime.engine.gray_world_gains)
WHITE_BALANCES = ('none', 'gray_world')

# key -> (json-encoded?, required?)
_FIELDS = {
    'seg_perception.format': (False, True),
    'names': (True, True),
    'palette': (True, True),
    'mean': (True, True),
    'std': (True, True),
    'white_balance': (False, False),  # one of WHITE_BALANCES; absent = 'none'
    'input_size': (True, True),       # [H, W] the size the engine resizes / letterboxes to
    'resize_mode': (False, True),
    'output_kind': (False, True),
    'logits_layout': (False, False),  # logits models: 'nchw' (the default) or 'nhwc' (per-pixel rows)
    'dynamic_hw': (True, False),      # true: the graph accepts any H, W divisible by stride
    'stride': (True, False),
    'ignore_index': (True, False),
    'arch': (False, False),
    'checkpoint_sha256': (False, False),
    'description': (False, False),
    'static_macs': (True, False),     # MACs of one forward at input_size without any token stopping
    'exit_threshold': (True, False),  # token-pass models: the default exit threshold (what training used)
    'refine_threshold': (True, False),  # adaptive TopFormer: the default refine threshold (0 never .. 1 always)
    'cheap_macs': (True, False),      # adaptive TopFormer: MACs of the never-refine path at input_size
    'class_costs': (True, False),     # costmap: {class name: cost -1..100}, the model's default table
    'costmap_min_confidence': (True, False),  # costmap: pixels below this confidence are unknown, never free
    'temperature': (True, False),     # calibration: [T] or [T_1..T_C]; confidence = softmax(logits / T)
    'shift_stats': (True, False),     # shift monitor: {features, mean, precision, threshold, window, ...}
}


def encode(meta: dict) -> dict[str, str]:
    """dict -> {str: str} for ONNX metadata_props. Unknown keys are refused."""
    unknown = set(meta) - set(_FIELDS)
    if unknown:
        raise KeyError(f'unknown metadata keys: {sorted(unknown)}')
    out = {'seg_perception.format': FORMAT_VERSION}
    for key, value in meta.items():
        if key == 'seg_perception.format':
            continue
        out[key] = json.dumps(value) if _FIELDS[key][0] else str(value)
    return out


def _three_finite(values) -> bool:
    return (isinstance(values, list) and len(values) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def decode(props: dict[str, str], source: str = 'model') -> dict:
    """{str: str} from an ONNX file -> validated dict. Raises ValueError with a clear message."""
    if props.get('seg_perception.format') != FORMAT_VERSION:
        raise ValueError(f'{source}: not a seg_perception model (metadata "seg_perception.format" is '
                         f'{props.get("seg_perception.format")!r}, expected {FORMAT_VERSION!r}); export it with '
                         '`seg-perception export`')
    meta = {}
    for key, (is_json, required) in _FIELDS.items():
        if key not in props:
            if required:
                raise ValueError(f'{source}: metadata key {key!r} is missing')
            continue
        try:
            meta[key] = json.loads(props[key]) if is_json else props[key]
        except json.JSONDecodeError as exc:
            raise ValueError(f'{source}: metadata key {key!r} is not valid JSON: {exc}') from None
    names, palette = meta['names'], meta['palette']
    if not names or len(palette) != len(names) or any(len(c) != 3 for c in palette):
        raise ValueError(f'{source}: metadata needs one RGB palette entry per class name')
    mean, std = meta['mean'], meta['std']
    if not (_three_finite(mean) and _three_finite(std) and min(std) > 0):
        raise ValueError(f'{source}: metadata mean {mean} / std {std} must be 3 finite numbers each (std > 0)')
    if len(meta['input_size']) != 2 or min(meta['input_size']) <= 0:
        raise ValueError(f'{source}: metadata input_size must be [H, W]')
    if meta.setdefault('white_balance', 'none') not in WHITE_BALANCES:
        raise ValueError(f'{source}: white_balance {meta["white_balance"]!r} not in {WHITE_BALANCES}')
    if meta['resize_mode'] not in RESIZE_MODES:
        raise ValueError(f'{source}: resize_mode {meta["resize_mode"]!r} not in {RESIZE_MODES}')
    if meta['output_kind'] not in OUTPUT_KINDS:
        raise ValueError(f'{source}: output_kind {meta["output_kind"]!r} not in {OUTPUT_KINDS}')
    if meta.get('logits_layout', 'nchw') not in LOGITS_LAYOUTS:
        raise ValueError(f'{source}: logits_layout {meta["logits_layout"]!r} not in {LOGITS_LAYOUTS}')
    if not isinstance(meta.get('class_costs', {}), dict):
        raise ValueError(f'{source}: metadata class_costs must be a JSON object {{class name: cost}}')
    temperature = meta.get('temperature')
    if temperature is not None and (not isinstance(temperature, list) or len(temperature) not in (1, len(names))
                                    or not all(isinstance(t, (int, float)) and t > 0 for t in temperature)):
        raise ValueError(f'{source}: metadata temperature must be a list of 1 or {len(names)} positive numbers')
    if not isinstance(meta.get('shift_stats', {}), dict):
        raise ValueError(f'{source}: metadata shift_stats must be a JSON object')
    meta.setdefault('dynamic_hw', False)
    meta.setdefault('stride', 32)
    meta.setdefault('ignore_index', 255)
    return meta
