"""ONNX Runtime segmentation engine: the one inference path of the node, replay, evaluation and benchmarks.

Robot side: numpy, OpenCV and onnxruntime only. Everything the engine needs (classes, palette, mean/std,
input size, resize mode, output kind) is read from the model file's metadata (see ``metadata.py``).

    engine = SegmentationEngine('models/topformer_tiny_scenes.onnx')
    result = engine.infer(rgb)          # HxWx3 uint8 RGB of any size
    result.labels, result.confidence    # HxW, at the input's own resolution
"""
import dataclasses
import logging
import os
import time
from collections.abc import Sequence

import cv2
import numpy as np
import onnxruntime as ort

from . import metadata as md
from .model_file import ModelFileError, check_model_file
from .upsample import LogitsUpsampler

LOG = logging.getLogger('seg_perception.engine')

DEFAULT_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')
MAX_INPUT_PIXELS = 8192 * 8192


class EngineError(RuntimeError):
    """A model file that cannot be used (missing, not ONNX, no seg_perception metadata, wrong I/O)."""


@dataclasses.dataclass
class Geometry:
    """How an input image was mapped onto the network input (to undo it on the way out)."""
    src_hw: tuple       # original (H, W)
    net_hw: tuple       # network input (H, W)
    content_hw: tuple   # size of the resized image inside the network input
    offset_yx: tuple    # top-left of the content (letterbox padding before it)


@dataclasses.dataclass
class SegResult:
    labels: np.ndarray          # (H, W) uint8 (uint16 when more than 255 classes), original resolution
    confidence: np.ndarray      # (H, W) float32 in [0, 1]
    latency_ms: float           # whole infer(): pre + model + post
    model_ms: float             # ONNX Runtime run only
    model_cpu_ms: float = None  # CPU time of the calling thread during the run (= its cost with 1 intra-op thread)
    kept_fraction: np.ndarray = None  # token-pass models: fraction of tokens active after each stage
    macs: float = None          # token-pass / adaptive models: MACs actually spent on this frame
    refined_fraction: float = None  # adaptive TopFormer: fraction of tiles the deep head refined
    logits: np.ndarray = None   # logits models: the network's (C, h, w) float32 logits (1/8 of its input)
    shift_features: np.ndarray = None  # models calibrated with taps: whitened pooled features (D,), runtime.shift


def select_providers(preferred: list[str] | tuple[str, ...] | None,
                     available: list[str] | None = None) -> list[str]:
    """Keep the preferred execution providers that this onnxruntime build has, in order; CPU always last."""
    available = list(ort.get_available_providers() if available is None else available)
    chosen = [p for p in (preferred or DEFAULT_PROVIDERS) if p in available]
    if 'CPUExecutionProvider' not in chosen:
        chosen.append('CPUExecutionProvider')
    return chosen


def compute_geometry(src_hw: tuple[int, int], net_hw: tuple[int, int] | None, mode: str, stride: int = 32,
                     dynamic: bool = False) -> Geometry:
    """Network input size and placement for an image of ``src_hw``.

    ``dynamic`` models run at the image's own size rounded up to ``stride`` (padding bottom/right) when
    ``net_hw`` is None; otherwise the image is fitted into ``net_hw``: 'resize' stretches it, 'letterbox'
    keeps the aspect ratio and pads (centred)."""
    h, w = src_hw
    if net_hw is None:
        if not dynamic:
            raise ValueError('a fixed-size model needs net_hw')
        nh, nw = -(-h // stride) * stride, -(-w // stride) * stride
        return Geometry((h, w), (nh, nw), (h, w), (0, 0))
    nh, nw = net_hw
    if mode == 'resize':
        return Geometry((h, w), (nh, nw), (nh, nw), (0, 0))
    scale = min(nh / h, nw / w)
    ch, cw = max(1, min(nh, round(h * scale))), max(1, min(nw, round(w * scale)))
    return Geometry((h, w), (nh, nw), (ch, cw), ((nh - ch) // 2, (nw - cw) // 2))


def gray_world_gains(rgb: np.ndarray) -> np.ndarray:
    """Gray-world white balance of an HxWx3 uint8 image: per-channel gains (3,) float64 that move each channel's
    mean to the three channels' common mean, each within [0.5, 2] (a frame of one strong colour is not turned
    grey); all 1 for a (nearly) black frame."""
    means = np.asarray(cv2.mean(rgb)[:3], np.float64)
    if means.mean() < 1.0:
        return np.ones(3)
    return np.clip(means.mean() / np.maximum(means, 1e-3), 0.5, 2.0)


def balanced_normalisation(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float],
                           white_balance: str = 'none') -> tuple:
    """The (mean, std) that normalise HxWx3 uint8 ``rgb`` after its ``white_balance``: 'gray_world' folds
    :func:`gray_world_gains` g into them (``(g x - mean) / std == (x - mean / g) / (std / g)``: no extra pass over
    the image); 'none' returns them as they are."""
    if white_balance != 'gray_world':
        return mean, std
    gains = gray_world_gains(rgb)
    return np.asarray(mean) / gains, np.asarray(std) / gains


def preprocess(rgb: np.ndarray, geometry: Geometry, mean: Sequence[float], std: Sequence[float],
               white_balance: str = 'none') -> np.ndarray:
    """HxWx3 uint8 RGB -> (1, 3, H, W) float32, normalised; letterbox padding becomes 0 after normalising.
    ``white_balance``: of the resized frame (:func:`balanced_normalisation`)."""
    ch, cw = geometry.content_hw
    if (ch, cw) != tuple(rgb.shape[:2]):
        interp = cv2.INTER_AREA if ch * cw < rgb.shape[0] * rgb.shape[1] else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (cw, ch), interpolation=interp)
    rgb = np.ascontiguousarray(rgb)
    content = _normalised_planes(rgb, *balanced_normalisation(rgb, mean, std, white_balance))
    if (ch, cw) == tuple(geometry.net_hw):
        return content
    blob = np.zeros((1, 3, *geometry.net_hw), np.float32)
    oy, ox = geometry.offset_yx
    blob[0, :, oy:oy + ch, ox:ox + cw] = content[0]
    return blob


def _normalised_planes(rgb: np.ndarray, mean, std) -> np.ndarray:
    """HxWx3 uint8 -> (1, 3, H, W) float32 ``(x - mean) / std``: OpenCV's blob maker where it has per-channel
    scales (4.8 and newer; 0.14 vs 0.54 ms at 256x320, same values), else numpy."""
    if hasattr(getattr(cv2, 'dnn', None), 'blobFromImageWithParams'):   # OpenCV may be built without dnn
        params = cv2.dnn.Image2BlobParams(scalefactor=(*(1.0 / np.asarray(std, np.float64)), 0.0),
                                          size=rgb.shape[1::-1], mean=(*map(float, mean), 0.0), swapRB=False,
                                          ddepth=cv2.CV_32F)
        return cv2.dnn.blobFromImageWithParams(rgb, params)
    scale = (1.0 / np.asarray(std, np.float32)).reshape(3, 1, 1)
    shift = np.asarray(mean, np.float32).reshape(3, 1, 1)
    return np.multiply(np.subtract(rgb.transpose(2, 0, 1), shift, dtype=np.float32), scale)[None]


def restore(array: np.ndarray, geometry: Geometry, interpolation: int) -> np.ndarray:
    """Crop the content out of a network-size (H, W) map and resize it to the original image size."""
    oy, ox = geometry.offset_yx
    ch, cw = geometry.content_hw
    array = array[oy:oy + ch, ox:ox + cw]
    h, w = geometry.src_hw
    if (ch, cw) != (h, w):
        array = cv2.resize(array, (w, h), interpolation=interpolation)
    return np.ascontiguousarray(array)


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids outside the palette (e.g. 255 ignore) are black."""
    lut = np.zeros((max(256, len(palette) + 1), 4), np.uint8)   # RGBA rows; the last one (black) takes overflow
    lut[:len(palette), :3] = np.asarray(palette, np.uint8)
    if labels.dtype == np.uint8:   # OpenCV's table lookup: 0.14 vs 0.27 ms at 640x480 for the gather below
        return cv2.applyColorMap(np.ascontiguousarray(labels), np.ascontiguousarray(lut[:256, None, :3]))
    # one 4-byte gather per pixel, then RGBA -> RGB: 2.5x faster than gathering 3-byte rows at 640x480
    rgba = np.take(lut.view(np.uint32)[:, 0], labels, mode='clip').view(np.uint8)
    return cv2.cvtColor(rgba.reshape(*labels.shape, 4), cv2.COLOR_RGBA2RGB)


def confidence_to_mono8(confidence: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] (float) -> uint8 0..255, rounded (the ``segmentation/confidence`` image)."""
    return cv2.convertScaleAbs(confidence, alpha=255.0)


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """Blend a colour mask over the input image (alpha = weight of the mask)."""
    return cv2.addWeighted(color, float(alpha), rgb, 1.0 - float(alpha), 0.0)


def session_options(intra_op_threads: int, inter_op_threads: int = 0,
                    spinning: bool | None = None) -> 'ort.SessionOptions':
    """ONNX Runtime session options with these thread counts (0 = its default), warnings only, and its intra-op
    workers busy-waiting between runs or not (``spinning``; None = ONNX Runtime's default, which spins)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(intra_op_threads)
    opts.inter_op_num_threads = int(inter_op_threads)
    opts.log_severity_level = 3
    if spinning is not None:
        opts.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
    return opts


def fix_input_size(opts: 'ort.SessionOptions', images_shape: list, hw: tuple) -> None:
    """Fix the symbolic height and width of an (N, C, H, W) ``images`` input to ``hw`` in ``opts``. A graph
    exported with a symbolic height and width then runs at that size only, and ONNX Runtime folds its shape
    arithmetic (TopFormer-tiny at 256x320, 1 thread: 6.2 -> 5.3 ms) and the interpolation matrices of its
    rewritten Resize nodes. A name shared by both sides of a non-square size stays free."""
    if len(images_shape) != 4:
        return
    fixed = {}
    for dim, value in zip(images_shape[2:], hw):
        if isinstance(dim, str) and dim:
            fixed.setdefault(dim, set()).add(int(value))
    for dim, values in fixed.items():
        if len(values) == 1:
            opts.add_free_dimension_override_by_name(dim, values.pop())


class SegmentationEngine:
    """Loads a seg_perception ONNX model and turns RGB images of any size into labels and confidence."""

    def __init__(self, model_path: str | os.PathLike, providers: list[str] | tuple[str, ...] | None = None,
                 intra_op_threads: int = 0, inter_op_threads: int = 0,
                 input_size: tuple[int, int] | list[int] | str | None = None, spinning: bool | None = None,
                 exact_labels: bool = False):
        """``input_size`` (H, W) overrides the metadata's size for dynamic models; ``(0, 0)`` or 'native'
        runs a dynamic model at each image's own size (rounded up to its stride). ``spinning``: whether ONNX
        Runtime's intra-op worker threads busy-wait for the next run (False: they sleep; None: its default, on).
        ``exact_labels``: logits models with more than 8 classes make labels exactly "bilinear upsampling, then
        argmax" (default: from each cell's corners' two best classes, ~0.05 % of pixels differ, a quarter
        cheaper; see ``runtime/upsample.py``); 8 classes or fewer are always exact."""
        self.model_path = str(model_path)
        try:
            check_model_file(self.model_path)  # before any parser sees the file
        except ModelFileError as exc:
            raise EngineError(str(exc)) from None
        # a quick look first (CPU, no graph optimisation): the metadata says at which size the graph will run
        probe_opts = ort.SessionOptions()
        probe_opts.log_severity_level = 3
        probe_opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        probe = self._open(probe_opts, ['CPUExecutionProvider'])
        try:
            self.meta = md.decode(probe.get_modelmeta().custom_metadata_map, source=self.model_path)
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        self.net_hw = tuple(self.meta['input_size'])
        if input_size is not None and self.meta['dynamic_hw']:
            self.net_hw = None if input_size == 'native' or tuple(input_size) == (0, 0) else tuple(input_size)
            if self.net_hw and (min(self.net_hw) <= 0 or any(v % self.meta['stride'] for v in self.net_hw)):
                raise EngineError(f'input_size {self.net_hw} must be two positive multiples of {self.meta["stride"]} '
                                  '(or 0, 0: the whole image)')
        opts = session_options(intra_op_threads, inter_op_threads, spinning)
        images = next((i for i in probe.get_inputs() if i.name == 'images'), None)
        if images is not None and self.net_hw is not None:
            fix_input_size(opts, images.shape, self.net_hw)
        self.requested_providers = list(providers or DEFAULT_PROVIDERS)
        self.session = self._open(opts, select_providers(self.requested_providers))
        self.provider = self.session.get_providers()[0]
        self.names = list(self.meta['names'])
        self.palette = [tuple(int(v) for v in c) for c in self.meta['palette']]
        self.num_classes = len(self.names)
        self.label_dtype = np.uint8 if self.num_classes <= 255 else np.uint16
        self._check_io()
        self._upsamplers = {}
        self.exact_labels = exact_labels
        # (N, h, w, C) per-pixel logits are read as a (C, h, w) view: the upsampler takes their rows as they are
        self.logits_per_pixel = self.meta.get('logits_layout') == 'nhwc'
        # calibration (logits models): confidence = softmax(logits / T); a labels model's graph computes its own
        temperature = self.meta.get('temperature') if self.meta['output_kind'] == 'logits' else None
        self.inv_temperature = None if temperature is None else (1.0 / np.asarray(temperature, np.float32))
        LOG.info('model %s (%s, %d classes) on %s (asked for %s)', os.path.basename(self.model_path),
                 self.meta.get('arch', '?'), self.num_classes, self.provider, ', '.join(self.requested_providers))

    def _open(self, opts, providers) -> 'ort.InferenceSession':
        try:
            return ort.InferenceSession(self.model_path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises several exception types for unreadable files
            raise EngineError(f'cannot load model {self.model_path}: {exc}') from None

    def _check_io(self):
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if 'images' not in inputs:
            raise EngineError(f'{self.model_path}: the graph has no input named "images" (has {list(inputs)})')
        need = ('labels', 'confidence') if self.meta['output_kind'] == 'labels' else ('logits',)
        missing = [n for n in need if n not in outputs]
        if missing:
            raise EngineError(f'{self.model_path}: output_kind {self.meta["output_kind"]!r} needs outputs '
                              f'{missing} (graph has {outputs})')
        self.has_exit_threshold = 'exit_threshold' in inputs
        self.has_refine_threshold = 'refine_threshold' in inputs
        self.has_shift_features = 'shift_features' in outputs
        self._outputs = list(need) + [n for n in ('kept_fraction', 'refined_fraction', 'macs', 'shift_features')
                                      if n in outputs]

    @property
    def static_macs(self) -> float | None:
        return self.meta.get('static_macs')

    def infer(self, rgb: np.ndarray, exit_threshold: float | None = None,
              refine_threshold: float | None = None) -> SegResult:
        """Segment one HxWx3 uint8 RGB image (a 2-D array is taken as grey). Raises ValueError for input
        the engine cannot use (empty, wrong dtype or shape, too large). ``exit_threshold`` (token-pass models):
        None = the model's stored default (1.0 = no early stop if it has none). ``refine_threshold`` (adaptive
        TopFormer): None = the model's stored default; 0 = never refine, 1 = refine every tile."""
        t0 = time.perf_counter()
        rgb = self._check_image(rgb)
        geometry = compute_geometry(rgb.shape[:2], self.net_hw, self.meta['resize_mode'],
                                    self.meta['stride'], self.meta['dynamic_hw'])
        feeds = {'images': preprocess(rgb, geometry, self.meta['mean'], self.meta['std'], self.meta['white_balance'])}
        if self.has_exit_threshold:
            if exit_threshold is None:
                exit_threshold = self.meta.get('exit_threshold', 1.0)
            feeds['exit_threshold'] = np.asarray(exit_threshold, np.float32)
        if self.has_refine_threshold:
            if refine_threshold is None:
                refine_threshold = self.meta.get('refine_threshold', 1.0)
            feeds['refine_threshold'] = np.asarray(refine_threshold, np.float32)
        t1, c1 = time.perf_counter(), time.thread_time()
        outs = dict(zip(self._outputs, self.session.run(self._outputs, feeds)))
        t2, c2 = time.perf_counter(), time.thread_time()
        logits = None
        if self.meta['output_kind'] == 'labels':
            labels = restore(outs['labels'][0].astype(self.label_dtype, copy=False), geometry, cv2.INTER_NEAREST)
            conf = restore(outs['confidence'][0].astype(np.float32, copy=False), geometry, cv2.INTER_LINEAR)
        else:
            logits = outs['logits'][0].transpose(2, 0, 1) if self.logits_per_pixel else outs['logits'][0]
            labels, conf = self._labels_confidence(logits, geometry)
        kept = outs.get('kept_fraction')
        macs = outs.get('macs')
        refined = outs.get('refined_fraction')
        shift_features = outs.get('shift_features')
        return SegResult(labels=labels, confidence=conf, latency_ms=(time.perf_counter() - t0) * 1e3,
                         model_ms=(t2 - t1) * 1e3, model_cpu_ms=(c2 - c1) * 1e3,
                         kept_fraction=None if kept is None else np.asarray(kept, np.float32).reshape(-1),
                         macs=None if macs is None else float(np.asarray(macs).reshape(-1)[0]), logits=logits,
                         refined_fraction=None if refined is None else float(np.asarray(refined).reshape(-1)[0]),
                         shift_features=None if shift_features is None else shift_features.reshape(-1))

    @property
    def calibrated(self) -> bool:
        """Whether the published confidence is temperature-calibrated (metadata ``temperature``)."""
        return self.inv_temperature is not None

    def _labels_confidence(self, logits, geometry):
        """Labels of the raw logits; confidence of the calibrated ones (one temperature keeps the argmax, so the
        scaled logits serve for both; per-class temperatures can change it, so they are passed beside)."""
        upsampler = self._upsampler(logits.shape[1:], geometry)
        if self.inv_temperature is None:
            return upsampler(logits, self.label_dtype)
        if self.inv_temperature.size == 1:
            return upsampler(logits * self.inv_temperature[0], self.label_dtype)
        return upsampler(logits, self.label_dtype, calibrated=logits * self.inv_temperature[:, None, None])

    def _upsampler(self, coarse_hw, geometry):
        """The :class:`LogitsUpsampler` from these logits straight to the input image (cached per geometry)."""
        key = (tuple(coarse_hw), geometry.src_hw, geometry.net_hw, geometry.content_hw, geometry.offset_yx)
        upsampler = self._upsamplers.get(key)
        if upsampler is None:
            if len(self._upsamplers) >= 8:
                self._upsamplers.clear()
            upsampler = self._upsamplers[key] = LogitsUpsampler.for_geometry(
                key[0], geometry.net_hw, geometry.content_hw, geometry.offset_yx, geometry.src_hw, self.exact_labels)
        return upsampler

    @staticmethod
    def _check_image(rgb):
        if not isinstance(rgb, np.ndarray):
            raise ValueError(f'expected a numpy image, got {type(rgb).__name__}')
        if rgb.dtype != np.uint8:
            raise ValueError(f'expected a uint8 image, got {rgb.dtype}')
        if rgb.ndim == 2:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f'expected an HxWx3 RGB image, got shape {rgb.shape}')
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ValueError('empty image (0 pixels)')
        if rgb.shape[0] * rgb.shape[1] > MAX_INPUT_PIXELS:
            raise ValueError(f'image {rgb.shape[1]}x{rgb.shape[0]} exceeds {MAX_INPUT_PIXELS} pixels')
        return rgb
