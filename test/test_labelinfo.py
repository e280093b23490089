"""Class metadata as vision_msgs/LabelInfo (segmentation/vision_info) beside the JSON (segmentation/label_info).

vision_msgs has no PyPI wheel: the message tests run with the real ros2 CLI in the cached ros2cli venv
(shared/ros2cli/make_env.sh builds vision_msgs there); without vision_msgs the node must start and say so once.
"""
import os
import threading
import time

import pytest
import yaml

rclpy = pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from seg_perception.classes import SCENE_CLASS_NAMES  # noqa: E402
from seg_perception.label_info import LabelInfo, make_label_info  # noqa: E402
from seg_perception.node import LATCHED_QOS, SegmentationNode  # noqa: E402
from seg_perception.runtime.costmap import DEFAULT_MIN_CONFIDENCE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_VISION_MSGS = 'vision_msgs/LabelInfo is not published on segmentation/vision_info'


def test_make_label_info():
    pytest.importorskip('vision_msgs.msg', reason='vision_msgs not installed (no PyPI wheel; in the ros2cli venv)')
    msg = make_label_info(['floor', 'wall', 'person'], 0.7)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, 'floor'), (1, 'wall'), (2, 'person')]
    assert msg.threshold == pytest.approx(0.7)
    assert make_label_info(['a'], 1.5).threshold == 1.0 and make_label_info(['a'], -1).threshold == 0.0
    with pytest.raises(ValueError, match='do not fit the uint16 class ids'):
        make_label_info(['c'] * 65536, 0.5)


def test_node_without_vision_msgs_starts_and_says_so_once(tiny_model, capfd):
    if LabelInfo is not None:
        pytest.skip('vision_msgs is installed here: the node publishes LabelInfo (test_ros2cli_topic_echo_...)')
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = SegmentationNode(context=ctx, parameter_overrides=[Parameter('model_path', value=tiny_model)])
    peer = rclpy.create_node('label_info_peer', context=ctx)
    received = []
    peer.create_subscription(String, 'segmentation/label_info', received.append, LATCHED_QOS)
    executor = SingleThreadedExecutor(context=ctx)
    for n in (node, peer):
        executor.add_node(n)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not received and time.monotonic() < end:
            time.sleep(0.05)
        assert received, 'the JSON class list never arrived'
        assert node.pub_label_info is None
        node.set_parameters([Parameter('model_path', value=tiny_model)])   # a reload does not repeat it
        log = capfd.readouterr().err
        assert log.count(NO_VISION_MSGS) == 1, log
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()
        rclpy.shutdown(context=ctx)
        thread.join(5)


def test_node_publishes_label_info_latched_and_follows_threshold_and_model(tiny_model, tmp_path):
    """Where vision_msgs is installed (the ros2cli venv, the Jazzy venv of .ci/jazzy_env.sh, a ROS install)."""
    pytest.importorskip('vision_msgs.msg', reason='vision_msgs not installed (no PyPI wheel; in the ros2cli venv)')
    from onnx_models import make_tiny_model
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = SegmentationNode(context=ctx, parameter_overrides=[Parameter('model_path', value=tiny_model)])
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    peer = rclpy.create_node('label_info_peer', context=ctx)   # subscribes after the node published: latched
    received = []
    peer.create_subscription(LabelInfo, 'segmentation/vision_info', received.append, LATCHED_QOS)
    executor.add_node(peer)

    def wait(cond, timeout=10.0):
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            time.sleep(0.05)
        return cond()
    try:
        assert wait(lambda: received), 'LabelInfo never arrived'
        assert [(c.class_id, c.class_name) for c in received[-1].class_map] == list(enumerate(SCENE_CLASS_NAMES))
        assert received[-1].threshold == pytest.approx(DEFAULT_MIN_CONFIDENCE)
        assert node.set_parameters([Parameter('costmap.min_confidence', value=0.3)])[0].successful
        assert wait(lambda: received[-1].threshold == pytest.approx(0.3))
        other = make_tiny_model(str(tmp_path / 'three.onnx'), num_classes=3, names=['road', 'car', 'sky'])
        assert node.set_parameters([Parameter('model_path', value=other)])[0].successful
        assert wait(lambda: [c.class_name for c in received[-1].class_map] == ['road', 'car', 'sky'])
        assert received[-1].threshold == pytest.approx(0.3)
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()
        rclpy.shutdown(context=ctx)
        thread.join(5)


# ------------------------------------------------------------------------------- the real ros2 CLI (Kilted)
@pytest.fixture(scope='module')
def ros2(ros2cli_venv):
    from ros2cli_env import Ros2
    return Ros2(ros2cli_venv, PYTHONPATH=ROOT)   # the node runs this checkout's code with the venv's vision_msgs


def _interface_fields(text):
    """{name: type} of the top-level fields and of the nested fields (one tab deeper) in `ros2 interface show`."""
    top, nested = {}, {}
    for line in text.splitlines():
        code = line.split('#', 1)[0].rstrip()
        depth = len(code) - len(code.lstrip('\t'))
        parts = code.split()
        if len(parts) == 2:
            (top if depth == 0 else nested if depth == 1 else {})[parts[1]] = parts[0]
    return top, nested


@pytest.mark.timeout(1200)   # the first run builds the cached ros2cli venv
def test_ros2cli_topic_echo_shows_the_classes_and_interface_show_agrees(ros2, tiny_model):
    node = ros2.start(os.path.join(ros2.venv, 'bin', 'python'), '-m', 'seg_perception.node', '--ros-args',
                      '-p', f'model_path:={tiny_model}', '-r', '__ns:=/labels_test', cwd=ROOT)
    try:
        echo = ros2.run('ros2', 'topic', 'echo', '--once', '--no-daemon', '--timeout', '30',
                        '--qos-durability', 'transient_local', '--qos-reliability', 'reliable',
                        '/labels_test/segmentation/vision_info', 'vision_msgs/msg/LabelInfo', timeout=60)
        msg = yaml.safe_load(echo.stdout.split('\n---')[0])
        assert [c['class_name'] for c in msg['class_map']] == list(SCENE_CLASS_NAMES), echo.stdout
        assert [c['class_id'] for c in msg['class_map']] == list(range(len(SCENE_CLASS_NAMES)))
        assert msg['threshold'] == pytest.approx(DEFAULT_MIN_CONFIDENCE)   # the tiny model has no default of its own
        topics = ros2.run('ros2', 'topic', 'list', '-t', '--no-daemon', '--spin-time', '5').stdout
        assert '/labels_test/segmentation/vision_info [vision_msgs/msg/LabelInfo]' in topics, topics
        assert '/labels_test/segmentation/label_info [std_msgs/msg/String]' in topics, topics
        # the interface definition the CLI knows has exactly the fields the node's message carries
        top, nested = _interface_fields(ros2.run('ros2', 'interface', 'show', 'vision_msgs/msg/LabelInfo').stdout)
        assert set(top) == set(msg) == {'header', 'class_map', 'threshold'}
        assert top['class_map'] == 'vision_msgs/VisionClass[]' and top['threshold'] == 'float32'
        assert set(nested) >= set(msg['class_map'][0]) == {'class_id', 'class_name'}
        assert nested['class_id'] == 'uint16' and nested['class_name'] == 'string'
        # the threshold is the node's confidence parameter: set at run time, the latched message follows
        # (without a daemon the CLI's own node may not have discovered ours yet: "Node not found"; ask again)
        for _ in range(4):
            result = ros2.run('ros2', 'param', 'set', '--no-daemon', '/labels_test/segmentation_node',
                              'costmap.min_confidence', '0.75', timeout=60, check=False)
            if result.returncode == 0:
                break
        assert result.returncode == 0, result.stdout
        echo = ros2.run('ros2', 'topic', 'echo', '--once', '--no-daemon', '--timeout', '30',
                        '--qos-durability', 'transient_local', '--qos-reliability', 'reliable',
                        '/labels_test/segmentation/vision_info', 'vision_msgs/msg/LabelInfo', timeout=60)
        assert yaml.safe_load(echo.stdout.split('\n---')[0])['threshold'] == pytest.approx(0.75)
    finally:
        out = ros2.reap(node)
    assert NO_VISION_MSGS not in out and 'Traceback' not in out, out
