"""Rules shared by the launch files (seg_perception/launch_support.py): Fast DDS variables, camera lists."""
import pytest

from seg_perception.launch_support import (
    CameraListError,
    LaunchArgumentError,
    default_camera_info_topic,
    large_data_env,
    launch_flag,
    load_cameras,
)


def test_large_data_env_sets_only_the_name_this_fast_dds_reads():
    assert large_data_env('/p.xml', {}, rmw_major=9) == {'FASTDDS_DEFAULT_PROFILES_FILE': '/p.xml'}   # Kilted
    assert large_data_env('/p.xml', {}, rmw_major=8) == {'FASTRTPS_DEFAULT_PROFILES_FILE': '/p.xml'}  # Jazzy
    assert large_data_env('/p.xml', {'ROS_DISTRO': 'humble'}) in (
        {'FASTRTPS_DEFAULT_PROFILES_FILE': '/p.xml'}, {'FASTDDS_DEFAULT_PROFILES_FILE': '/p.xml'})
    for preset in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_BUILTIN_TRANSPORTS'):
        assert large_data_env('/p.xml', {preset: 'x'}, rmw_major=9) == {}


def test_large_data_env_detects_the_installed_rmw():
    pytest.importorskip('rclpy', reason='ROS 2 rclpy not installed')
    # the PyPI wheels here are Kilted (rmw_fastrtps 9, Fast DDS 3): the new name, no deprecation warning
    assert large_data_env('/p.xml', {}) == {'FASTDDS_DEFAULT_PROFILES_FILE': '/p.xml'}


@pytest.mark.parametrize('image, info', [('/camera/image_raw', '/camera/camera_info'), ('image_raw', 'camera_info'),
                                         ('/image_raw', '/camera_info'), ('cam/image', 'cam/camera_info')])
def test_default_camera_info_topic(image, info):
    assert default_camera_info_topic(image) == info


def test_load_cameras_resolves_models_and_defaults(tmp_path):
    (tmp_path / 'a.onnx').write_bytes(b'x')
    f = tmp_path / 'cams.yaml'
    f.write_text('cameras:\n  - {namespace: front, image_topic: /front/image_raw, model_path: a.onnx}\n'
                 '  - {namespace: rear, image_topic: /rear/image, input_mode: compressed,'
                 ' camera_info_topic: /rear/info, parameters: {intra_op_threads: 1}}\n')
    front, rear = load_cameras(str(f))
    assert front == {'namespace': 'front', 'image_topic': '/front/image_raw', 'camera_info_topic': '/front/camera_info',
                     'model_path': str(tmp_path / 'a.onnx'), 'input_mode': '', 'parameters': {}}
    assert rear['camera_info_topic'] == '/rear/info' and rear['input_mode'] == 'compressed'
    assert rear['model_path'] == '' and rear['parameters'] == {'intra_op_threads': 1}


def test_shipped_camera_list_loads():
    cams = load_cameras('config/cameras.yaml')
    assert [c['namespace'] for c in cams] == ['front', 'rear'] and all(c['model_path'] for c in cams)


@pytest.mark.parametrize('text, message', [
    ('cameras: []', 'needs a non-empty list under the key "cameras"'),
    ('[1, 2]', 'needs a non-empty list'),
    ('cameras: [{image_topic: /a}]', 'entry 0: "namespace" must be a non-empty string, got None'),
    ('cameras: [{namespace: a, image_topic: /a}, {namespace: a, image_topic: /b}]',
     "entry 1: namespace 'a' used twice"),
    ('cameras: [{namespace: a, image_topic: /a}, {namespace: /a/, image_topic: /b}]',
     "entry 1: namespace '/a/' used twice"),
    ('cameras: [{namespace: a, image_topic: /a, fps: 3}]', 'entry 0: unknown key(s) fps'),
    ('cameras: [{namespace: a, image_topic: /a, input_mode: jpeg}]',
     "input_mode must be raw or compressed, got 'jpeg'"),
    ('cameras: [{namespace: a, image_topic: /a, model_path: nope.onnx}]', 'nope.onnx does not exist'),
    ('cameras: [{namespace: a, image_topic: /a, parameters: 3}]', '"parameters" must be a mapping, got 3'),
    ('cameras: [', 'not valid YAML'),
])
def test_bad_camera_lists_are_named_in_one_line(tmp_path, text, message):
    f = tmp_path / 'cams.yaml'
    f.write_text(text)
    with pytest.raises(CameraListError) as err:
        load_cameras(str(f))
    assert message in str(err.value) and str(f) in str(err.value) and '\n' not in str(err.value)


def test_missing_camera_list(tmp_path):
    with pytest.raises(CameraListError, match='cannot read it'):
        load_cameras(str(tmp_path / 'none.yaml'))


def test_launch_flags_are_true_or_false_never_a_silent_false():
    assert [launch_flag('lifecycle', v) for v in ('true', 'True', '1', 'yes', 'false', 'FALSE', '0', 'no')] == \
        [True] * 4 + [False] * 4
    with pytest.raises(LaunchArgumentError, match='launch argument large_data:=maybe: give true or false'):
        launch_flag('large_data', 'maybe')
