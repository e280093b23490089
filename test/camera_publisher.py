"""A stand-in camera driver for the ROS tests: publishes rgb8 images (and camera_info) with sensor-data QoS.

    python camera_publisher.py TOPIC WIDTH HEIGHT [RATE_HZ]

camera_info goes to camera_info beside TOPIC. Runs until SIGINT/SIGTERM (exit 0), with whatever Fast DDS settings
its environment gives it, as a real driver would.

The ROS side runs in a forked child; this process only passes signals on and waits for it. Fast DDS's teardown was
seen to hang > 15 s in two clean-clone CI runs (sessions 39 and 42) after the node under test had exited cleanly,
holding the GIL, so neither a timeout thread nor SIGTERM in the same process could end it. A stand-in driver must not
fail the node's launch test for that: the child gets TEARDOWN_S after the first signal, then it is killed and this
process still exits 0.
"""
import os
import signal
import sys
import traceback

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

TEARDOWN_S = 3.0


def publish(topic: str, width: int, height: int, rate: float) -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rclpy.init()
    node = rclpy.create_node('camera_publisher')
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, topic.rpartition('/')[0] + '/camera_info', qos_profile_sensor_data)
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    count = [0]

    def tick():
        msg = Image(height=height, width=width, encoding='rgb8', step=width * 3, data=frame)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = 'camera_optical'
        pub.publish(msg)
        info_pub.publish(CameraInfo(header=msg.header, height=height, width=width))
        count[0] += 1

    node.create_timer(1.0 / rate, tick)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    print(f'camera_publisher: {count[0]} frames published on {topic}', flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def supervise(child: int) -> int:
    """Passes SIGINT/SIGTERM to the child, kills it TEARDOWN_S after the first one; returns its exit code once it is
    gone (0 when this process killed it)."""
    killed = []

    def forward(signum, frame):
        os.kill(child, signal.SIGINT)
        if not signal.getitimer(signal.ITIMER_REAL)[0]:
            signal.setitimer(signal.ITIMER_REAL, TEARDOWN_S)

    def kill(signum, frame):
        print(f'camera_publisher: DDS teardown still running {TEARDOWN_S:.0f} s after the signal; killed', flush=True)
        os.kill(child, signal.SIGKILL)
        killed.append(True)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGALRM, kill)
    status = os.waitpid(child, 0)[1]            # retried after each handler (PEP 475)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    return 0 if killed else os.waitstatus_to_exitcode(status)


def main() -> None:
    topic, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    child = os.fork()
    if child == 0:
        code = 1
        try:
            publish(topic, width, height, rate)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    sys.exit(supervise(child))


if __name__ == '__main__':
    main()
