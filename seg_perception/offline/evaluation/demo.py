"""``seg-perception demo``: the node on a bag, as on a robot, with what it publishes written to a folder.

Starts ``segmentation_node`` in its own process (the shipped default model unless ``--model``), replays the
bag's camera images over DDS at the recorded rate (the serialized CDR messages as they are in the bag), and
records what comes back: per-frame PNGs (input | colour mask | confidence), the node's diagnostics, the
measured output rate and latency, and mIoU against the bag's ground-truth labels when it has them.
Needs the ROS 2 Python packages (``pip install .[ros]`` or a sourced ROS 2), not torch.
"""
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np

from ...paths import default_model_path, find_share_file
from ...runtime.imgmsg import image_to_array
from ..data import bags
from .metrics import ConfusionMatrix, metrics_table

DEFAULT_BAG = 'samples/scenes_sample'


def add_arguments(parser):
    parser.add_argument('--bag', default=None, help=f'rosbag2 folder (default: the shipped {DEFAULT_BAG})')
    parser.add_argument('--model', default='', help='ONNX model (default: the shipped default model)')
    parser.add_argument('--image-topic', default=bags.TOPICS['image'][0])
    parser.add_argument('--gt-topic', default=bags.TOPICS['labels'][0],
                        help='ground-truth label topic for mIoU (skipped if the bag lacks it)')
    parser.add_argument('--out', default='out/demo', help='folder for the PNGs and the summary')
    parser.add_argument('--rate', type=float, default=1.0, help='replay speed (1 = as recorded)')
    parser.add_argument('--overlay', action='store_true', help='ask the node for the colour overlay')
    parser.add_argument('--timeout', type=float, default=120.0, help='give up after this many seconds')


def _dds_env():
    """Environment for both processes: the large-data Fast DDS profile unless the user chose one."""
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    if not any(env.get(k) for k in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                                    'FASTDDS_BUILTIN_TRANSPORTS')):
        profile = find_share_file('config', 'fastdds_large_data.xml')
        if profile:
            env['FASTDDS_DEFAULT_PROFILES_FILE'] = profile
    return env


def _start_node(model, image_topic, overlay, env):
    params = find_share_file('config', 'segment.yaml')
    cmd = [sys.executable, '-m', 'seg_perception.node', '--ros-args']
    if params:
        cmd += ['--params-file', params]
    cmd += ['-p', f'model_path:={model}', '-p', f'overlay:={str(overlay).lower()}', '-r', f'image:={image_topic}']
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stamp_ns(header):
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def run(args):
    bag = args.bag or find_share_file(*DEFAULT_BAG.split('/')) or DEFAULT_BAG
    if not os.path.exists(bag):
        print(f'bag not found: {bag}', file=sys.stderr)
        return 2
    model = args.model or default_model_path()
    if not os.path.isfile(model):
        print(f'model not found: {model}', file=sys.stderr)
        return 2
    frames = list(bags.read_raw_messages(bag, [args.image_topic]))
    if not frames:
        print(f'{bag} has no messages on {args.image_topic}', file=sys.stderr)
        return 2
    gt = {}
    for stamp, _, label in bags.iter_bag_images(bag, args.gt_topic) if _has_topic(bag, args.gt_topic) else ():
        gt[stamp] = label
    env = _dds_env()
    os.environ.update({k: v for k, v in env.items() if k.startswith('FASTDDS')})
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    proc = _start_node(model, args.image_topic, args.overlay, env)
    rclpy.init()
    node = rclpy.create_node('seg_perception_demo')
    received, diagnostics, sent_at = {}, [], {}
    inputs = {}

    def on_output(kind):
        def cb(msg):
            received.setdefault(_stamp_ns(msg.header), {})[kind] = (msg, time.monotonic())
        return cb
    for kind in ('labels', 'color', 'confidence'):
        node.create_subscription(Image, f'segmentation/{kind}', on_output(kind), 10)
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    pub = node.create_publisher(Image, args.image_topic, qos_profile_sensor_data)
    deadline = time.monotonic() + args.timeout
    try:
        while pub.get_subscription_count() == 0 or node.count_publishers('segmentation/color') == 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError('the node did not come up:\n' + _drain(proc))
            rclpy.spin_once(node, timeout_sec=0.1)
        settle = time.monotonic() + 1.0   # discovery is not symmetric: let the node's side match our writer too
        while time.monotonic() < settle:
            rclpy.spin_once(node, timeout_sec=0.05)
        t0_bag, t0 = frames[0][3], time.monotonic()
        for _, _, raw, t_bag in frames:
            due = t0 + (t_bag - t0_bag) / 1e9 / args.rate
            while time.monotonic() < due:
                rclpy.spin_once(node, timeout_sec=max(0.0, min(0.01, due - time.monotonic())))
            stamp = bags.header_stamp(raw)
            sent_at[stamp] = time.monotonic()
            inputs[stamp] = raw
            pub.publish(raw)
        t_last = time.monotonic()
        while time.monotonic() < min(deadline, t_last + 3.0) and len(_complete(received)) < len(frames):
            rclpy.spin_once(node, timeout_sec=0.05)
        diag_deadline = time.monotonic() + 1.5
        while time.monotonic() < diag_deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        proc.terminate()
        log = _drain(proc)
    summary = _write_outputs(args.out, bag, model, frames, inputs, received, sent_at, gt, diagnostics, log)
    print(summary)
    return 0 if _complete(received) else 1


def _has_topic(bag, topic):
    return any(True for _ in bags.read_raw_messages(bag, [topic]))


def _drain(proc):
    try:
        return proc.communicate(timeout=10)[0] or ''
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0] or ''


def _complete(received):
    return [s for s, r in received.items() if {'labels', 'color', 'confidence'} <= set(r)]


def _last_diagnostics(diagnostics):
    for arr in reversed(diagnostics):
        for status in arr.status:
            if 'segmentation' in status.name:
                return {kv.key: kv.value for kv in status.values}
    return {}


def _write_outputs(out, bag, model, frames, inputs, received, sent_at, gt, diagnostics, log):
    os.makedirs(os.path.join(out, 'frames'), exist_ok=True)
    os.makedirs(os.path.join(out, 'labels'), exist_ok=True)
    done = sorted(_complete(received))
    delays, names, cm = [], None, None
    diag = _last_diagnostics(diagnostics)
    for i, stamp in enumerate(done):
        r = received[stamp]
        rgb = bags.decode(inputs[stamp], 'sensor_msgs/msg/Image')[2]
        labels = image_to_array(r['labels'][0])
        color = image_to_array(r['color'][0])
        conf = image_to_array(r['confidence'][0])
        delays.append((r['color'][1] - sent_at[stamp]) * 1e3)
        panel = np.concatenate([rgb, color, cv2.cvtColor(conf, cv2.COLOR_GRAY2RGB)], axis=1)
        cv2.imwrite(os.path.join(out, 'frames', f'{i:04d}.png'), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(out, 'labels', f'{i:04d}.png'), labels)
        if stamp in gt:
            if cm is None:
                from ...runtime.engine import SegmentationEngine
                names = SegmentationEngine(model).names
                cm = ConfusionMatrix(len(names))
            cm.update(labels, gt[stamp])
    span = (max(r['color'][1] for r in received.values()) - min(sent_at.values())) if done else 0.0
    result = {
        'bag': bag, 'model': model, 'frames_sent': len(frames), 'frames_segmented': len(done),
        'output_rate_hz': round(len(done) / span, 2) if span > 0 else None,
        'input_rate_hz': round((len(frames) - 1) / ((frames[-1][3] - frames[0][3]) / 1e9), 2)
        if len(frames) > 1 else None,
        'publish_to_output_ms_p50': round(float(np.percentile(delays, 50)), 2) if delays else None,
        'publish_to_output_ms_p90': round(float(np.percentile(delays, 90)), 2) if delays else None,
        'node_diagnostics': diag,
    }
    if cm is not None:
        result['metrics'] = cm.compute(names)
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, 'node.log'), 'w') as f:
        f.write(log)
    lines = ['# seg_perception demo', '', f'bag: `{bag}`  model: `{os.path.basename(model)}`', '',
             '| measure | value |', '|---|---|',
             f'| frames sent / segmented | {len(frames)} / {len(done)} |',
             f'| input rate (Hz) | {result["input_rate_hz"]} |',
             f'| output rate (Hz) | {result["output_rate_hz"]} |',
             f'| node latency p50 / p90 / p99 (ms) | {diag.get("latency_p50_ms")} / {diag.get("latency_p90_ms")} '
             f'/ {diag.get("latency_p99_ms")} |',
             f'| publish -> colour received p50 / p90 (ms) | {result["publish_to_output_ms_p50"]} / '
             f'{result["publish_to_output_ms_p90"]} |',
             f'| dropped (newest-frame policy) | {diag.get("frames_dropped")} |',
             f'| provider | {diag.get("provider")} |']
    if cm is not None:
        lines += ['', '## Against the bag\'s ground truth', '', metrics_table(result['metrics'])]
    lines += ['', f'Per-frame panels (input | colour | confidence): `{os.path.join(out, "frames")}/`']
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(text)
    return text
