"""QoS of the node's input and outputs overridden the ROS 2 way: ``qos_overrides.<topic>.<entity>.<policy>``
parameters from a params file (what rclcpp and rclpy nodes document), checked on the node's own endpoints and on
what DDS discovery tells another node."""
import threading
import time

import pytest

rclpy = pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402

from seg_perception.node import OUTPUT_QOS, SegmentationNode  # noqa: E402

PARAMS = """\
/**:
  ros__parameters:
    model_path: "{model}"
    qos_overrides:
      /cam/image_raw:
        subscription:
          reliability: reliable
          depth: 3
      /robot/camera_info:
        subscription:
          reliability: reliable
      /robot/segmentation/labels:
        publisher:
          reliability: best_effort
          depth: 7
      /robot/segmentation/label_info:
        publisher:
          depth: 4
      /robot/segmentation/confidence:
        publisher:
          reliability: sometimes
      /robot/segmentation/color:
        publisher:
          depth: ten
"""


@pytest.fixture
def node_from_params_file(tmp_path, tiny_model, capfd):
    params = tmp_path / 'qos.yaml'
    params.write_text(PARAMS.format(model=tiny_model))
    ctx = rclpy.context.Context()
    rclpy.init(args=['--ros-args', '--params-file', str(params), '-r', 'image:=/cam/image_raw', '-r',
                     '__ns:=/robot'], context=ctx)
    node = SegmentationNode(context=ctx)
    other = rclpy.create_node('qos_observer', context=ctx, use_global_arguments=False)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    executor.add_node(other)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node, other
    executor.shutdown()
    node.destroy_node()
    other.destroy_node()
    rclpy.shutdown(context=ctx)
    thread.join(5)


def _endpoints(get_info, topic, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = get_info(topic)
        if info:
            return info
        time.sleep(0.05)
    return []


def test_qos_overrides_from_params_file_for_input_and_outputs(node_from_params_file):
    node, other = node_from_params_file
    # the input: sensor-data QoS (best effort, depth 5) made reliable with depth 3
    assert node.sub.topic_name == '/cam/image_raw'
    assert node.sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE and node.sub.qos_profile.depth == 3
    assert node.get_parameter('qos_overrides./robot/camera_info.subscription.reliability').value == 'reliable'
    # outputs: labels best effort depth 7; the latched label_info keeps transient local with depth 4
    assert node.pub_labels.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert node.pub_labels.qos_profile.depth == 7
    assert node.pub_info.qos_profile.depth == 4
    assert node.pub_info.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    # what the overrides became: read-only parameters that `ros2 param get` shows
    assert node.get_parameter('qos_overrides./robot/segmentation/labels.publisher.depth').value == 7
    assert node.get_parameter('qos_overrides./robot/segmentation/labels.publisher.reliability').value == \
        'best_effort'
    assert node.describe_parameter('qos_overrides./robot/segmentation/labels.publisher.depth').read_only
    # not overridden: the defaults, and the override parameters declared with them
    assert node.pub_color.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert node.get_parameter('qos_overrides./diagnostics.publisher.reliability').value == 'reliable'
    # another participant sees the overridden policies through DDS discovery
    labels = _endpoints(other.get_publishers_info_by_topic, '/robot/segmentation/labels')
    assert labels and labels[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    for topic in ('/cam/image_raw', '/robot/camera_info'):
        sub = _endpoints(other.get_subscriptions_info_by_topic, topic)
        assert sub and sub[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE, topic


    # overriding one topic changes no other (rclpy edits the profile object it is given)
    assert qos_profile_sensor_data.depth == 5 and qos_profile_sensor_data.reliability == ReliabilityPolicy.BEST_EFFORT
    assert OUTPUT_QOS.reliability == ReliabilityPolicy.RELIABLE and OUTPUT_QOS.depth == 2


def test_bad_qos_override_keeps_the_default_and_the_node_runs(node_from_params_file, capfd):
    node, _ = node_from_params_file
    # 'sometimes' is no reliability policy, 'ten' no depth: those topics keep their default QoS, said in the log
    assert node.pub_conf.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert node.pub_color.qos_profile.depth == 2
    assert node.engine is not None and node.sub is not None
    log = capfd.readouterr().err
    assert "QoS override refused (Unexpected QoS override for policy `reliability`: `sometimes`); " \
        "segmentation/confidence keeps its default QoS" in log, log
    assert "'qos_overrides./robot/segmentation/color.publisher.depth' to 'ten'" in log
