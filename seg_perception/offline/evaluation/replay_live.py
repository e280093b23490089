"""``seg-perception replay --live``: the real node in its own process, fed by the bag over DDS.

For each model: ``segmentation_node`` (``python -m seg_perception.node`` with the installed
``config/segment.yaml``) starts as a child process in a DDS domain of its own (``--domain-id``, else a random
one in which no other participant is seen; discovery limited to this machine), with the Fast DDS large-data
profile on both sides. The bag's camera messages (the serialized CDR as recorded; CompressedImage switches the
node to ``input_mode: compressed``) and CameraInfo are published at their recorded times (divided by
``--rate``); what the node publishes is taken as serialized messages with their publisher GID.

Isolation: before playing, any other publisher on the camera topic or the node's outputs is reported and the
run refused for that model; every received output must come from the started node's publisher (GID) or it is
counted as foreign and left out. Measured per model: frames sent, labels received, frames dropped, output rate,
age (camera message published -> labels received, same clock) p50/p99, whether every output kept its input's
header stamp and frame_id, labels identical to the offline pass of the same model, mIoU of the published labels
and the node's last diagnostics. ``--record OUT_BAG`` writes labels, colour and costmap (when the node
publishes one) to a new mcap bag on the input bag's time line; with several models the topics are prefixed
with the model's name.
"""
import argparse
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable

from ...launch_support import large_data_env
from ...paths import find_share_file
from ..data import bags
from .replay import COMPRESSED, TF, BagTopics, FrameSource, ModelRun, label_digest, model_names

OUTPUTS = {  # output -> (topic, message type)
    'labels': ('segmentation/labels', 'sensor_msgs/msg/Image'),
    'color': ('segmentation/color', 'sensor_msgs/msg/Image'),
    'costmap': ('segmentation/costmap', 'nav_msgs/msg/OccupancyGrid'),
}
NODE_NAME = 'replay_segmentation_node'


def dds_env(domain_id: int) -> dict:
    """Environment for the player and the node: own domain, localhost discovery, large-data Fast DDS profile."""
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    profile = find_share_file('config', 'fastdds_large_data.xml')
    if profile:   # the variable name the installed Fast DDS reads (Jazzy's 2.x: FASTRTPS_...), unless one is set
        env.update(large_data_env(profile, env))
    return env


def node_command(model: ModelRun, topics: BagTopics, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, '-m', 'seg_perception.node', '--ros-args']
    params = find_share_file('config', 'segment.yaml')
    if params:
        cmd += ['--params-file', params]
    cmd += ['-r', f'__node:={NODE_NAME}', '-p', f'model_path:={os.path.abspath(model.path)}',
            '-p', f'intra_op_threads:={int(args.threads)}']
    if args.exit_threshold is not None:
        cmd += ['-p', f'exit_threshold:={float(args.exit_threshold)}']
    if topics.image_type == COMPRESSED:
        cmd += ['-p', 'input_mode:=compressed', '-r', f'image/compressed:={topics.image}']
    else:
        cmd += ['-r', f'image:={topics.image}']
    if topics.camera_info:
        cmd += ['-r', f'camera_info:={topics.camera_info}']
    return cmd


class Session:
    """The player/recorder: one rclpy context in the replay's domain, its publishers and raw subscriptions."""

    def __init__(self, domain_id, topics, record):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('seg_perception_replay', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        image_cls = CompressedImage if topics.image_type == COMPRESSED else Image
        self.publishers = {topics.image: self.node.create_publisher(image_cls, topics.image,
                                                                    qos_profile_sensor_data)}
        if topics.camera_info:
            self.publishers[topics.camera_info] = self.node.create_publisher(CameraInfo, topics.camera_info, 10)
        tf_cls = _message_class(TF)
        for topic in topics.tf if tf_cls is not None else ():   # the camera pose, for the node's costmap
            static = topic == '/tf_static'
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)
            self.publishers[topic] = self.node.create_publisher(tf_cls, topic, qos)
        self.received = []          # (output, cdr bytes, monotonic receive time, publisher gid)
        self.diagnostics = []
        wanted = ['labels'] + (['color', 'costmap'] if record else [])
        outputs_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for output in wanted:
            cls = _message_class(OUTPUTS[output][1])
            if cls is not None:
                self.node.create_subscription(cls, OUTPUTS[output][0], self._on_output(output), outputs_qos, raw=True)
        from diagnostic_msgs.msg import DiagnosticArray
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append, 10)

    def _on_output(self, output):
        def callback(data: bytes, info: object) -> None:
            gid = (info.get('publisher_gid') or {}).get('data') if isinstance(info, dict) else None
            self.received.append((output, bytes(data), time.monotonic(), None if gid is None else bytes(gid)))
        return callback

    def spin_for(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            self.executor.spin_once(timeout_sec=max(0.0, min(0.02, end - time.monotonic())))

    def other_participants(self) -> list[str]:
        return [f'{ns.rstrip("/")}/{n}' for n, ns in self.node.get_node_names_and_namespaces()
                if n != self.node.get_name()]

    def publishers_of(self, topic: str) -> list[tuple[str, bytes]]:
        return [(f'{i.node_namespace.rstrip("/")}/{i.node_name}', bytes(i.endpoint_gid))
                for i in self.node.get_publishers_info_by_topic(topic)]

    def close(self) -> None:
        import rclpy
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _message_class(msgtype):
    import importlib
    package, _, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except ImportError:
        return None


def choose_domain(args: argparse.Namespace, topics: BagTopics) -> tuple[int, Session, list[str]]:
    """A domain with nobody else in it (random ones are tried until one is empty; a given one is used as is)."""
    candidates = [args.domain_id] if args.domain_id is not None else random.sample(range(150, 233), 4)
    for domain in candidates:
        os.environ.update(dds_env(domain))
        session = Session(domain, topics, args.record)
        session.spin_for(1.0)
        others = session.other_participants()
        if not others or args.domain_id is not None:
            return domain, session, others
        session.close()
    return domain, Session(domain, topics, args.record), others


def run_live(args: argparse.Namespace, topics: BagTopics, source: FrameSource, models: list,
             out: str | os.PathLike) -> list:
    """Run every model's node on the bag; returns one result dict per model (``ok`` False on problems)."""
    from tqdm import tqdm

    results, recorded = [], []
    for model in models:
        domain, session, others = choose_domain(args, topics)
        log_path = os.path.join(out, f'node_{model.name}.log')
        played = list(session.publishers)
        try:
            with open(log_path, 'w') as log:
                proc = subprocess.Popen(node_command(model, topics, args), env=dds_env(domain), stdout=log,
                                        stderr=subprocess.STDOUT)
                try:
                    result = _drive(args, topics, source, model, session, proc, tqdm)
                finally:
                    _stop(proc)
        finally:
            session.close()
        checked = ('every output checked to come from the started node by publisher GID' if result.get('gid_checked')
                   else 'outputs not checked by publisher GID (this rclpy does not give it), publishers listed')
        result.update(domain_id=domain, rate=args.rate, node_log=os.path.basename(log_path), played=played,
                      isolation=f'its own domain, discovery {os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")}, '
                                + checked)
        result['other_participants'] = others   # harmless unless they publish on the replay's topics (checked)
        if result['frames_sent'] and result['labels_received']:
            _score(result, source, model)
        recorded.append(result.pop('_recorded'))
        result.pop('_labels', None)
        result['ok'] = not result['problems']
        results.append(result)
    if args.record:
        _write_record(args.record, models, recorded, results)
    return results


def _drive(args, topics, source, model, session, proc, tqdm):
    """Wait for the node, play the bag, collect outputs; returns the result dict."""
    result = {'model': model.name, 'frames_sent': 0, 'labels_received': 0, 'frames_dropped': None,
              'output_rate_hz': None, 'age_ms': None, 'stamps_kept': False, 'stamps_matched': 0,
              'labels_equal_offline': 0, 'labels_compared': 0, 'mIoU': None, 'foreign_messages': 0,
              'node_diagnostics': {}, 'problems': [], '_recorded': []}
    labels_topic = session.node.resolve_topic_name(OUTPUTS['labels'][0])
    deadline = time.monotonic() + args.timeout

    def node_up() -> bool:
        return (session.publishers[topics.image].get_subscription_count() > 0
                and any(name.endswith(NODE_NAME) for name, _ in session.publishers_of(labels_topic)))
    while not node_up():
        if proc.poll() is not None or time.monotonic() > deadline:
            result['problems'].append(f'the node did not come up within {args.timeout:.0f} s (exit code '
                                      f'{proc.poll()}); see its log')
            return result
        session.spin_for(0.1)
    session.spin_for(1.0)   # discovery is not symmetric: let the node's side match our writers too

    def foreign_publishers() -> list[str]:
        names = [name for name, _ in session.publishers_of(labels_topic) if not name.endswith(NODE_NAME)]
        return names + [name for name, _ in session.publishers_of(topics.image)
                        if name != '/' + session.node.get_name()]

    foreign = foreign_publishers()
    settled = time.monotonic() + 2.0       # on a loaded machine another participant's endpoints can arrive late
    while not foreign and time.monotonic() < settled:
        session.spin_for(0.2)
        foreign = foreign_publishers()
    named_by = time.monotonic() + 3.0      # a participant's node names may arrive after its endpoints
    while any('_NODE_NAME_UNKNOWN_' in name for name in foreign) and time.monotonic() < named_by:
        session.spin_for(0.2)
        foreign = foreign_publishers()
    if foreign:
        result['problems'].append(f'another publisher on the replay\'s topics ({", ".join(sorted(set(foreign)))}); '
                                  'results not mixed: this run is left out')
        return result
    node_gids = {gid for name, gid in session.publishers_of(labels_topic) if name.endswith(NODE_NAME)}
    for output in ('color', 'costmap'):
        node_gids |= {gid for name, gid in session.publishers_of(session.node.resolve_topic_name(OUTPUTS[output][0]))
                      if name.endswith(NODE_NAME)}

    warm = _warm_up(session, topics, source, args.warmup, deadline)
    result['warmup_frames'] = len(warm)
    sent_at, frame_ids, count = {}, {}, len(source)
    wanted = list(session.publishers)
    bar = tqdm(total=count, desc=f'live {model.name}', unit='frame', dynamic_ncols=True)
    t0 = t0_bag = None
    for topic, msgtype, raw, t_bag in bags.read_raw_messages(topics.path, wanted):
        if topic == topics.image and result['frames_sent'] >= count:
            break
        if t0 is None:
            t0, t0_bag = time.monotonic(), t_bag
        due = t0 + (t_bag - t0_bag) / 1e9 / args.rate
        session.spin_for(due - time.monotonic())
        if topic == topics.image:
            if source.restamped:     # repeated header stamps: the frame's bag time, as the offline pass used
                raw = restamp(raw, t_bag)
            stamp = bags.header_stamp(raw)
            sent_at[stamp] = time.monotonic()
            frame_ids[stamp] = _frame_id(raw, msgtype)
            result['frames_sent'] += 1
            bar.update(1)
        session.publishers[topic].publish(raw)
    bar.close()
    session.spin_for(max(3.0, 5.0 / args.rate), until=lambda: _labels_count(session) >= len(sent_at))
    session.spin_for(1.5)    # one more diagnostics period after the last output
    _collect(result, session, node_gids, sent_at, frame_ids, t0, t0_bag, args.rate, warm)
    return result


def restamp(raw: bytes, stamp_ns: int) -> bytes:
    """A serialized message whose first field is a std_msgs/Header, with its header stamp set to ``stamp_ns``."""
    out = bytearray(raw)
    struct.pack_into('<iI' if out[1] == 1 else '>iI', out, 4, stamp_ns // 10**9, stamp_ns % 10**9)
    return bytes(out)


def _warm_up(session, topics, source, count, deadline):
    """Send the bag's first camera frame ``count`` times, stamped 1 ms apart just before it, each once the previous
    one's labels came back (at most 10 s each), so the node's first, cold inferences stay out of the measurement.
    Returns the warm-up stamps (their outputs are left out)."""
    first = next((raw for _, _, raw, _ in bags.read_raw_messages(topics.path, [topics.image])), None)
    stamps = set()
    for k in range(count if first else 0):
        stamp = source.stamps[0] - (count - k) * 1_000_000
        stamps.add(stamp)
        before = _labels_count(session)
        session.publishers[topics.image].publish(restamp(first, stamp))
        session.spin_for(max(0.0, min(10.0, deadline - time.monotonic())),
                         until=lambda n=before: _labels_count(session) > n)
    return stamps


def _labels_count(session):
    return sum(1 for output, *_ in session.received if output == 'labels')


def _frame_id(raw, msgtype):
    return bags.typestore().deserialize_cdr(raw, msgtype).header.frame_id


def _collect(result, session, node_gids, sent_at, frame_ids, t0, t0_bag, rate, warm):
    labels, ages, times, kept, age_at = {}, [], [], 0, {}
    result['gid_checked'] = bool(session.received) and all(gid is not None for *_, gid in session.received)
    for output, raw, t_recv, gid in session.received:
        if gid is not None and gid not in node_gids:
            result['foreign_messages'] += 1
            continue
        if bags.header_stamp(raw) in warm:
            continue
        bag_ns = t0_bag + int((t_recv - t0) * rate * 1e9)
        result['_recorded'].append((output, raw, bag_ns))
        if output != 'labels':
            continue
        msg = bags.typestore().deserialize_cdr(raw, OUTPUTS['labels'][1])
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        times.append(t_recv)
        if stamp in sent_at and msg.header.frame_id == frame_ids[stamp]:
            kept += 1
            ages.append((t_recv - sent_at[stamp]) * 1e3)
            age_at[stamp] = ages[-1]
            labels[stamp] = bags.decode_image(msg)
    from .replay_report import percentiles
    n = len(times)
    result.update(labels_received=n, frames_dropped=len(sent_at) - len(labels), stamps_matched=kept,
                  stamps_kept=n > 0 and kept == n, age_ms=percentiles(ages),
                  age_per_frame_ms=[age_at.get(s) for s in sent_at],   # in sending order; None = dropped
                  output_rate_hz=(n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else None)
    result['_labels'] = labels
    if result['foreign_messages']:
        result['problems'].append(f'{result["foreign_messages"]} output messages from another publisher, left out')
    if sent_at and not n:
        result['problems'].append('no labels came back from the node (see its log)')
    if n and kept != n:
        result['problems'].append(f'{n - kept} outputs did not carry the header of a frame that was sent')
    for arr in reversed(session.diagnostics):
        status = [s for s in arr.status if s.name == f'{NODE_NAME}: segmentation']
        if status:
            result['node_diagnostics'] = {kv.key: kv.value for kv in status[0].values}
            break


def _score(result, source, model):
    """Published labels against the offline pass (same model) and the ground truth."""
    from .metrics import ConfusionMatrix, compute_metrics

    labels = result['_labels']
    result['labels_compared'] = len(labels)
    result['labels_equal_offline'] = sum(label_digest(v) == model.label_digest.get(s) for s, v in labels.items())
    if source.topics.gt is None:
        return
    confusion = ConfusionMatrix(model.engine.num_classes, model.confusion.ignore_index)
    scored = 0
    for frame in source:
        pred = labels.get(frame.stamp_ns)
        if pred is not None and frame.label is not None and pred.shape == frame.label.shape:
            confusion.update(model.scored(pred), frame.label)   # as offline (--merge)
            scored += 1
    if scored:
        result['mIoU'] = compute_metrics(confusion.matrix)['mIoU']


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_record(path, models, recorded, results):
    from pathlib import Path

    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = bags.typestore()
    names = model_names([m.path for m in models])
    prefix = len(models) > 1
    rows = sorted(((bag_ns, f'/{names[k]}/{OUTPUTS[o][0]}' if prefix else f'/{OUTPUTS[o][0]}', OUTPUTS[o][1], raw)
                   for k, msgs in enumerate(recorded) for o, raw, bag_ns in msgs), key=lambda r: r[0])
    connections, counts = {}, {}
    with Writer(Path(path), version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        for bag_ns, topic, msgtype, raw in rows:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(connections[topic], bag_ns, raw)
            counts[topic] = counts.get(topic, 0) + 1
    for k, result in enumerate(results):
        mine = {t: c for t, c in counts.items() if not prefix or t.startswith(f'/{names[k]}/')}
        result['record'] = str(path)
        result['record_topics'] = ', '.join(f'{t} x{c}' for t, c in sorted(mine.items())) or 'nothing received'

