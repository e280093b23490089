"""The launch files: parsed, and the node action checked where launch_ros exists (a ROS 2 install); skipped, with
the reason shown, on a pip-only install (launch and launch_ros are not on PyPI). test/test_ros2cli.py runs them
for real with `ros2 launch` in a venv that has the ros2 CLI."""
import importlib.util
import os

import pytest

LAUNCH_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'launch',
                           'segment.launch.py')


@pytest.mark.parametrize('name', ['segment.launch.py', 'multi_camera.launch.py'])
def test_launch_file_is_valid_python(name):
    path = os.path.join(os.path.dirname(LAUNCH_FILE), name)
    with open(path) as f:
        compile(f.read(), path, 'exec')


def test_launch_description_builds():
    pytest.importorskip('launch_ros', reason='launch_ros not installed (ROS 2 install needed; not on PyPI)')
    pytest.importorskip('ament_index_python')
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    try:
        get_package_share_directory('seg_perception')
    except PackageNotFoundError:
        pytest.skip('seg_perception is not installed in an ament index (colcon build + source install/setup.bash)')
    from launch import LaunchContext
    spec = importlib.util.spec_from_file_location('segment_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.entities if hasattr(a, 'default_value') and hasattr(a, 'name')}
    assert {'namespace', 'image_topic', 'params_file', 'model_path', 'input_mode'} <= names
    context = LaunchContext()
    for entity in description.entities:
        entity.visit(context)
    opaque = description.entities[-1]
    actions = opaque.execute(context)
    node = actions[-1]
    assert node.node_executable == 'segmentation_node'
