"""ros2 launch seg_perception segment.launch.py [namespace:=...] [image_topic:=...] [camera_info_topic:=...]
[params_file:=...] [model_path:=...] [input_mode:=raw|compressed] [lifecycle:=false|true] [large_data:=true|false]

Starts one segmentation_node with params_file (default: the installed config/segment.yaml), its `image` input
remapped to image_topic (`image/compressed` to image_topic/compressed) and `camera_info` to camera_info_topic
(default: camera_info beside image_topic). model_path and input_mode override params_file only when given.
lifecycle:=true starts the managed variant (segmentation_lifecycle_node) unconfigured: drive it with
`ros2 lifecycle set <node> configure|activate|deactivate|cleanup`.

large_data:=true (default) gives the processes this launch starts config/fastdds_large_data.xml, unless the
environment already sets FASTDDS_DEFAULT_PROFILES_FILE, FASTRTPS_DEFAULT_PROFILES_FILE or FASTDDS_BUILTIN_TRANSPORTS.
That reaches this launch's processes only: a camera driver started elsewhere needs the same variable in its own
environment (see the README, "Fast DDS and camera-sized images"), or start it from this launch with
camera_launch:=<its launch file> so it inherits the profile.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction, SetEnvironmentVariable
from launch.launch_description_sources import AnyLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from seg_perception.launch_support import default_camera_info_topic, large_data_env, launch_flag, node_action

SHARE = get_package_share_directory('seg_perception')


def _actions(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    actions = []
    if launch_flag('large_data', arg('large_data')):
        profile = os.path.join(SHARE, 'config', 'fastdds_large_data.xml')
        actions += [SetEnvironmentVariable(k, v) for k, v in large_data_env(profile).items()]
    if arg('camera_launch'):
        actions.append(IncludeLaunchDescription(AnyLaunchDescriptionSource(arg('camera_launch'))))
    image_topic = arg('image_topic')
    actions.append(node_action(
        namespace=arg('namespace'), image_topic=image_topic,
        camera_info_topic=arg('camera_info_topic') or default_camera_info_topic(image_topic),
        params_file=arg('params_file'), model_path=arg('model_path'), input_mode=arg('input_mode'),
        lifecycle=launch_flag('lifecycle', arg('lifecycle'))))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node and its topics'),
        DeclareLaunchArgument('image_topic', default_value='/camera/image_raw',
                              description='camera image topic (raw); input_mode compressed uses its /compressed'),
        DeclareLaunchArgument('camera_info_topic', default_value='',
                              description='camera_info topic; empty = camera_info beside image_topic'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(SHARE, 'config', 'segment.yaml'),
                              description='YAML file with the node parameters'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='ONNX model; empty = the one in params_file (default: shipped model)'),
        DeclareLaunchArgument('input_mode', default_value='',
                              description='raw or compressed; empty = the one in params_file (default raw)'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='true: the managed node (segmentation_lifecycle_node), started unconfigured'),
        DeclareLaunchArgument('large_data', default_value='true',
                              description='apply config/fastdds_large_data.xml unless the environment sets a '
                                          'Fast DDS profile or transports'),
        DeclareLaunchArgument('camera_launch', default_value='',
                              description='a launch file to include (e.g. the camera driver) so it gets the same '
                                          'Fast DDS profile; empty = none'),
        OpaqueFunction(function=_actions),
    ])
