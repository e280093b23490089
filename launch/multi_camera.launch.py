"""ros2 launch seg_perception multi_camera.launch.py [cameras:=cameras.yaml] [params_file:=...] [lifecycle:=false]
[large_data:=true]

One segmentation node per camera of a camera list (default: the installed config/cameras.yaml, which documents the
format): each entry gives a namespace (node /<namespace>/segmentation_node, outputs /<namespace>/segmentation/...),
the image topic, the camera_info topic (default: beside the image topic), a model (relative paths are relative to
the list's folder; empty = the one in params_file), and optionally input_mode and per-camera parameters. All nodes
share params_file; per-camera values override it. A bad list stops the launch with one line naming the entry.
large_data and lifecycle as in segment.launch.py. Several nodes on one board: see the README's CPU guidance
(intra_op_threads per camera so that the sum fits the cores).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from seg_perception.launch_support import large_data_env, launch_flag, load_cameras, node_action

SHARE = get_package_share_directory('seg_perception')


def _actions(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    actions = []
    if launch_flag('large_data', arg('large_data')):
        profile = os.path.join(SHARE, 'config', 'fastdds_large_data.xml')
        actions += [SetEnvironmentVariable(k, v) for k, v in large_data_env(profile).items()]
    lifecycle = launch_flag('lifecycle', arg('lifecycle'))
    for cam in load_cameras(arg('cameras')):
        actions.append(node_action(params_file=arg('params_file'), lifecycle=lifecycle, **cam))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('cameras', default_value=os.path.join(SHARE, 'config', 'cameras.yaml'),
                              description='YAML camera list (see config/cameras.yaml)'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(SHARE, 'config', 'segment.yaml'),
                              description='YAML file with the parameters every node starts from'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='true: managed nodes (segmentation_lifecycle_node), started unconfigured'),
        DeclareLaunchArgument('large_data', default_value='true',
                              description='apply config/fastdds_large_data.xml unless the environment sets a '
                                          'Fast DDS profile or transports'),
        OpaqueFunction(function=_actions),
    ])
