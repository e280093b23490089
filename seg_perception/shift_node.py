"""The node's domain-shift monitor: ``segmentation/shift_score`` (std_msgs/Float32) and its diagnostics.

Every segmented frame of a logits model is scored by :class:`seg_perception.runtime.shift.ShiftScorer` against
the training statistics in the model's metadata (``shift_stats``, written by ``seg-perception calibrate
--shift``); the topic carries the score smoothed over the metadata's window of frames. Diagnostics show the
score, the threshold and whether the confidence is calibrated; the node's status turns WARN with "inputs unlike
the model's training data" while the smoothed score is above the threshold. A model without statistics (or a
labels model, which has no logits) still runs: diagnostics say so and nothing is published on the topic.
"""
import time
from typing import TYPE_CHECKING

import numpy as np
from std_msgs.msg import Float32

from .runtime.shift import ShiftScorer

if TYPE_CHECKING:
    from .runtime.engine import SegmentationEngine

ALARM_MESSAGE = "inputs unlike the model's training data"


class ShiftOutput:
    """Made in the node's ``_create_io`` with its ``_output`` publisher factory."""

    def __init__(self, node, output, qos):
        self._node = node
        self.pub = output(Float32, 'segmentation/shift_score', qos)
        self._engine = None
        self._scorer = None
        self.status = 'no model'
        self.frame_score = None
        self.score = None
        self.cost_ms = 0.0
        self.frames_alarmed = 0

    def wanted(self) -> bool:
        return self.pub.get_subscription_count() > 0

    @staticmethod
    def _make_scorer(engine):
        """(ShiftScorer or None, status text) for an engine."""
        stats = engine.meta.get('shift_stats')
        if engine.meta['output_kind'] != 'logits':
            return None, 'not available (labels model: no logits)'
        if not stats:
            return None, 'no shift statistics in the model (seg-perception calibrate --shift)'
        try:
            scorer = ShiftScorer(stats)
        except (ValueError, KeyError, TypeError) as exc:
            return None, f'unusable shift statistics: {exc}'
        if scorer.groups and not engine.has_shift_features:
            return None, 'unusable shift statistics: they need the graph output shift_features, the model has none'
        return scorer, 'ok'

    def _bind(self, engine):
        """Scorer for a (new) engine (worker thread); the window restarts with the model."""
        scorer, status = self._make_scorer(engine)
        self._engine, self._scorer, self.score, self.frame_score, self.status = engine, scorer, None, None, status
        if scorer is None:
            self._node.get_logger().warning(f'shift monitor off: {status}')

    def process(self, engine: 'SegmentationEngine', logits: np.ndarray, shift_features: np.ndarray | None = None,
                publish: bool = True) -> None:
        """Score one frame (worker thread) and, with ``publish`` (someone subscribes), publish the smoothed score;
        the score feeds the diagnostics and the costmap's alarm either way. (A Float32 message through rclpy costs
        ~0.1 ms, as much as the scoring.)"""
        if engine is not self._engine:
            self._bind(engine)
        if self._scorer is None or logits is None:
            return
        t0 = time.perf_counter()
        self.frame_score, self.score = self._scorer.update(logits, shift_features)
        self.cost_ms = (time.perf_counter() - t0) * 1e3
        if self.alarm:
            self.frames_alarmed += 1
        if publish:
            self.pub.publish(Float32(data=float(self.score)))

    @property
    def alarm(self) -> bool:
        return self._scorer is not None and self.score is not None and bool(self._scorer.alarmed(self.score))

    def diagnostics(self, engine: 'SegmentationEngine | None') -> dict:
        values = {'confidence_calibration': 'uncalibrated' if engine is None or not engine.calibrated else
                  'temperature ' + ' '.join(f'{t:.3f}' for t in engine.meta['temperature'])}
        if engine is not None and engine is not self._engine:   # no frame of this model yet
            values['shift_monitor'] = self._make_scorer(engine)[1]
            return values
        values['shift_monitor'] = self.status
        if self._scorer is not None:
            values['shift_threshold'] = f'{self._scorer.threshold:.3f}'
            values['shift_window'] = str(self._scorer.window)
            if self.score is not None:
                values['shift_score'] = f'{self.score:.3f}'
                values['shift_score_frame'] = f'{self.frame_score:.3f}'
                values['shift_cost_ms'] = f'{self.cost_ms:.3f}'
            values['shift_frames_alarmed'] = str(self.frames_alarmed)
        return values
