"""``seg-perception replay`` on small rendered bags: mcap and sqlite3, raw and compressed, offline and live, one
and two models; topic discovery and the mistakes users make with their own bags."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from seg_perception.offline import cli
from seg_perception.offline.data import bags
from seg_perception.offline.data.render import render_frames
from seg_perception.offline.evaluation import replay

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / 'models' / 'topformer_tiny_scenes.onnx'
TOKENPASS = ROOT / 'models' / 'tokenpass_vit_mini_scenes.onnx'
COVER = ROOT / 'models' / 'topformer_tiny_scenes_cover.onnx'
FRAMES = 8


@pytest.fixture(scope='module')
def frames():
    return list(render_frames(FRAMES, seed=5, width=160, height=120, seq_len=4))


@pytest.fixture(scope='module')
def mcap_bag(tmp_path_factory, frames):
    """mcap (zstd chunks): raw rgb8 camera + its jpeg twin, CameraInfo, labels, occupancy."""
    path = tmp_path_factory.mktemp('bags') / 'mcap_raw'
    bags.write_bag(str(path), frames, storage='mcap', raw=True, jpeg=True, rate_hz=10.0)
    return path


@pytest.fixture(scope='module')
def sqlite_bag(tmp_path_factory, frames):
    """sqlite3: jpeg camera only (no raw topic), CameraInfo, labels, occupancy."""
    path = tmp_path_factory.mktemp('bags') / 'sqlite_jpeg'
    bags.write_bag(str(path), frames, storage='sqlite3', raw=False, jpeg=True, rate_hz=10.0)
    return path


@pytest.fixture(scope='module')
def second_model(tmp_path_factory):
    from onnx_models import make_tiny_model
    return make_tiny_model(str(tmp_path_factory.mktemp('models') / 'tiny_b.onnx'), seed=7)


def run_cli(argv, capfd):
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def test_topics_found_by_type_on_the_sample_bag():
    topics = replay.resolve_topics(ROOT / 'samples' / 'scenes_sample')
    assert (topics.image, topics.gt, topics.camera_info, topics.occupancy) == (
        '/camera/image_raw', '/ground_truth/labels', '/camera/camera_info', '/ground_truth/occupancy')
    assert topics.skipped() == {'/camera/image_raw/compressed': {
        'type': 'sensor_msgs/msg/CompressedImage', 'messages': 40, 'known_type': True}}


def test_offline_two_models_mcap_raw(mcap_bag, tmp_path, capfd):
    """The shipped TopFormer and the token-pass ViT on the same frames: one table, shared plots, MACs per frame;
    accuracy equal to `evaluate` on the same bag (the same engine, the same pairing)."""
    from seg_perception.offline.evaluation.evaluate import evaluate

    out = tmp_path / 'report'
    code, stdout, err = run_cli(['replay', mcap_bag, '--model', SHIPPED, '--model', TOKENPASS, '--out', out], capfd)
    assert code == 0, err
    report = json.loads((out / 'report.json').read_text())
    assert report['frames'] == FRAMES and report['topics']['image'] == '/camera/image_raw'
    assert report['topics']['gt'] == '/ground_truth/labels'
    assert report['skipped_topics']['/camera/image_raw/compressed']['messages'] == FRAMES
    top, tp = report['models']
    assert (top['name'], tp['name']) == ('topformer_tiny_scenes', 'tokenpass_vit_mini_scenes')
    for m in (top, tp):
        assert len(m['per_frame']) == FRAMES and m['frames_scored'] == FRAMES
        assert m['latency_ms']['p50'] > 0 and m['latency_ms']['p99'] >= m['latency_ms']['p50']
        assert all(0 <= r['mIoU'] <= 1 and r['difficulty'] > 0 for r in m['per_frame'])
        reference = evaluate(m['path'], str(mcap_bag), image_topic='/camera/image_raw',
                             gt_topic='/ground_truth/labels', progress=False, warmup=0)
        assert m['metrics']['mIoU'] == pytest.approx(reference['mIoU'], abs=1e-9)
        assert m['metrics']['aAcc'] == pytest.approx(reference['aAcc'], abs=1e-9)
    assert top['gmacs_static'] > 0 and top['gmacs_per_frame'] is None
    assert 0 < tp['gmacs_per_frame']['mean'] <= tp['gmacs_static']
    assert all(0 < r['gmacs'] <= tp['gmacs_static'] for r in tp['per_frame'])
    assert 0 < tp['kept_fraction_mean'] <= 1
    md = (out / 'report.md').read_text()
    assert '| topformer_tiny_scenes | topformer_tiny |' in md and '| tokenpass_vit_mini_scenes |' in md
    # costmap metrics: CameraInfo + /tf pose + ground-truth occupancy on every frame
    assert report['topics']['occupancy'] == '/ground_truth/occupancy' and report['occupancy']['frames_skipped'] == 0
    for name in ('topformer_tiny_scenes', 'tokenpass_vit_mini_scenes'):
        scores = report['occupancy']['models'][name]
        assert scores['frames'] == FRAMES and scores['visible_cells'] > 0
        assert 0 <= scores['false_free_rate'] <= 1 and 0 <= scores['free_recall'] <= 1
        assert f'| {name} | {FRAMES} |' in md
        assert (out / 'costmap' / name / 'occupancy' / '0000.png').is_file()
    assert f'{100 * top["metrics"]["mIoU"]:.1f}' in md
    for name in ('latency.png', 'cost_vs_difficulty.png', 'iou_per_class.png', 'miou_per_frame.png',
                 'confusion_topformer_tiny_scenes.png', 'confusion_tokenpass_vit_mini_scenes.png', 'strip.png'):
        assert cv2.imread(str(out / name)) is not None, name
        assert f']({name})' in md, name
    strip = cv2.imread(str(out / 'strip.png'))
    assert strip.shape[1] == 4 * 320           # input | two models | ground truth, 240 px high tiles
    video = cv2.VideoCapture(str(out / 'overlay.mp4'))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    video.release()


def test_merge_scores_covered_floor_as_floor(mcap_bag, tmp_path, capfd):
    """The covered-floor model on a 6-class bag: with --merge its covered_floor pixels count as floor (the same
    accuracy as `evaluate --merge` on the same bag); the costmap keeps the class; bad merges exit 2."""
    from seg_perception.offline.evaluation.evaluate import evaluate

    base = ['replay', mcap_bag, '--model', COVER, '--model', SHIPPED, '--limit', 4, '--no-video']
    code, _, err = run_cli([*base, '--merge', 'covered_floor:floor', '--out', tmp_path / 'merged'], capfd)
    assert code == 0, err
    cover, default = json.loads((tmp_path / 'merged' / 'report.json').read_text())['models']
    assert cover['merged'] == {'covered_floor': 'floor'} and default['merged'] == {}
    covered = cover['classes'].index('covered_floor')
    matrix = np.array(cover['confusion_matrix'])
    assert matrix[:, covered].sum() == 0 and cover['metrics']['IoU']['covered_floor'] is None
    reference = evaluate(str(COVER), str(mcap_bag), image_topic='/camera/image_raw', gt_topic='/ground_truth/labels',
                         limit=4, progress=False, warmup=0, merge={'covered_floor': 'floor'})
    assert cover['metrics']['mIoU'] == pytest.approx(reference['mIoU'], abs=1e-9)
    assert '| topformer_tiny_scenes_cover (covered_floor scored as floor) |' in (tmp_path / 'merged' / 'report.md'
                                                                               ).read_text()
    code, _, err = run_cli([*base, '--out', tmp_path / 'plain'], capfd)
    assert code == 0, err
    plain = json.loads((tmp_path / 'plain' / 'report.json').read_text())['models'][0]
    assert np.array(plain['confusion_matrix'])[:, covered].sum() > 0      # without it: counted as wrong
    assert plain['metrics']['mIoU'] < cover['metrics']['mIoU']
    # ... and the report says so, with the way out; the merged run and the 6-class model have nothing to say
    pixels = int(np.array(plain['confusion_matrix'])[:, covered].sum())
    assert plain['absent_from_truth'] == {'covered_floor': pixels} and cover['absent_from_truth'] == {}
    assert default['absent_from_truth'] == {}
    text = (tmp_path / 'plain' / 'report.md').read_text()
    assert f'`covered_floor` ({pixels} pixels)' in text and '--merge covered_floor:floor' in text
    assert 'never has' not in (tmp_path / 'merged' / 'report.md').read_text()
    for merge, words in (('covered_floor:sky', "no class 'sky'"), ('nope:floor', "no model has a class 'nope'"),
                         ('covered_floor', 'expected MODEL_CLASS:DATASET_CLASS')):
        code, _, err = run_cli([*base, '--merge', merge, '--out', tmp_path / 'bad'], capfd)
        assert code == 2 and words in err and 'Traceback' not in err, err
    # a merged class listed before a kept one: the bag's ids would no longer be the model's
    from seg_perception.offline.graph.onnx_graph import read_metadata, set_metadata
    proto = onnx.load(str(COVER))
    meta = read_metadata(proto)
    order = [0, 1, 2, 6, 3, 4, 5]
    meta['names'] = [meta['names'][i] for i in order]
    meta['palette'] = [meta['palette'][i] for i in order]
    set_metadata(proto, meta)
    onnx.save(proto, str(tmp_path / 'reordered.onnx'))
    code, _, err = run_cli(['replay', mcap_bag, '--model', tmp_path / 'reordered.onnx', '--limit', 2, '--no-video',
                            '--merge', 'covered_floor:floor', '--out', tmp_path / 'bad'], capfd)
    assert code == 2 and "lists 'covered_floor' before classes it keeps" in err and 'Traceback' not in err, err


def test_offline_sqlite_compressed_only(sqlite_bag, tiny_model, second_model, tmp_path, capfd):
    out = tmp_path / 'report'
    code, _, err = run_cli(['replay', sqlite_bag, '--model', tiny_model, '--model', second_model, '--out', out,
                            '--no-video', '--limit', 5], capfd)
    assert code == 0, err
    report = json.loads((out / 'report.json').read_text())
    assert report['topics']['image'] == '/camera/image_raw/compressed'
    assert report['topics']['image_type'] == 'sensor_msgs/msg/CompressedImage'
    assert report['frames'] == 5 and [m['name'] for m in report['models']] == ['tiny', 'tiny_b']
    assert report['models'][0]['metrics']['mIoU'] != report['models'][1]['metrics']['mIoU']
    assert not (out / 'overlay.mp4').exists() and 'No video' in (out / 'report.md').read_text()
    # the same folder again: a replay report folder is reused
    assert run_cli(['replay', sqlite_bag, '--model', tiny_model, '--out', out, '--limit', 2], capfd)[0] == 0


def test_replay_needs_neither_torch_nor_onnx(mcap_bag, tiny_model, tmp_path):
    """What `make demo` installs ('.[ros,replay]') is enough: no torch, pybullet or onnx behind replay."""
    code = ('import sys\n'
            'for name in ("torch", "pybullet", "albumentations", "onnx"):\n'
            '    sys.modules[name] = None\n'
            'from seg_perception.offline import cli\n'
            f'sys.exit(cli.main(["replay", {str(mcap_bag)!r}, "--model", {tiny_model!r}, "--out", '
            f'{str(tmp_path / "out")!r}, "--limit", "2", "--no-video"]))\n')
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / 'out' / 'report.json').read_text())['frames'] == 2


def test_frames_without_ground_truth_are_replayed_and_counted(frames, tiny_model, tmp_path, capfd):
    partial = [dict(f) if i % 2 == 0 else {k: v for k, v in f.items() if k != 'label'} for i, f in enumerate(frames)]
    bag = tmp_path / 'partial'
    bags.write_bag(str(bag), partial, storage='mcap')
    source = replay.FrameSource(replay.resolve_topics(bag))
    got = list(source)
    assert [f.index for f in got] == list(range(FRAMES))
    assert [f.label is not None for f in got] == [i % 2 == 0 for i in range(FRAMES)]
    assert source.unmatched['gt'] == FRAMES // 2
    for f, original in zip(got, frames):
        assert np.array_equal(f.image, original['image'])
        if f.label is not None:
            assert np.array_equal(f.label, original['label'])
    out = tmp_path / 'report'
    assert run_cli(['replay', bag, '--model', tiny_model, '--out', out], capfd)[0] == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['frames_without']['gt'] == FRAMES // 2 and report['models'][0]['frames_scored'] == FRAMES // 2


def test_undecodable_frames_are_left_out_and_counted(frames, tiny_model, tmp_path, capfd):
    from rosbags.rosbag2 import StoragePlugin, Writer
    ts = bags.typestore()
    bag = tmp_path / 'broken_jpeg'
    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection('/cam/image/compressed', 'sensor_msgs/msg/CompressedImage', typestore=ts)
        for i, f in enumerate(frames[:4]):
            t = bags.DEFAULT_START_NS + i * 100_000_000
            msg = bags.compressed_msg(f['image'], t)
            if i == 2:
                msg = ts.types['sensor_msgs/msg/CompressedImage'](header=msg.header, format='jpeg',
                                                                  data=np.frombuffer(b'not a jpeg', np.uint8))
            writer.write(cam, t, ts.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'))
    out = tmp_path / 'report'
    code, _, err = run_cli(['replay', bag, '--model', tiny_model, '--out', out, '--no-video'], capfd)
    assert code == 0, err
    report = json.loads((out / 'report.json').read_text())
    assert report['frames'] == 3 and len(report['models'][0]['per_frame']) == 3
    (reason, count), = report['frames_unusable'].items()
    assert count == 1 and 'could not decode' in reason
    assert 'Left out' in (out / 'report.md').read_text()


def test_repeated_header_stamps_pair_by_bag_time(frames, tiny_model, tmp_path, capfd):
    """A driver that leaves header stamps at 0: frames pair with their labels by bag time, and the live player
    stamps the messages it sends with that time."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from seg_perception.offline.evaluation.replay_live import restamp
    ts = bags.typestore()
    bag = tmp_path / 'zero_stamps'
    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.SQLITE3) as writer:
        cam = writer.add_connection('/cam/image_raw', 'sensor_msgs/msg/Image', typestore=ts)
        gt = writer.add_connection('/cam/labels', 'sensor_msgs/msg/Image', typestore=ts)
        for i, f in enumerate(frames[:4]):
            t = bags.DEFAULT_START_NS + i * 100_000_000
            writer.write(cam, t, ts.serialize_cdr(bags.image_msg(f['image'], 'rgb8', 0), 'sensor_msgs/msg/Image'))
            writer.write(gt, t + 1_000_000, ts.serialize_cdr(bags.image_msg(f['label'], 'mono8', 0),
                                                             'sensor_msgs/msg/Image'))
    source = replay.FrameSource(replay.resolve_topics(bag))
    assert source.restamped
    got = list(source)
    assert [f.stamp_ns for f in got] == [bags.DEFAULT_START_NS + i * 100_000_000 for i in range(4)]
    for f, original in zip(got, frames):
        assert np.array_equal(f.label, original['label']) and np.array_equal(f.image, original['image'])
    raw = ts.serialize_cdr(bags.image_msg(frames[0]['image'], 'rgb8', 0), 'sensor_msgs/msg/Image')
    assert bags.header_stamp(restamp(raw, got[1].stamp_ns)) == got[1].stamp_ns
    out = tmp_path / 'report'
    assert run_cli(['replay', bag, '--model', tiny_model, '--out', out, '--no-video'], capfd)[0] == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['restamped'] and report['models'][0]['frames_scored'] == 4


def _two_camera_bag(path, frames):
    """Two colour cameras, labels, and a topic of a type the reader does not know."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    ts = bags.typestore()
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.SQLITE3) as writer:
        left = writer.add_connection('/left/image_raw', 'sensor_msgs/msg/Image', typestore=ts)
        right = writer.add_connection('/right/image_raw', 'sensor_msgs/msg/Image', typestore=ts)
        labels = writer.add_connection('/left/semantic', 'sensor_msgs/msg/Image', typestore=ts)
        blob = writer.add_connection('/vendor/blob', 'vendor_msgs/msg/Blob', msgdef='uint8[] data',
                                     rihs01='RIHS01_' + '0' * 64)
        for i, f in enumerate(frames[:3]):
            t = bags.DEFAULT_START_NS + i * 100_000_000
            for conn in (left, right):
                writer.write(conn, t, ts.serialize_cdr(bags.image_msg(f['image'], 'bgr8', t), 'sensor_msgs/msg/Image'))
            writer.write(labels, t, ts.serialize_cdr(bags.image_msg(f['label'], 'mono8', t), 'sensor_msgs/msg/Image'))
            writer.write(blob, t, b'\x00\x01\x00\x00\x02\x00\x00\x00\x07\x07')


def test_bags_users_bring(frames, tiny_model, tmp_path, capfd):
    bag = tmp_path / 'two_cameras'
    _two_camera_bag(bag, frames)
    code, _, err = run_cli(['replay', bag, '--model', tiny_model, '--out', tmp_path / 'a'], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    assert 'several camera image topics' in err and '/left/image_raw' in err and '/right/image_raw' in err
    assert '--image-topic' in err

    code, _, err = run_cli(['replay', bag, '--model', tiny_model, '--image-topic', '/left/image_raw',
                            '--gt-topic', '/left/labels', '--out', tmp_path / 'b'], capfd)
    assert code == 2 and 'no topic /left/labels' in err and '/left/semantic (sensor_msgs/msg/Image)' in err

    out = tmp_path / 'c'
    code, _, err = run_cli(['replay', bag, '--model', tiny_model, '--image-topic', '/left/image_raw', '--out', out],
                           capfd)
    assert code == 0, err
    report = json.loads((out / 'report.json').read_text())
    assert report['topics']['gt'] == '/left/semantic'          # found by encoding and name
    assert report['skipped_unknown_type_messages'] == 3
    assert report['skipped_topics']['/vendor/blob'] == {'type': 'vendor_msgs/msg/Blob', 'messages': 3,
                                                        'known_type': False}
    assert report['skipped_messages'] == 6
    assert '3 of unknown types' in (out / 'report.md').read_text()


# ----------------------------------------------------------------------------------------------- live
needs_ros = pytest.mark.skipif(importlib.util.find_spec('rclpy') is None,
                               reason='ROS 2 rclpy not installed (pip install .[ros])')


def _subprocess_env():
    return {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}


@needs_ros
def test_live_compressed_two_models_through_the_node_with_record(sqlite_bag, tiny_model, second_model, tmp_path):
    """Two models, one node process each, on the jpeg topic (input_mode compressed): frames back with their stamps,
    labels identical to the offline engine's, both nodes' outputs recorded to one new bag."""
    out, record = tmp_path / 'live', tmp_path / 'outputs_bag'
    proc = subprocess.run([sys.executable, '-m', 'seg_perception.offline.cli', 'replay', str(sqlite_bag),
                           '--model', tiny_model, '--model', second_model, '--live', '--record', str(record),
                           '--out', str(out), '--no-video', '--timeout', '60'],
                          env=_subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / 'report.json').read_text())
    assert [r['model'] for r in report['live']] == ['tiny', 'tiny_b']
    try:
        from rclpy.subscription import MessageInfo
        gids_given = 'publisher_gid' in MessageInfo.__annotations__
    except ImportError:    # Jazzy's rclpy: message info as a plain dict, publisher GIDs not promised
        gids_given = None
    md = (out / 'report.md').read_text()
    assert 'Live: the node in its own process' in md and cv2.imread(str(out / 'live_age.png')) is not None
    recorded = {}
    for topic, *_ in bags.read_raw_messages(str(record)):
        recorded[topic] = recorded.get(topic, 0) + 1
    for live in report['live']:
        assert live['ok'] and not live['problems'], live
        assert live['frames_sent'] == FRAMES
        # the node segments the newest frame: under load it may skip some, never lose count
        assert live['labels_received'] + live['frames_dropped'] == FRAMES and live['labels_received'] >= FRAMES // 2
        assert live['stamps_kept'] and live['stamps_matched'] == live['labels_received']
        assert live['labels_equal_offline'] == live['labels_compared'] == live['labels_received']
        assert live['age_ms']['p50'] > 0 and live['output_rate_hz'] > 0
        assert 150 <= live['domain_id'] <= 232 and live['domain_id'] != int(os.environ['ROS_DOMAIN_ID'])
        assert f'{live["domain_id"]} ({live["model"]})' in md
        assert live['warmup_frames'] == 2
        assert gids_given is None or live['gid_checked'] == gids_given    # Kilted's rclpy gives publisher GIDs
        assert int(live['node_diagnostics']['frames_received']) == FRAMES + live['warmup_frames']
        assert 0 <= live['mIoU'] <= 1 and len(live['age_per_frame_ms']) == FRAMES
        assert recorded[f'/{live["model"]}/segmentation/labels'] == live['labels_received']
        assert recorded[f'/{live["model"]}/segmentation/color'] >= 1


@needs_ros
def test_live_refuses_to_mix_in_another_publisher(mcap_bag, tiny_model, tmp_path):
    """Another node publishing segmentation/labels in the replay's domain is reported; its run is left out."""
    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import Image

    domain = 233 - 1 - os.getpid() % 20
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    intruder = rclpy.create_node('intruder', context=context)
    intruder.create_publisher(Image, '/segmentation/labels', 10)
    try:
        out = tmp_path / 'mixed'
        proc = subprocess.run([sys.executable, '-m', 'seg_perception.offline.cli', 'replay', str(mcap_bag),
                               '--model', tiny_model, '--live', '--domain-id', str(domain), '--out', str(out),
                               '--no-video', '--limit', '3', '--timeout', '60'],
                              env=_subprocess_env(), capture_output=True, text=True, timeout=180)
    finally:
        intruder.destroy_node()
        rclpy.try_shutdown(context=context)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    live, = json.loads((out / 'report.json').read_text())['live']
    assert not live['ok'] and live['frames_sent'] == 0
    assert any('another publisher' in p and '/intruder' in p for p in live['problems']), live['problems']
    assert '/intruder' in (out / 'report.md').read_text()


@pytest.mark.parametrize('encoding', ['yuv422_yuy2', 'bayer_rggb8'])
def test_camera_driver_encodings(frames, tiny_model, tmp_path, capfd, encoding):
    """A bag of a USB camera's YUV 4:2:2 or a machine-vision camera's Bayer frames: found as the camera topic,
    decoded to RGB near the rendered frame (chroma subsampling and demosaicing blur edges), segmented, scored."""
    bag = tmp_path / encoding
    bags.write_bag(str(bag), frames, storage='mcap', image_encoding=encoding)
    topics = replay.resolve_topics(bag)
    assert topics.image == '/camera/image_raw'
    for f, original in zip(replay.FrameSource(topics), frames):
        error = np.abs(f.image.astype(int) - original['image']).mean()
        swapped = np.abs(f.image.astype(int) - original['image'][..., ::-1]).mean()   # red and blue exchanged
        assert f.image.shape == original['image'].shape and error < 10 and error < swapped, (error, swapped)
    out = tmp_path / 'report'
    assert run_cli(['replay', bag, '--model', tiny_model, '--out', out], capfd)[0] == 0
    assert json.loads((out / 'report.json').read_text())['models'][0]['frames_scored'] == FRAMES
