"""The managed node in-process (real rclpy, real DDS, real ONNX Runtime): what each transition builds and frees.
Transitions go through the node's change_state service, handled on the executor's thread as in a real process
(destroying entities from another thread while an executor builds its wait set crashes rclpy's executor).
test/test_ros2cli.py drives the same node through `ros2 lifecycle` from another process."""
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed (pip install .[ros])')
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from seg_perception.node import OUTPUT_QOS, SegmentationLifecycleNode  # noqa: E402
from seg_perception.runtime.imgmsg import array_to_image_fields  # noqa: E402

OUTPUTS = ('/lc_test/segmentation/labels', '/lc_test/segmentation/color', '/lc_test/segmentation/label_info')


@pytest.fixture
def managed(tmp_path):
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    node = SegmentationLifecycleNode(context=ctx, namespace='/lc_test', parameter_overrides=[
        Parameter('model_path', value=str(tmp_path / 'missing.onnx'))])
    peer = rclpy.create_node('lc_peer', context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    executor.add_node(peer)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node, peer
    executor.shutdown()
    node.destroy_node()
    peer.destroy_node()
    rclpy.shutdown(context=ctx)
    thread.join(5)


def _own_topics(node):
    names = {t for t, _ in node.get_publisher_names_and_types_by_node(node.get_name(), node.get_namespace())}
    names |= {t for t, _ in node.get_subscriber_names_and_types_by_node(node.get_name(), node.get_namespace())}
    return {t for t in names if t.startswith('/lc_test/') and '/parameter' not in t and '/transition' not in t}


def _call(peer, srv_type, service, request):
    client = peer.create_client(srv_type, f'/lc_test/segmentation_node/{service}')
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(request)
    assert _wait(future.done)
    peer.destroy_client(client)
    return future.result()


def _state(peer):
    return _call(peer, GetState, 'get_state', GetState.Request()).current_state.label


def _transition(peer, label):
    """True if the transition succeeded."""
    transition = Transition(id=getattr(Transition, f'TRANSITION_{label.upper()}'))
    return _call(peer, ChangeState, 'change_state', ChangeState.Request(transition=transition)).success


def _wait(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        time.sleep(0.05)
    return cond()


def test_transitions_build_and_free_what_they_say(managed, tiny_model):
    node, peer = managed
    assert _state(peer) == 'unconfigured'
    assert node.engine is None and not _own_topics(node)

    # configure with a model that does not exist: refused, still unconfigured, the reason kept
    assert not _transition(peer, 'configure')
    assert _state(peer) == 'unconfigured'
    assert 'model file not found' in node.engine_error and node.engine is None

    # while unconfigured a model_path change is only stored (configure loads it)
    assert node.set_parameters([Parameter('model_path', value=tiny_model)])[0].successful
    assert node.engine is None
    assert _transition(peer, 'configure')
    assert node.engine is not None and node.engine.model_path == tiny_model
    assert _state(peer) == 'inactive' and not _own_topics(node)   # no subscription, no publishers

    assert _transition(peer, 'activate')
    assert _wait(lambda: {'/lc_test/image', '/lc_test/segmentation/labels'} <= _own_topics(node))
    received = []
    peer.create_subscription(Image, '/lc_test/segmentation/labels', received.append, OUTPUT_QOS)
    pub = peer.create_publisher(Image, '/lc_test/image', qos_profile_sensor_data)
    frame = Image(**array_to_image_fields(np.zeros((48, 64, 3), np.uint8), 'rgb8'))
    assert _wait(lambda: pub.get_subscription_count() and node.pub_labels.get_subscription_count())
    assert _wait(lambda: pub.publish(frame) or received, 20), 'no labels while active'

    assert _transition(peer, 'deactivate')
    assert _wait(lambda: not _own_topics(node)) and _state(peer) == 'inactive'
    assert _wait(lambda: pub.get_subscription_count() == 0)
    assert node.engine is not None                   # still configured: the model stays loaded
    counts = node.frame_counts()
    parts = ('skipped_rate', 'processed', 'dropped', 'rejected', 'errors', 'idle_no_subscribers', 'no_model',
             'in_flight')
    assert counts['received'] >= 1 and counts['received'] == sum(counts[k] for k in parts), counts

    assert _transition(peer, 'activate')   # again, with fresh I/O; the frame counts go on from where they were
    assert _wait(lambda: pub.get_subscription_count() == 1)
    assert node.frame_counts() == counts
    assert _transition(peer, 'deactivate')
    assert _transition(peer, 'cleanup')
    assert node.engine is None and _state(peer) == 'unconfigured'
