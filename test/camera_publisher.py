"""A stand-in camera driver for the ROS tests: publishes rgb8 images (and camera_info) with sensor-data QoS.

    python camera_publisher.py TOPIC WIDTH HEIGHT [RATE_HZ]

camera_info goes to camera_info beside TOPIC. Runs until SIGINT/SIGTERM (exit 0), in its own process, with whatever
Fast DDS settings its environment gives it, as a real driver would.
"""
import os
import signal
import sys
import threading

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image


def main() -> None:
    topic, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rclpy.init()
    node = rclpy.create_node('camera_publisher')
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, topic.rpartition('/')[0] + '/camera_info', qos_profile_sensor_data)
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    count = [0]

    def publish():
        msg = Image(height=height, width=width, encoding='rgb8', step=width * 3, data=frame)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = 'camera_optical'
        pub.publish(msg)
        info_pub.publish(CameraInfo(header=msg.header, height=height, width=width))
        count[0] += 1

    node.create_timer(1.0 / rate, publish)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    print(f'camera_publisher: {count[0]} frames published on {topic}', flush=True)
    # Fast DDS's teardown was once seen to hang > 15 s in a clean-clone CI run (session 39) after the node under
    # test had exited cleanly; a stand-in driver must not fail the node's launch test for it, so it gets 5 s.
    teardown = threading.Thread(target=lambda: (node.destroy_node(), rclpy.try_shutdown()), daemon=True)
    teardown.start()
    teardown.join(5.0)
    if teardown.is_alive():
        print('camera_publisher: DDS teardown still running after 5 s; exiting without it', flush=True)
        os._exit(0)


if __name__ == '__main__':
    main()
