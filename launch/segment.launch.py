"""ros2 launch seg_perception segment.launch.py [namespace:=...] [image_topic:=...] [params_file:=...]
[model_path:=...] [input_mode:=raw|compressed]

Starts segmentation_node with config/segment.yaml (or params_file), remapping its `image` input to
image_topic (and `image/compressed` to image_topic/compressed). Unless the environment already chooses a
Fast DDS profile or builtin transports, it applies config/fastdds_large_data.xml so camera-sized images
cross process boundaries (see the README)."""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

SHARE = get_package_share_directory('seg_perception')


def _node(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    image_topic = arg('image_topic')
    parameters = [arg('params_file'), {'input_mode': arg('input_mode')}]
    if arg('model_path'):
        parameters.append({'model_path': arg('model_path')})
    actions = []
    if not (os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE') or os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE')
            or os.environ.get('FASTDDS_BUILTIN_TRANSPORTS')):
        profile = os.path.join(SHARE, 'config', 'fastdds_large_data.xml')
        # Fast DDS >= 2.14 reads FASTDDS_DEFAULT_PROFILES_FILE; Humble's 2.6 reads the older name.
        actions += [SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', profile),
                    SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', profile)]
    actions.append(Node(
        package='seg_perception', executable='segmentation_node', name='segmentation_node',
        namespace=arg('namespace'), output='screen', emulate_tty=True, parameters=parameters,
        remappings=[('image', image_topic), ('image/compressed', image_topic + '/compressed')]))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node and its topics'),
        DeclareLaunchArgument('image_topic', default_value='/camera/image_raw',
                              description='camera image topic (raw); input_mode compressed uses its /compressed'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(SHARE, 'config', 'segment.yaml'),
                              description='YAML file with the node parameters'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='ONNX model; empty = the one in params_file (default: shipped model)'),
        DeclareLaunchArgument('input_mode', default_value='raw', description='raw or compressed'),
        OpaqueFunction(function=_node),
    ])
