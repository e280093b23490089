"""ROS 2 edge of seg_perception: camera images in, labels / colour / confidence / class info / diagnostics out.

Subscribes (sensor-data QoS): ``image`` (sensor_msgs/Image) or ``image/compressed``
(sensor_msgs/CompressedImage), chosen by the ``input_mode`` parameter; remap them to the camera's topics.
Publishes, with the input's header:
  ``segmentation/labels``      sensor_msgs/Image mono8 class ids (mono16 above 255 classes)
  ``segmentation/color``       sensor_msgs/Image rgb8 colour mask (blended over the input if ``overlay``)
  ``segmentation/confidence``  sensor_msgs/Image mono8, 0-255 for a max softmax probability of 0-1
  ``segmentation/label_info``  std_msgs/String JSON class ids, names and colours (reliable, transient local)
  ``segmentation/costmap``     nav_msgs/OccupancyGrid and ``segmentation/obstacles`` sensor_msgs/PointCloud2 from
                               the labels, ``camera_info`` and the camera pose (see ``costmap_node.py``)
  ``segmentation/shift_score`` std_msgs/Float32 domain-shift score, smoothed (logits models with shift
                               statistics; WARN in diagnostics above the model's threshold, see ``shift_node.py``)
  ``/diagnostics``             diagnostic_msgs/DiagnosticArray, every ``diagnostics_period`` seconds
One worker thread runs inference on the newest frame; frames it could not take are counted as dropped.
Images are only segmented while somebody subscribes to an output.

Two nodes share one body (``SegmentationPipeline``): ``SegmentationNode`` (console script ``segmentation_node``,
the default) builds everything at start; ``SegmentationLifecycleNode`` (``segmentation_lifecycle_node``) is the
managed variant: configure loads and checks the model, activate creates the subscriptions, publishers and timers,
deactivate destroys them, cleanup frees the ONNX Runtime session.
"""
import collections
import copy
import difflib
import json
import os
import signal
import sys
import threading
import time

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.client import Client
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSPolicyKind,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import InvalidQosOverridesError, QoSOverridingOptions
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from .costmap_node import PARAMETERS as COSTMAP_PARAMETERS
from .costmap_node import CostmapOutput, check_grid
from .costmap_node import check_value as costmap_check_value
from .errors import UserError
from .label_info import LabelInfo, make_label_info
from .paths import default_model_path
from .runtime.costmap import class_cost_table, parse_class_costs, resolve_min_confidence
from .runtime.engine import EngineError, SegmentationEngine, colorize, confidence_to_mono8, overlay
from .runtime.imgmsg import ImageFormatError, compressed_to_rgb, image_cdr, image_to_rgb
from .runtime.stats import RollingStats
from .runtime.worker import LatestFrameWorker, RateLimiter
from .shift_node import ALARM_MESSAGE as SHIFT_ALARM
from .shift_node import ShiftOutput

RCLError = _rclpy.RCLError
MAX_INPUT_SIDE = 4096   # input_size: larger networks take seconds and GBs per frame on a robot's computer
# The costmap parameters that make its grid together (checked together: costmap_node.check_grid).
GRID_PARAMS = ('costmap.size', 'costmap.resolution', 'costmap.origin')
# Parameters that rebuild the engine when changed at run time.
ENGINE_PARAMS = ('model_path', 'providers', 'intra_op_threads', 'inter_op_threads', 'intra_op_spinning', 'input_size')
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
OUTPUT_QOS = QoSProfile(depth=2, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
# Every input and output QoS is overridable the ROS 2 way: read-only parameters
# qos_overrides.<fully qualified topic>.<publisher|subscription>.<history|depth|reliability|durability>.
QOS_OVERRIDES = QoSOverridingOptions([QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY,
                                      QoSPolicyKind.DURABILITY])


def _float_range(lo, hi):
    return [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]


def _int_range(lo, hi):
    return [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]


PARAMETERS = {
    # name: (default, description, extra descriptor fields)
    'model_path': ('', 'ONNX model file; empty = the shipped default model. Changing it reloads the model.', {}),
    'input_mode': ('raw', "'raw' subscribes to image (sensor_msgs/Image), 'compressed' to image/compressed.",
                   {'read_only': True, 'additional_constraints': "one of: raw, compressed"}),
    'providers': (['CUDAExecutionProvider', 'CPUExecutionProvider'],
                  'ONNX Runtime execution providers in order of preference; unavailable ones are skipped, '
                  'CPU is always the last resort.', {}),
    'intra_op_threads': (0, 'ONNX Runtime intra-op threads (0 = ORT default: one per core).',
                         {'integer_range': _int_range(0, 64)}),
    'inter_op_threads': (0, 'ONNX Runtime inter-op threads (0 = ORT default).', {'integer_range': _int_range(0, 64)}),
    'intra_op_spinning': (False, 'With 2+ intra-op threads: let ONNX Runtime\'s worker threads busy-wait between '
                                 'frames (its own default). A little lower latency, but each waiting thread keeps a '
                                 'core busy; false: they sleep between frames.', {}),
    'opencv_threads': (1, 'OpenCV threads for decoding, resizing and making the labels at camera size '
                          "(cv2.setNumThreads, for the whole process; 0 = OpenCV's default, one per core). One: "
                          'no slower at 640x480 and ~10 % less CPU per frame than two.',
                       {'integer_range': _int_range(0, 64)}),
    'input_size': ([0, 0], f'Network input [H, W] for models with dynamic input (multiples of 32, at most '
                           f'{MAX_INPUT_SIDE}); [0, 0] = the size stored in the model.', {}),
    'overlay': (False, 'Blend the colour mask over the input image on segmentation/color.', {}),
    'overlay_alpha': (0.5, 'Weight of the colour mask in the overlay.', {'floating_point_range': _float_range(0, 1)}),
    'exit_threshold': (-1.0, 'Token-pass models: tokens whose confidence passes this stop early (lower = '
                             'cheaper); 1.0 = no early stop; -1 = the value stored in the model.',
                       {'floating_point_range': _float_range(-1, 1)}),
    'refine_threshold': (-1.0, 'Adaptive TopFormer: tiles (8x8-pixel cells in a cells model) whose early-head '
                               'confidence falls below this go through the deep head (lower = cheaper); 0 = never '
                               'refine, 1 = refine every tile; '
                               '-1 = the value stored in the model.',
                         {'floating_point_range': _float_range(-1, 1)}),
    'max_rate': (0.0, 'Segment at most this many frames per second (0 = every frame the worker can take). '
                      'Frames beyond it are skipped on arrival, before decoding, and counted '
                      '(frames_skipped_rate), saving the CPU of segmenting them.',
                 {'floating_point_range': _float_range(0, 1000)}),
    'diagnostics_period': (1.0, 'Seconds between /diagnostics messages.',
                           {'floating_point_range': _float_range(0.1, 60)}),
    'stats_window': (10.0, 'Seconds of history behind latency percentiles and rates.',
                     {'floating_point_range': _float_range(1, 600)}),
    'log_throttle': (5.0, 'Minimum seconds between repeated warnings of one kind.',
                     {'floating_point_range': _float_range(0, 3600)}),
    'costmap.min_confidence': (-1.0, 'Labels below this confidence are not trusted: their costmap cells stay '
                                     'unknown, never free; also vision_msgs/LabelInfo.threshold. -1 = the model\'s '
                                     'metadata value (costmap_min_confidence), else 0.5.',
                               {'floating_point_range': _float_range(-1, 1)}),
}


class SegmentationPipeline:
    """The node's body, mixed into an rclpy ``Node`` or ``LifecycleNode``.

    Life cycle of its parts, the same for both nodes:
      ``_init_pipeline()``   declares ``PARAMETERS``, validates them, sets up counters/stats (no I/O, no model);
      ``_load_engine()``     builds the ONNX Runtime session from the parameters; ``_free_engine()`` drops it;
      ``_create_io()``       creates subscriptions, publishers, timers and the worker thread;
      ``_destroy_io()``      destroys all of them (subscriptions and timers first, then the worker, then the rest).
    Create every ROS entity inside ``_create_io`` through ``self._io(...)`` so ``_destroy_io`` removes it.
    """

    def _init_pipeline(self):
        for name, (default, description, extra) in {**PARAMETERS, **COSTMAP_PARAMETERS}.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description, **extra))
        self._validate_static()
        self._warn_unknown_parameters()
        self._set_opencv_threads(self.get_parameter('opencv_threads').value)
        # the node's own counters; what happened to each frame is counted by the worker (see frame_counts)
        self.counters = {'published': 0, 'skipped_rate': 0}
        self._rate_limiter = RateLimiter()
        self.stats = RollingStats(self.get_parameter('stats_window').value)
        self._engine_lock = threading.Lock()
        self.engine = None
        self.engine_error = None
        self._engine_wanted = False  # engine parameters changed at run time reload the model only when True
        self._last_kept = None
        self._logged = {}   # kind of log message -> when it was last logged (see _log_throttled)
        self._io_entities = []
        self.worker = None
        self._earlier_frames = collections.Counter()   # the counts of workers of earlier activations (lifecycle)
        self.costmap = None
        self.shift = None
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _io(self, entity):
        """Register a subscription, publisher, timer, service or client made in ``_create_io``; returns it."""
        self._io_entities.append(entity)
        return entity

    def _output(self, msg_type, topic, qos):
        """A publisher made in ``_create_io``: registered through ``_io``, its QoS overridable by parameters."""
        return self._io(self._overridable(self.create_publisher, msg_type, topic, qos))

    def _overridable(self, create, msg_type, topic, qos, callback=None):
        """A publisher (``create_publisher``) or subscription (``create_subscription``, with ``callback``) whose
        QoS parameters may override ``qos``. rclpy overrides the profile object in place, so it gets a copy (the
        module's shared profiles stay as they are). A bad override is logged, naming the parameter and value, and
        the topic keeps its default QoS instead of the node failing to start."""
        args = (msg_type, topic) if callback is None else (msg_type, topic, callback)
        try:
            return create(*args, copy.copy(qos), qos_overriding_options=QOS_OVERRIDES)
        except (RuntimeError, InvalidParameterTypeException, InvalidQosOverridesError) as exc:
            self.get_logger().error(f'QoS override refused ({exc}); {topic} keeps its default QoS')
            return create(*args, copy.copy(qos))

    def _create_io(self):
        """Publishers, subscription, timers and the inference worker. Add new ROS I/O here, through ``_io``
        (publishers through ``_output``)."""
        self.pub_labels = self._output(Image, 'segmentation/labels', OUTPUT_QOS)
        self.pub_color = self._output(Image, 'segmentation/color', OUTPUT_QOS)
        self.pub_conf = self._output(Image, 'segmentation/confidence', OUTPUT_QOS)
        self.pub_info = self._output(String, 'segmentation/label_info', LATCHED_QOS)
        if LabelInfo is not None:
            self.pub_label_info = self._output(LabelInfo, 'segmentation/vision_info', LATCHED_QOS)
        else:
            self.pub_label_info = None
            self.get_logger().info('vision_msgs is not installed: vision_msgs/LabelInfo is not published on '
                                   'segmentation/vision_info (the JSON class list is on segmentation/label_info)')
        self.pub_diag = self._output(DiagnosticArray, '/diagnostics', 10)
        self.costmap = CostmapOutput(self, self._output, self._io, OUTPUT_QOS)
        self.shift = ShiftOutput(self, self._output, OUTPUT_QOS)
        self._publish_label_info()

        self.worker = LatestFrameWorker(self._process, self._on_worker_error)
        if self.get_parameter('input_mode').value == 'compressed':
            self.sub = self._io(self._overridable(self.create_subscription, CompressedImage, 'image/compressed',
                                                  qos_profile_sensor_data, self._on_image))
        else:
            self.sub = self._io(self._overridable(self.create_subscription, Image, 'image', qos_profile_sensor_data,
                                                  self._on_image))
        self.diag_timer = self._io(self.create_timer(self.get_parameter('diagnostics_period').value,
                                                     self._publish_diagnostics))
        self.get_logger().info(f'listening on {self.sub.topic_name} ({self.get_parameter("input_mode").value})')

    def _destroy_io(self):
        """Destroy what ``_create_io`` made: inputs and timers first, then wait for the worker, then outputs."""
        destroy = {Subscription: self.destroy_subscription, Timer: self.destroy_timer,
                   Publisher: self.destroy_publisher, Service: self.destroy_service, Client: self.destroy_client}
        inputs = [e for e in self._io_entities if isinstance(e, (Subscription, Timer))]
        outputs = [e for e in self._io_entities if not isinstance(e, (Subscription, Timer))]
        for entity in inputs:
            destroy[next(t for t in destroy if isinstance(entity, t))](entity)
        if self.worker is not None:
            self.worker.stop()
            snap = self.worker.snapshot()
            snap['dropped'] += snap.pop('in_flight')   # a frame still waiting when the inputs stop: never segmented
            self._earlier_frames.update(snap)
            self.worker = None
        for entity in outputs:
            destroy[next(t for t in destroy if isinstance(entity, t))](entity)
        self._io_entities = []

    def _free_engine(self):
        with self._engine_lock:
            self.engine = None
        self._engine_wanted = False

    # ------------------------------------------------------------------ parameters
    def _validate_static(self):
        """Start-up values get the checks of run-time changes: a bad one stops the node with one line."""
        mode = self.get_parameter('input_mode').value
        if mode not in ('raw', 'compressed'):
            raise UserError(f"input_mode must be 'raw' or 'compressed', got {mode!r}")
        for name in {**PARAMETERS, **COSTMAP_PARAMETERS}:
            reason = self._check_value(name, self.get_parameter(name).value)
            if reason:
                raise UserError(f'parameter {reason}')
        reason = self._grid_reason({})
        if reason:
            raise UserError(f'parameter {reason}')

    def _warn_unknown_parameters(self):
        """ROS ignores given parameters a node does not declare (a typo in a params file): name them in a warning.
        QoS overrides are declared later, with their topics."""
        given = getattr(self, '_parameter_overrides', {})   # rclpy's record of the command line and params files
        unknown = sorted(n for n in given if not self.has_parameter(n) and not n.startswith('qos_overrides.'))
        for name in unknown:
            close = difflib.get_close_matches(name, [*PARAMETERS, *COSTMAP_PARAMETERS], n=1)
            self.get_logger().warning(f'parameter {name} is not one of this node\'s: ignored'
                                      + (f" (did you mean '{close[0]}'?)" if close else ''))

    @staticmethod
    def _set_opencv_threads(count):
        cv2.setNumThreads(count if count > 0 else -1)   # OpenCV: a negative count restores its default

    def _engine_settings(self, overrides):
        values = {name: self.get_parameter(name).value for name in ENGINE_PARAMS}
        values.update(overrides)
        return values

    @staticmethod
    def _check_value(name, value):
        """Reason a value is refused, or None."""
        if name == 'input_size':
            if (len(value) != 2 or any(v < 0 or v % 32 or v > MAX_INPUT_SIDE for v in value)
                    or (0 in value and any(value))):
                return f'input_size must be [0, 0] or two multiples of 32 in 32..{MAX_INPUT_SIDE}, got {list(value)}'
        if name == 'providers' and not all(isinstance(p, str) and p for p in value):
            return f'providers must be a list of provider names, got {list(value)}'
        return costmap_check_value(name, value)

    def _grid_reason(self, new):
        """Reason the costmap grid of ``new`` values ({name: value}) over those in effect is refused, or None."""
        return check_grid(*(new[k] if k in new else self.get_parameter(k).value for k in GRID_PARAMS))

    def _check_together(self, new):
        """Reason values set together (``new``, {name: value}) with the others in effect are refused (the costmap
        grid; class costs against the loaded model's classes), or None."""
        if set(GRID_PARAMS) & set(new):
            reason = self._grid_reason(new)
            if reason:
                return reason
        with self._engine_lock:
            engine = self.engine
        if 'costmap.class_costs' in new and engine is not None and not set(new) & set(ENGINE_PARAMS):
            return self._class_costs_reason(engine, new['costmap.class_costs'])   # (a new model: checked on load)
        return None

    def _class_costs_reason(self, engine, text=None):
        """Reason ``costmap.class_costs`` (``text``, else the value in effect) does not fit ``engine``'s classes,
        or None."""
        text = self.get_parameter('costmap.class_costs').value if text is None else text
        try:
            class_cost_table(engine.names, parse_class_costs(text), engine.meta.get('class_costs'),
                             config_name='costmap.class_costs')
        except ValueError as exc:
            return str(exc)
        return None

    def _on_set_parameters(self, params):
        overrides = {}
        for p in params:
            reason = self._check_value(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if p.name in ENGINE_PARAMS:
                overrides[p.name] = p.value
        new = {p.name: p.value for p in params}
        reason = self._check_together(new)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        if overrides and self._engine_wanted:
            try:
                self._load_engine(self._engine_settings(overrides), strict=True,
                                  class_costs=new.get('costmap.class_costs'))
            except (EngineError, ValueError) as exc:
                return SetParametersResult(successful=False, reason=f'model not changed: {exc}')
        if self.costmap is not None:
            self.costmap.parameters_changed(params)
        for p in params:
            if p.name == 'costmap.min_confidence':   # LabelInfo.threshold follows it
                self._publish_label_info(min_confidence=p.value)
            elif p.name == 'opencv_threads':
                self._set_opencv_threads(p.value)
            elif p.name == 'stats_window':
                self.stats.window_s = float(p.value)
            elif p.name == 'diagnostics_period' and self._io_entities:   # the timer exists while the I/O does
                self.diag_timer.timer_period_ns = int(p.value * 1e9)
        return SetParametersResult(successful=True)

    def _load_engine(self, settings, strict=False, class_costs=None):
        """Build an engine from parameter values. At start-up a bad model leaves the node running without one
        (reported in diagnostics, fixable by setting model_path); at run time (strict) the change is refused. A
        model whose classes ``costmap.class_costs`` (``class_costs``: the value being set) does not fit is refused
        at run time and stops the node at start-up."""
        self._engine_wanted = True
        path = settings['model_path'] or default_model_path()
        input_size = tuple(settings['input_size'])
        try:
            engine = SegmentationEngine(path, providers=list(settings['providers']),
                                        intra_op_threads=settings['intra_op_threads'],
                                        inter_op_threads=settings['inter_op_threads'],
                                        spinning=settings['intra_op_spinning'],
                                        input_size=None if input_size == (0, 0) else input_size)
        except (EngineError, ValueError) as exc:
            if strict:
                raise
            self.engine_error = str(exc)
            self.get_logger().error(f'no model loaded: {exc}. Set the model_path parameter to a valid model.')
            return
        reason = self._class_costs_reason(engine, class_costs)
        if reason:
            raise ValueError(reason) if strict else UserError(f'parameter {reason}')
        with self._engine_lock:
            self.engine, self.engine_error = engine, None
        self.get_logger().info(
            f'model {os.path.basename(path)} ({engine.meta.get("arch", "?")}, {engine.num_classes} classes) '
            f'running on {engine.provider} (preference: {", ".join(settings["providers"])})')
        self._publish_label_info()

    def _publish_label_info(self, min_confidence=None):
        """The JSON class list and vision_msgs/LabelInfo, whose threshold is the confidence below which labels
        are not trusted (the costmap leaves their cells unknown): ``costmap.min_confidence`` (or
        ``min_confidence``, the value being set) resolved against the model's default."""
        with self._engine_lock:
            engine = self.engine
        if engine is not None and self._io_entities:
            self.pub_info.publish(String(data=json.dumps(self.label_info(engine, engine.model_path))))
            if self.pub_label_info is not None:
                if min_confidence is None:
                    min_confidence = self.get_parameter('costmap.min_confidence').value
                msg = make_label_info(engine.names, resolve_min_confidence(min_confidence, engine.meta))
                msg.header.stamp = self.get_clock().now().to_msg()
                self.pub_label_info.publish(msg)

    @staticmethod
    def label_info(engine: SegmentationEngine, path: str) -> dict:
        return {
            'model': os.path.basename(path), 'arch': engine.meta.get('arch', ''),
            'label_encoding': 'mono8' if engine.label_dtype == np.uint8 else 'mono16',
            'ignore_index': engine.meta['ignore_index'],
            'classes': [{'id': i, 'name': n, 'color': list(c)}
                        for i, (n, c) in enumerate(zip(engine.names, engine.palette))],
        }

    # ------------------------------------------------------------------ frames
    def _on_image(self, msg):
        self.stats.add('input')
        now = time.monotonic()
        if not self._rate_limiter.admit(now, self.get_parameter('max_rate').value):
            self.counters['skipped_rate'] += 1
            return
        self.worker.submit((msg, now))

    def _log_throttled(self, kind: str, text: str, error: bool = False) -> None:
        """Log ``text`` unless a message of the same ``kind`` went out less than ``log_throttle`` seconds ago
        (rclpy's own throttle is per line of code, which would let one kind of message hide the others)."""
        now = time.monotonic()
        if now - self._logged.get(kind, -1e18) < self.get_parameter('log_throttle').value:
            return
        self._logged[kind] = now
        log = self.get_logger()
        (log.error if error else log.warning)(text)

    def _on_worker_error(self, exc, item):
        """The outcome of a frame whose processing raised: 'rejected' (bad input) or 'errors' (anything else)."""
        if isinstance(exc, (ImageFormatError, ValueError)):
            self._log_throttled('rejected', f'frame rejected: {exc}')
            return 'rejected'
        self._log_throttled('errors', f'inference failed: {type(exc).__name__}: {exc}', error=True)
        return 'errors'

    def _wanted_outputs(self):
        wanted = {name for name, pub in (('labels', self.pub_labels), ('color', self.pub_color),
                                         ('confidence', self.pub_conf)) if pub.get_subscription_count() > 0}
        wanted |= {'shift'} if self.shift.wanted() else set()
        return wanted | {'costmap'} if self.costmap.wanted() else wanted

    def _process(self, item):
        msg, t_received = item
        with self._engine_lock:
            engine = self.engine
        if engine is None:
            self._log_throttled('no_model', f'no model loaded ({self.engine_error}); frame not segmented')
            return 'no_model'
        wanted = self._wanted_outputs()
        if not wanted:
            return 'idle_no_subscribers'
        rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        threshold = self.get_parameter('exit_threshold').value
        refine = self.get_parameter('refine_threshold').value
        result = engine.infer(rgb, exit_threshold=None if threshold < 0 else threshold,
                              refine_threshold=None if refine < 0 else refine)
        header = msg.header
        # images go out serialized (image_cdr): rclpy hands the bytes to the middleware as they are, without
        # converting a Python message and serializing it again (0.6 vs 1.4 ms for a 640x480 colour image)
        if 'labels' in wanted:
            enc = 'mono8' if result.labels.dtype == np.uint8 else 'mono16'
            self.pub_labels.publish(image_cdr(result.labels, enc, header))
        if 'confidence' in wanted:
            conf = confidence_to_mono8(result.confidence)
            self.pub_conf.publish(image_cdr(conf, 'mono8', header))
        if 'color' in wanted:
            color = colorize(result.labels, engine.palette)
            if self.get_parameter('overlay').value:
                color = overlay(rgb, color, self.get_parameter('overlay_alpha').value)
            self.pub_color.publish(image_cdr(color, 'rgb8', header))
        # the shift score first: the costmap heeds its alarm
        self.shift.process(engine, result.logits, result.shift_features, publish='shift' in wanted)
        if 'costmap' in wanted:
            self.costmap.process(engine, header, result.labels, result.confidence, shifted=self.shift.alarm)
        self.counters['published'] += 1
        self.stats.add('output')
        self.stats.add('latency_ms', result.latency_ms)
        self.stats.add('age_ms', (time.monotonic() - t_received) * 1e3)
        if result.kept_fraction is not None:
            self._last_kept = result.kept_fraction
            self.stats.add('kept_fraction', float(result.kept_fraction[-1]))
        if result.refined_fraction is not None:
            self.stats.add('refined_fraction', result.refined_fraction)
        if result.macs is not None:
            self.stats.add('gmacs', result.macs / 1e9)
        return 'processed'

    # ------------------------------------------------------------------ diagnostics
    def frame_counts(self) -> dict:
        """Frame counters, one consistent snapshot: received = skipped_rate + processed + dropped + rejected +
        errors + idle_no_subscribers + no_model + in_flight (skipped_rate: left out on arrival by ``max_rate``;
        in_flight: waiting or being segmented, at most 2, 0 when the input stops), plus published (frames whose
        outputs went out)."""
        own = dict(self.counters)
        snap = self._earlier_frames + collections.Counter(self.worker.snapshot() if self.worker is not None else {})
        counts = {'received': snap.get('submitted', 0) + own['skipped_rate']}
        counts.update({k: snap.get(k, 0) for k in ('processed', 'dropped', 'rejected', 'errors',
                                                    'idle_no_subscribers', 'no_model', 'in_flight')})
        counts.update(own)
        return counts

    def diagnostic_status(self) -> DiagnosticStatus:
        c = self.frame_counts()
        lat = self.stats.percentiles('latency_ms')
        age = self.stats.percentiles('age_ms', (50, 99))
        values = {
            'model': os.path.basename(self.engine.model_path) if self.engine else '',
            'provider': self.engine.provider if self.engine else '',
            'input_rate_hz': f'{self.stats.rate("input"):.2f}',
            'output_rate_hz': f'{self.stats.rate("output"):.2f}',
            'latency_p50_ms': f'{lat[50]:.2f}', 'latency_p90_ms': f'{lat[90]:.2f}',
            'latency_p99_ms': f'{lat[99]:.2f}', 'input_to_output_p50_ms': f'{age[50]:.2f}',
            'input_to_output_p99_ms': f'{age[99]:.2f}',
        }
        values.update({f'frames_{k}': str(v) for k, v in c.items()})
        if self.costmap is not None:
            values.update(self.costmap.diagnostics())
        if self.shift is not None:
            values.update(self.shift.diagnostics(self.engine))
        kept = self.stats.values('kept_fraction')
        if kept.size:
            values['kept_fraction_mean'] = f'{kept.mean():.3f}'
            values['kept_fraction_last_per_stage'] = ' '.join(f'{v:.3f}' for v in self._last_kept)
        refined = self.stats.values('refined_fraction')
        if refined.size:
            values['refined_tiles_fraction_mean'] = f'{refined.mean():.3f}'
            values['refined_frames_fraction'] = f'{(refined > 0).mean():.3f}'
        gmacs = self.stats.values('gmacs')
        if gmacs.size:
            values['gmacs_per_frame_mean'] = f'{gmacs.mean():.3f}'
            if self.engine and self.engine.static_macs:
                values['gmacs_static_model'] = f'{self.engine.static_macs / 1e9:.3f}'
            if self.engine and self.engine.meta.get('cheap_macs'):
                values['gmacs_cheap_path'] = f'{self.engine.meta["cheap_macs"] / 1e9:.3f}'
        if self.engine is None:
            level, message = DiagnosticStatus.ERROR, f'no model: {self.engine_error}'
        elif c['errors'] or (c['received'] > 10 and c['dropped'] > 0.5 * c['received']):
            level, message = DiagnosticStatus.WARN, 'inference errors or most frames dropped'
        elif c['rejected']:
            level, message = DiagnosticStatus.WARN, 'some input frames rejected (see log)'
        elif self.shift is not None and self.shift.alarm:
            level, message = DiagnosticStatus.WARN, f'{SHIFT_ALARM} (shift score {self.shift.score:.2f})'
        else:
            level, message = DiagnosticStatus.OK, 'running'
        return DiagnosticStatus(level=level, name=f'{self.get_name()}: segmentation', message=message,
                                hardware_id=values['provider'],
                                values=[KeyValue(key=k, value=v) for k, v in values.items()])

    def _publish_diagnostics(self):
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self.diagnostic_status()]
        self.pub_diag.publish(arr)

    def destroy_node(self) -> None:
        if getattr(self, 'worker', None) is not None:  # None also when __init__ failed before _create_io
            if self.worker.stop(timeout=1.5):
                self.get_logger().info('shutdown: inference worker joined')
            else:
                self.get_logger().warning('shutdown: inference worker still busy after 1.5 s; not waiting for it')
            self.worker = None
        return super().destroy_node()


class SegmentationNode(SegmentationPipeline, Node):
    """The plain node (the default): model and I/O built at start."""

    def __init__(self, node_name: str = 'segmentation_node', **kwargs):
        super().__init__(node_name, **kwargs)
        self._init_pipeline()
        self._load_engine(self._engine_settings({}))
        self._create_io()


class SegmentationLifecycleNode(SegmentationPipeline, LifecycleNode):
    """Managed variant: unconfigured at start; configure loads and checks the model (failure: stays unconfigured,
    the reason logged), activate starts subscriptions and publishing, deactivate stops them, cleanup frees the
    ONNX Runtime session. Spin it with a single-threaded executor (``lifecycle_main`` does): deactivate destroys
    entities, which rclpy's executors do not survive while another thread builds their wait set."""

    def __init__(self, node_name: str = 'segmentation_node', **kwargs):
        super().__init__(node_name, **kwargs)
        self._init_pipeline()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load_engine(self._engine_settings({}), strict=True)
        except (EngineError, ValueError) as exc:
            self._free_engine()
            self.engine_error = str(exc)
            self.get_logger().error(f'configure failed, staying unconfigured: {exc}')
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._create_io()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_io()
        self.get_logger().info('deactivated: subscriptions and publishers removed')
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free_engine()
        self.get_logger().info('cleaned up: model unloaded')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_io()
        self._free_engine()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_io()
        self._free_engine()
        return TransitionCallbackReturn.SUCCESS


def _spin(node_class, args=None) -> int:
    """Run a node until shutdown; 0, or 2 after one line on stderr for a start-up mistake of the user's (a
    parameter of the wrong type or out of its range, an unknown input_mode)."""
    try:
        rclpy.init(args=args)
    except RCLError as exc:  # rcl refuses the command line: a params file that is missing or not valid YAML, ...
        print(f'segmentation_node: error: {" ".join(str(exc).split())}', file=sys.stderr)
        return 2
    node = None
    try:
        node = node_class()
        rclpy.spin(node)
    except (UserError, InvalidParameterTypeException, InvalidParameterValueException) as exc:
        print(f'segmentation_node: error: {" ".join(str(exc).split())}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Jazzy: a callback publishing while a signal shuts the context down raises RCLError out of spin
        # (Kilted raises ExternalShutdownException, or a pybind "unable to convert call argument" when the signal
        # lands inside a take); only a failure while the context stays up is a real one.
        if not _shutting_down():
            raise
    finally:
        _teardown(node)
    return 0


# Fast DDS was seen to hang > 15 s destroying a node's entities after SIGINT (session 40, clean-clone CI: launch had
# to SIGKILL the node although its worker had joined); past this the process ends without waiting for it
TEARDOWN_LIMIT_S = 5.0


def _teardown(node) -> None:
    """Destroy ``node`` (if any) and shut rclpy down, at most ``TEARDOWN_LIMIT_S`` seconds: after that one line
    on stderr and the process exits (0: the node's own shutdown, its worker included, is done by then). A
    second SIGINT meanwhile (launch's, a second ctrl-c) is ignored: the wait is bounded and shutdown under way."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    failure = []

    def run() -> None:
        try:
            if node is not None:
                node.destroy_node()
        except Exception as exc:
            # a signal that already shut the context down can leave rclpy failing to destroy entities: the same
            # rule as for spin
            if not _shutting_down():
                failure.append(exc)
        finally:
            rclpy.try_shutdown()

    thread = threading.Thread(target=run, name='ros-teardown', daemon=True)
    thread.start()
    thread.join(TEARDOWN_LIMIT_S)
    if thread.is_alive():
        print(f'segmentation_node: ROS middleware teardown still running after {TEARDOWN_LIMIT_S:g} s; exiting '
              'without it', file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)
    if failure:
        raise failure[0]


def _shutting_down(grace: float = 0.5) -> bool:
    """Whether the context is down or goes down within ``grace`` seconds: rclpy shuts it down for a signal on
    its own thread, so the executor can fail on the signal a moment before the context reports it."""
    end = time.monotonic() + grace
    while rclpy.ok():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def main(args: list[str] | None = None) -> int:
    return _spin(SegmentationNode, args)


def lifecycle_main(args: list[str] | None = None) -> int:
    return _spin(SegmentationLifecycleNode, args)


if __name__ == '__main__':
    sys.exit(main())
