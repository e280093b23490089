"""The node over real rclpy + DDS: images published on a topic, outputs received from topics."""
import json
import os
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from onnx_models import make_tiny_model  # noqa: E402
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from seg_perception.node import LATCHED_QOS, SegmentationNode  # noqa: E402
from seg_perception.offline.data.bags import rgb_to_bayer, rgb_to_yuv422  # noqa: E402
from seg_perception.runtime.imgmsg import TO_RGB, array_to_image_fields, rgb_to_compressed_bytes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Harness endpoints are destroyed while the executor spins in another thread. rclpy's default QoS-event
# handlers race with that (the executor may add an event whose destruction was just requested to its wait
# set: InvalidHandle kills the spin thread), so the harness creates its endpoints without them.
NO_PUB_EVENTS = {'event_callbacks': PublisherEventCallbacks(use_default_callbacks=False)}
NO_SUB_EVENTS = {'event_callbacks': SubscriptionEventCallbacks(use_default_callbacks=False)}


class Harness:
    """A test node that publishes camera frames and records every output topic of the node under test."""

    def __init__(self, ctx, prefix=''):
        self.node = rclpy.create_node('test_harness', context=ctx)
        self.received = {k: [] for k in ('labels', 'color', 'confidence', 'label_info', 'diagnostics')}
        self.image_pub = self.node.create_publisher(Image, prefix + 'image', qos_profile_sensor_data, **NO_PUB_EVENTS)
        self.comp_pub = self.node.create_publisher(CompressedImage, prefix + 'image/compressed',
                                                   qos_profile_sensor_data, **NO_PUB_EVENTS)
        for name in ('labels', 'color', 'confidence'):
            self.node.create_subscription(Image, f'{prefix}segmentation/{name}',
                                          lambda m, n=name: self.received[n].append(m), 10, **NO_SUB_EVENTS)
        self.node.create_subscription(String, prefix + 'segmentation/label_info',
                                      lambda m: self.received['label_info'].append(m), LATCHED_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      lambda m: self.received['diagnostics'].append(m), 10)

    def wait_for(self, predicate, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def publish(self, arr, encoding, stamp=(12, 345), frame_id='cam', pad=0):
        fields = array_to_image_fields(arr, encoding)
        if pad:
            rows = np.frombuffer(fields['data'], np.uint8).reshape(fields['height'], -1)
            fields['data'] = np.pad(rows, ((0, 0), (0, pad))).tobytes()
            fields['step'] += pad
        msg = Image(**fields)
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.header.frame_id = frame_id
        self.image_pub.publish(msg)


@pytest.fixture
def ros():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    nodes = []

    def start(**params):
        node = SegmentationNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        harness = Harness(ctx)
        executor.add_node(node)
        executor.add_node(harness.node)
        nodes.extend([node, harness.node])
        # both ends of every connection matched (DDS discovery is not symmetric in time)
        assert harness.wait_for(lambda: node.sub.get_publisher_count() > 0
                                and all(s.get_publisher_count() > 0 for s in harness.node.subscriptions)
                                and node.pub_labels.get_subscription_count() > 0), 'discovery failed'
        return node, harness

    yield start
    executor.shutdown()
    for n in nodes:
        n.destroy_node()
    rclpy.shutdown(context=ctx)
    thread.join(5)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_outputs_have_right_size_encoding_and_header(ros, tiny_model):
    node, h = ros(model_path=tiny_model)
    h.publish(_rgb(251, 333), 'rgb8', stamp=(7, 42), frame_id='camera_optical')
    assert h.wait_for(lambda: all(h.received[k] for k in ('labels', 'color', 'confidence')))
    lab, col, conf = h.received['labels'][0], h.received['color'][0], h.received['confidence'][0]
    for m, enc in ((lab, 'mono8'), (col, 'rgb8'), (conf, 'mono8')):
        assert (m.height, m.width, m.encoding) == (251, 333, enc)
        assert m.header.frame_id == 'camera_optical'
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (7, 42)
    labels = np.frombuffer(lab.data, np.uint8).reshape(251, 333)
    assert labels.max() < 6
    # the node's labels equal the engine's on the same image
    assert np.array_equal(labels, node.engine.infer(_rgb(251, 333)).labels)
    assert h.wait_for(lambda: h.received['label_info']), 'latched label_info never arrived'
    info = json.loads(h.received['label_info'][0].data)
    assert [c['name'] for c in info['classes']][:2] == ['floor', 'wall'] and info['label_encoding'] == 'mono8'


@pytest.mark.parametrize('encoding, convert, pad', [
    ('bgr8', lambda a: a[..., ::-1], 5), ('rgba8', lambda a: np.dstack([a, a[..., :1]]), 0),
    ('bgra8', lambda a: np.dstack([a[..., ::-1], a[..., :1]]), 4), ('mono8', lambda a: a[..., 0], 3),
])
def test_accepted_encodings_with_padded_rows(ros, tiny_model, encoding, convert, pad):
    node, h = ros(model_path=tiny_model)
    rgb = _rgb(48, 64, seed=1)
    h.publish(convert(rgb), encoding, pad=pad)
    assert h.wait_for(lambda: h.received['labels'])
    labels = np.frombuffer(h.received['labels'][0].data, np.uint8).reshape(48, 64)
    expect = rgb if encoding != 'mono8' else np.repeat(rgb[..., :1], 3, axis=2)
    assert np.array_equal(labels, node.engine.infer(np.ascontiguousarray(expect)).labels)


@pytest.mark.parametrize('encoding', ['yuv422', 'yuv422_yuy2', 'bayer_grbg8'])
def test_camera_driver_encodings(ros, tiny_model, encoding):
    """YUV 4:2:2 and Bayer frames, as USB and machine-vision camera drivers publish them, are decoded as cv_bridge
    decodes them, then segmented."""
    node, h = ros(model_path=tiny_model)
    rgb = _rgb(48, 64, seed=2)
    packed = rgb_to_yuv422(rgb, encoding) if encoding.startswith('yuv') else rgb_to_bayer(rgb, encoding)
    h.publish(packed, encoding, pad=6)
    assert h.wait_for(lambda: h.received['labels'])
    labels = np.frombuffer(h.received['labels'][0].data, np.uint8).reshape(48, 64)
    assert np.array_equal(labels, node.engine.infer(cv2.cvtColor(packed, TO_RGB[encoding])).labels)


def test_bad_frames_are_counted_and_do_not_kill_the_node(ros, tiny_model):
    node, h = ros(model_path=tiny_model)
    h.publish(np.zeros((4, 4), np.float32), '32FC1')
    bad = Image(height=10, width=10, encoding='rgb8', step=30, data=b'\0' * 50)   # truncated data
    h.image_pub.publish(bad)
    empty = Image(height=0, width=0, encoding='rgb8', step=0, data=b'')
    h.image_pub.publish(empty)
    assert h.wait_for(lambda: node.frame_counts()['rejected'] >= 1)
    time.sleep(0.3)
    h.publish(_rgb(30, 40), 'rgb8')
    assert h.wait_for(lambda: h.received['labels'])
    assert node.frame_counts()['errors'] == 0 and node.frame_counts()['rejected'] + node.worker.dropped >= 3


def test_compressed_input_and_corrupt_frames(ros, tiny_model):
    node, h = ros(model_path=tiny_model, input_mode='compressed')
    msg = CompressedImage(format='jpeg', data=rgb_to_compressed_bytes(_rgb(60, 80), 'jpeg'))
    msg.header.frame_id = 'cam_c'
    h.comp_pub.publish(CompressedImage(format='jpeg', data=b'\xff\xd8 not a jpeg'))
    assert h.wait_for(lambda: node.frame_counts()['rejected'] == 1)
    h.comp_pub.publish(msg)
    assert h.wait_for(lambda: h.received['color'])
    c = h.received['color'][0]
    assert (c.height, c.width, c.encoding, c.header.frame_id) == (60, 80, 'rgb8', 'cam_c')


def test_unsubscribed_outputs_are_not_computed(ros, tiny_model):
    node, h = ros(model_path=tiny_model)
    h.node.destroy_subscription(next(s for s in h.node.subscriptions if s.topic_name.endswith('color')))
    h.node.destroy_subscription(next(s for s in h.node.subscriptions if s.topic_name.endswith('confidence')))
    assert h.wait_for(lambda: node.pub_color.get_subscription_count() == 0)
    h.publish(_rgb(40, 40), 'rgb8')
    assert h.wait_for(lambda: h.received['labels'])
    time.sleep(0.2)
    assert not h.received['color'] and not h.received['confidence']
    h.node.destroy_subscription(next(s for s in h.node.subscriptions if s.topic_name.endswith('labels')))
    assert h.wait_for(lambda: node.pub_labels.get_subscription_count() == 0)
    assert node.worker.wait_idle(5)  # the previous frame's outcome is counted after its publish
    before = node.frame_counts()['processed']
    h.publish(_rgb(40, 40), 'rgb8')
    assert h.wait_for(lambda: node.frame_counts()['idle_no_subscribers'] >= 1)
    assert node.frame_counts()['processed'] == before


def test_parameters_validated_and_model_reloaded(ros, tiny_model, tmp_path):
    node, h = ros(model_path=tiny_model)
    res = node.set_parameters([Parameter('exit_threshold', value=3.0)])[0]
    assert not res.successful
    res = node.set_parameters([Parameter('model_path', value=str(tmp_path / 'missing.onnx'))])[0]
    assert not res.successful and 'not found' in res.reason
    assert node.engine.model_path == tiny_model
    junk = tmp_path / 'junk.onnx'
    junk.write_bytes(b'\x08\x07 not an onnx graph' * 50)
    res = node.set_parameters([Parameter('model_path', value=str(junk))])[0]
    assert not res.successful and 'cannot load' in res.reason
    res = node.set_parameters([Parameter('input_size', value=[100, 64])])[0]
    assert not res.successful and 'got [100, 64]' in res.reason
    res = node.set_parameters([Parameter('input_size', value=[8192, 8192])])[0]
    assert not res.successful and '32..4096, got [8192, 8192]' in res.reason
    # diagnostics period and statistics window apply at once
    assert node.set_parameters([Parameter('diagnostics_period', value=0.25),
                                Parameter('stats_window', value=30.0)])[0].successful
    assert node.diag_timer.timer_period_ns == 250_000_000 and node.stats.window_s == 30.0
    res = node.set_parameters([Parameter('input_mode', value='compressed')])[0]
    assert not res.successful
    other = make_tiny_model(str(tmp_path / 'other.onnx'), num_classes=3)
    assert node.set_parameters([Parameter('model_path', value=other)])[0].successful
    assert node.engine.num_classes == 3
    # ONNX Runtime's worker threads sleep between frames unless asked to spin (a reload applies it)
    spin = 'session.intra_op.allow_spinning'
    assert node.engine.session.get_session_options().get_session_config_entry(spin) == '0'
    assert node.set_parameters([Parameter('intra_op_spinning', value=True)])[0].successful
    assert node.engine.session.get_session_options().get_session_config_entry(spin) == '1'
    assert node.engine.num_classes == 3
    assert h.wait_for(lambda: any(len(json.loads(m.data)['classes']) == 3 for m in h.received['label_info']))


def test_a_parameter_the_node_does_not_have_is_named_in_a_warning(ros, tiny_model, capfd):
    """ROS drops given parameters a node does not declare without a word; a typo would go unnoticed."""
    node, _ = ros(model_path=tiny_model, overlay_alpa=0.3)
    assert not node.has_parameter('overlay_alpa') and node.get_parameter('overlay_alpha').value == 0.5
    err = capfd.readouterr().err
    assert "parameter overlay_alpa is not one of this node's: ignored (did you mean 'overlay_alpha'?)" in err, err


def test_missing_model_keeps_node_alive_and_reports_error(ros, tmp_path, tiny_model):
    node, h = ros(model_path=str(tmp_path / 'nope.onnx'))
    assert node.engine is None
    h.publish(_rgb(20, 20), 'rgb8')
    assert h.wait_for(lambda: node.frame_counts()['no_model'] >= 1)
    assert h.wait_for(lambda: any(s.level == DiagnosticStatus.ERROR for m in h.received['diagnostics'] for s in m.status
                                  if 'segmentation' in s.name), timeout=5)
    assert node.set_parameters([Parameter('model_path', value=tiny_model)])[0].successful
    h.publish(_rgb(20, 20), 'rgb8')
    assert h.wait_for(lambda: h.received['labels'])


def test_diagnostics_report_rates_latency_and_drops(ros, tiny_model):
    node, h = ros(model_path=tiny_model, diagnostics_period=0.2)
    for i in range(10):
        h.publish(_rgb(120, 160, seed=i), 'rgb8')
        time.sleep(0.03)
    assert h.wait_for(lambda: node.frame_counts()['processed'] >= 3)

    def latest():
        for m in reversed(h.received['diagnostics']):
            for s in m.status:
                if 'segmentation' in s.name:
                    return {kv.key: kv.value for kv in s.values}
        return {}
    # every frame received and its outcome counted (a frame still in flight is in no outcome yet)
    assert h.wait_for(lambda: int(latest().get('frames_received', 0)) == 10
                      and latest().get('frames_in_flight') == '0', timeout=5)
    d = latest()
    assert d['provider'] == 'CPUExecutionProvider' and float(d['latency_p50_ms']) > 0
    assert float(d['input_rate_hz']) > 0 and float(d['output_rate_hz']) > 0
    assert int(d['frames_processed']) + int(d['frames_dropped']) + int(d['frames_idle_no_subscribers']) == 10


def test_max_rate_skips_frames_on_arrival_and_counts_them(ros, tiny_model):
    """max_rate 4: of 30 frames over ~0.9 s about 4 are segmented, the rest skipped on arrival and counted; set to
    0 while running, every frame reaches the worker again."""
    node, h = ros(model_path=tiny_model, max_rate=4.0)
    start = time.monotonic()
    for i in range(30):
        h.publish(_rgb(60, 80, seed=i), 'rgb8', stamp=(i, 0))
        time.sleep(0.03)
    elapsed = time.monotonic() - start
    assert h.wait_for(lambda: node.frame_counts()['received'] == 30 and node.frame_counts()['in_flight'] == 0)
    counts = node.frame_counts()
    admitted = counts['received'] - counts['skipped_rate']
    assert 2 <= admitted <= 2 + 4 * elapsed and counts['processed'] >= 2, (counts, elapsed)
    assert counts['received'] == sum(counts[k] for k in ('skipped_rate', 'processed', 'dropped', 'rejected', 'errors',
                                                         'idle_no_subscribers', 'no_model', 'in_flight'))
    assert node.set_parameters([Parameter('max_rate', value=0.0)])[0].successful
    skipped = counts['skipped_rate']
    for i in range(5):
        h.publish(_rgb(60, 80, seed=i), 'rgb8', stamp=(100 + i, 0))
        time.sleep(0.03)
    assert h.wait_for(lambda: node.frame_counts()['received'] == 35)
    assert node.frame_counts()['skipped_rate'] == skipped
    assert not node.set_parameters([Parameter('max_rate', value=-1.0)])[0].successful   # the descriptor's range


def test_opencv_threads_follow_the_parameter(ros, tiny_model):
    """OpenCV's thread count is the node's: 1 by default, changed live, 0 = OpenCV's own default; the frames
    still come out."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(-1)
    opencv_default = cv2.getNumThreads()
    try:
        node, h = ros(model_path=tiny_model)
        assert node.get_parameter('opencv_threads').value == 1 and cv2.getNumThreads() == 1
        assert node.set_parameters([Parameter('opencv_threads', value=3)])[0].successful
        assert cv2.getNumThreads() == 3
        assert node.set_parameters([Parameter('opencv_threads', value=0)])[0].successful
        assert cv2.getNumThreads() == opencv_default
        assert not node.set_parameters([Parameter('opencv_threads', value=-1)])[0].successful   # the range
        assert cv2.getNumThreads() == opencv_default
        h.publish(_rgb(60, 80), 'rgb8', stamp=(1, 0))
        assert h.wait_for(lambda: len(h.received['labels']) == 1)
    finally:
        cv2.setNumThreads(before)


def test_node_process_with_params_file_large_images(tmp_path, tiny_model):
    """segmentation_node as its own process (--params-file, remapping) receives 640x480 frames over DDS."""
    params = tmp_path / 'p.yaml'
    params.write_text(f'/**:\n  ros__parameters:\n    model_path: "{tiny_model}"\n    overlay: true\n')
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    proc = subprocess.Popen([sys.executable, '-m', 'seg_perception.node', '--ros-args', '--params-file',
                             str(params), '-r', 'image:=/cam/image_raw', '-r', '__ns:=/robot'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        h = Harness(ctx, prefix='/robot/')
        h.image_pub = h.node.create_publisher(Image, '/cam/image_raw', qos_profile_sensor_data)
        executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
        executor.add_node(h.node)
        end = time.monotonic() + 30
        while time.monotonic() < end and h.image_pub.get_subscription_count() == 0:
            executor.spin_once(timeout_sec=0.1)
        assert h.image_pub.get_subscription_count() > 0, 'node process never subscribed'
        sent = 0
        while time.monotonic() < end and len(h.received['color']) < 20:
            if sent < 200:   # the node takes the newest frame: on a loaded machine most are dropped
                h.publish(_rgb(480, 640, seed=sent % 60), 'rgb8', stamp=(sent, 0))
                sent += 1
            executor.spin_once(timeout_sec=0.05)
        assert len(h.received['color']) >= 20, f'{len(h.received["color"])} of {sent} frames came back'
        c = h.received['color'][-1]
        assert (c.width, c.height, c.encoding) == (640, 480, 'rgb8')
        assert h.received['labels'][0].height == 480
        while time.monotonic() < end + 10 and not h.received['label_info']:
            executor.spin_once(timeout_sec=0.05)
        assert h.received['label_info'], 'latched label_info never arrived'
        executor.shutdown()
        h.node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert 'CPUExecutionProvider' in out and 'Traceback' not in out, out


def test_token_pass_model_threshold_is_live_and_reported(ros):
    model = os.path.join(REPO, 'models', 'tokenpass_vit_mini_scenes.onnx')
    node, h = ros(model_path=model, diagnostics_period=0.2, exit_threshold=1.0)
    frame = _rgb(120, 160, seed=5)
    h.publish(frame, 'rgb8')
    assert h.wait_for(lambda: node.frame_counts()['processed'] == 1)
    assert np.all(node._last_kept == 1.0)
    assert node.set_parameters([Parameter('exit_threshold', value=0.0)])[0].successful
    h.publish(frame, 'rgb8')
    assert h.wait_for(lambda: node.frame_counts()['processed'] == 2)
    assert np.all(node._last_kept == 0.0)

    def reported():
        for m in reversed(h.received['diagnostics']):
            for s in m.status:
                values = {kv.key: kv.value for kv in s.values}
                if 'gmacs_per_frame_mean' in values and values['frames_processed'] == '2':  # both frames in
                    return values
        return None
    # a diagnostics message from after the second frame (one may have gone out between the two frames)
    assert h.wait_for(lambda: reported() is not None and reported()['kept_fraction_last_per_stage'].startswith('0.000'),
                      timeout=5)
    d = reported()
    assert float(d['gmacs_per_frame_mean']) < float(d['gmacs_static_model'])
    assert d['kept_fraction_last_per_stage'].split() == ['0.000'] * 3
