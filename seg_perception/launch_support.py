"""What segment.launch.py and multi_camera.launch.py share: the node action, the camera list, the Fast DDS setup.

Plain Python apart from ``node_action`` (launch_ros), so the rules are testable without a ROS install.
"""
import os
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from launch_ros.actions import Node

PACKAGE = 'seg_perception'
PROFILE_VARS = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS')
# Distributions whose Fast DDS (2.x) reads only the old variable name; Fast DDS 3 (Kilted and newer) reads
# FASTDDS_DEFAULT_PROFILES_FILE and logs a deprecation warning when the old one is set.
FASTRTPS_NAME_DISTROS = ('foxy', 'galactic', 'humble', 'iron', 'jazzy')
CAMERA_KEYS = {'namespace', 'image_topic', 'camera_info_topic', 'model_path', 'input_mode', 'parameters'}


class CameraListError(ValueError):
    """A camera list that cannot be used; the message names the file, the entry and the bad value."""


class LaunchArgumentError(ValueError):
    """A launch argument that cannot be used; the message names it and its value."""


def launch_flag(name: str, value: str) -> bool:
    """A true/false launch argument (also 1/0, yes/no); anything else is a LaunchArgumentError, not false."""
    text = value.strip().lower()
    if text in ('true', '1', 'yes'):
        return True
    if text in ('false', '0', 'no'):
        return False
    raise LaunchArgumentError(f'launch argument {name}:={value}: give true or false')


def _rmw_fastrtps_major() -> int | None:
    """Major version of the installed rmw_fastrtps_cpp (>= 9: Fast DDS 3), or None if not found."""
    try:
        from ament_index_python.packages import get_package_share_directory
        with open(os.path.join(get_package_share_directory('rmw_fastrtps_cpp'), 'package.xml')) as f:
            text = f.read()
    except (ImportError, LookupError, OSError):
        pass
    else:
        start = text.find('<version>')
        if start >= 0:
            return int(text[start + len('<version>'):].split('.', 1)[0])
    try:
        from importlib.metadata import PackageNotFoundError, version
        return int(version('ros-rmw-fastrtps-cpp').split('.', 1)[0])
    except (ImportError, PackageNotFoundError, ValueError):
        return None


def large_data_env(profile: str, environ: dict | None = None, rmw_major: int | None = None) -> dict[str, str]:
    """Environment variables that make Fast DDS use ``profile`` (shared memory with a 32 MB segment), or {} when
    the environment already chooses a profile or builtin transports. Only the variable name the installed
    Fast DDS reads is set (no deprecation warning under Kilted)."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in PROFILE_VARS):
        return {}
    if rmw_major is None:
        rmw_major = _rmw_fastrtps_major()
    old_fastdds = (rmw_major < 9 if rmw_major is not None
                   else environ.get('ROS_DISTRO', '') in FASTRTPS_NAME_DISTROS)
    return {'FASTRTPS_DEFAULT_PROFILES_FILE' if old_fastdds else 'FASTDDS_DEFAULT_PROFILES_FILE': profile}


def default_camera_info_topic(image_topic: str) -> str:
    """The image_transport convention: camera_info beside the image topic (/cam/image_raw -> /cam/camera_info)."""
    head = image_topic.rstrip('/').rpartition('/')[0]
    return f'{head}/camera_info' if head or image_topic.startswith('/') else 'camera_info'


def load_cameras(path: str) -> list[dict]:
    """Read a camera list (YAML: ``cameras: [{namespace, image_topic, camera_info_topic, model_path,
    input_mode, parameters}, ...]``); namespace and image_topic are required, namespaces unique."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise CameraListError(f'camera list {path}: cannot read it ({exc.strerror})') from None
    except yaml.YAMLError as exc:
        raise CameraListError(f'camera list {path}: not valid YAML ({str(exc).splitlines()[0]})') from None
    cameras = data.get('cameras') if isinstance(data, dict) else None
    if not isinstance(cameras, list) or not cameras:
        raise CameraListError(f'camera list {path}: needs a non-empty list under the key "cameras"')
    seen = set()
    result = []
    for i, cam in enumerate(cameras):
        where = f'camera list {path}, entry {i}'
        if not isinstance(cam, dict):
            raise CameraListError(f'{where}: must be a mapping, got {cam!r}')
        unknown = set(cam) - CAMERA_KEYS
        if unknown:
            raise CameraListError(f'{where}: unknown key(s) {", ".join(sorted(unknown))} '
                                  f'(known: {", ".join(sorted(CAMERA_KEYS))})')
        for key in ('namespace', 'image_topic'):
            if not isinstance(cam.get(key), str) or not cam[key].strip('/'):
                raise CameraListError(f'{where}: "{key}" must be a non-empty string, got {cam.get(key)!r}')
        namespace = cam['namespace'].strip('/')   # 'a' and '/a' are the same namespace
        if namespace in seen:
            raise CameraListError(f'{where}: namespace {cam["namespace"]!r} used twice')
        seen.add(namespace)
        if cam.get('input_mode', 'raw') not in ('raw', 'compressed'):
            raise CameraListError(f'{where}: input_mode must be raw or compressed, got {cam["input_mode"]!r}')
        if not isinstance(cam.get('parameters', {}), dict):
            raise CameraListError(f'{where}: "parameters" must be a mapping, got {cam["parameters"]!r}')
        model = cam.get('model_path', '')
        if model and not os.path.isabs(model):
            model = os.path.join(os.path.dirname(os.path.abspath(path)), model)
        if model and not os.path.isfile(model):
            raise CameraListError(f'{where}: model_path {model} does not exist')
        result.append({'namespace': cam['namespace'], 'image_topic': cam['image_topic'],
                       'camera_info_topic': cam.get('camera_info_topic')
                       or default_camera_info_topic(cam['image_topic']),
                       'model_path': model, 'input_mode': cam.get('input_mode', ''),
                       'parameters': dict(cam.get('parameters', {}))})
    return result


def node_action(*, namespace: str, image_topic: str, camera_info_topic: str, params_file: str,
                model_path: str = '', input_mode: str = '', parameters: dict | None = None,
                lifecycle: bool = False, name: str = 'segmentation_node') -> 'Node':
    """The launch_ros action for one segmentation node. Values from ``params_file`` hold unless the caller gives
    one (model_path, input_mode non-empty; ``parameters``)."""
    from launch_ros.actions import LifecycleNode, Node

    if not os.path.isfile(params_file):   # launch_ros would only warn and start the node on built-in defaults
        raise LaunchArgumentError(f'launch argument params_file:={params_file}: not a file')
    overrides = dict(parameters or {})
    if model_path:
        overrides['model_path'] = model_path
    if input_mode:
        overrides['input_mode'] = input_mode
    node_class, executable = (LifecycleNode, 'segmentation_lifecycle_node') if lifecycle else \
        (Node, 'segmentation_node')
    return node_class(
        package=PACKAGE, executable=executable, name=name, namespace=namespace, output='screen',
        emulate_tty=True, parameters=[params_file] + ([overrides] if overrides else []),
        remappings=[('image', image_topic), ('image/compressed', image_topic + '/compressed'),
                    ('camera_info', camera_info_topic)])
