"""seg-perception soak: the node under sustained overload, as a command (not a test).

    seg-perception soak --minutes 10                       # the figures in the README
    seg-perception soak --minutes 0.5 --max-rss-growth 0.25 --max-age-ratio 4 --min-overload 1.5   # CI version

The node runs as its own process (``python -m seg_perception.node``, the shipped parameters, 1 ONNX Runtime
thread) in a DDS domain of its own with the large-data Fast DDS profile. This process publishes camera-sized
frames (the sample bag's 640x480 images, re-stamped with the wall clock) at ``--overload`` times the rate the
node can process them (first from the model's inference time measured in this process on the same frames with
the same thread count; during the warm-up, from the output rate the node reports under this load) and
subscribes to every output: labels, colour, confidence, label_info and diagnostics. Output age is taken at the
middleware's receipt of each labels message (its ``received_timestamp``), so this process's own Python queueing
is not counted against the node.

Checked after a warm-up (the first 20 % of the run, between 5 and 60 s):
  * resident memory (VmRSS of the node process, sampled every second) grows by less than ``--max-rss-growth``
    from just after the warm-up to the end;
  * output age (input stamp -> labels received here) p99 is below ``--max-age-ratio`` times the node's own
    inference time p99 (its diagnostics' latency_p99_ms under this load, tail against tail; the ratio to the
    p50 is printed too): no backlog builds up;
  * after the input stops, the node's counters add up: received = processed + dropped (+ rejected + errors +
    idle + no_model, which must all be 0) with nothing in flight;
  * the input really was an overload: received at >= ``--min-overload`` (2) x the node's output rate (the
    target is ``--overload``, 4; a machine too busy to publish that fast makes this check fail, not pass).
A failed check is exit code 1; the table says which.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ...paths import default_model_path, find_share_file
from ..argtypes import non_negative_float, non_negative_int, positive_float, ros_domain_id

if TYPE_CHECKING:
    from sensor_msgs.msg import Image

DEFAULT_BAG = ('samples', 'scenes_sample')
OUTPUTS = ('labels', 'color', 'confidence')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--minutes', type=float, default=10.0, help='length of the overload')
    parser.add_argument('--model', default='', help='ONNX model (default: the shipped default model)')
    parser.add_argument('--overload', type=positive_float, default=4.0,
                        help='input rate as a multiple of the rate the model segments frames')
    parser.add_argument('--threads', type=non_negative_int, default=1, help='ONNX Runtime intra-op threads of the node')
    parser.add_argument('--max-rss-growth', type=non_negative_float, default=0.05,
                        help='largest accepted growth of the node\'s resident memory after the warm-up (fraction)')
    parser.add_argument('--max-age-ratio', type=positive_float, default=2.0,
                        help='largest accepted output age p99 as a multiple of the node\'s inference time p99')
    parser.add_argument('--min-overload', type=positive_float, default=2.0,
                        help='smallest accepted ratio of the node\'s input rate to its output rate (a run on a '
                             'machine too busy to publish that fast is not an overload test)')
    parser.add_argument('--domain-id', type=ros_domain_id, default=None,
                        help='ROS_DOMAIN_ID for the node and this process (default: a random one in 101-149)')
    parser.add_argument('--json', default=None, help='also write the report to this JSON file')


def _frames(count=20):
    """Camera-sized RGB frames: the sample bag's images (640x480), else deterministic noise."""
    bag = find_share_file(*DEFAULT_BAG)
    frames = []
    if bag:
        from ..data.bags import iter_bag_images
        for _, _, image in iter_bag_images(bag, '/camera/image_raw'):
            frames.append(np.ascontiguousarray(image))
            if len(frames) == count:
                break
    if not frames:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(count)]
    return frames


def inference_ms(model: str | os.PathLike, frames: Sequence[np.ndarray], threads: int) -> float:
    """Median time of the engine's infer() on ``frames`` (after a warm-up), the node's per-frame cost."""
    from ...runtime.engine import SegmentationEngine
    engine = SegmentationEngine(model, providers=['CPUExecutionProvider'], intra_op_threads=threads)
    for frame in frames[:3]:
        engine.infer(frame)
    return float(np.median([engine.infer(frames[i % len(frames)]).latency_ms for i in range(30)]))


def _dds_env(domain_id):
    from ...launch_support import large_data_env
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    profile = find_share_file('config', 'fastdds_large_data.xml')
    if profile:
        env.update(large_data_env(profile, env))
    return env


def _rss_kb(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Probe:
    """This side of the soak: the camera publisher and a subscriber on every output of the node."""

    def __init__(self, domain_id):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from ...node import LATCHED_QOS, OUTPUT_QOS
        self.Image = Image
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('soak_probe', context=self.context)
        self.pub = self.node.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.ages = {name: [] for name in OUTPUTS}   # (receipt time, age ms)
        self.label_info = []
        self.diagnostics = []                       # (receipt time, {key: value})
        for name in OUTPUTS:
            self.node.create_subscription(Image, f'segmentation/{name}',
                                          lambda m, info, n=name: self._on_output(n, m, info), OUTPUT_QOS)
        self.node.create_subscription(String, 'segmentation/label_info', self.label_info.append, LATCHED_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # the context shut down under it at close()
            pass

    def _on_output(self, name, msg, info):
        """Age = the middleware's receipt time (not this callback's, which waits for the GIL) - input stamp."""
        received = info.get('received_timestamp') if isinstance(info, dict) else None
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.ages[name].append((time.monotonic(), ((received or time.time_ns()) - stamp) / 1e6))

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if 'segmentation' in status.name:
                with self.lock:
                    self.diagnostics.append((time.monotonic(), {kv.key: kv.value for kv in status.values}))

    def connected(self) -> bool:
        return self.pub.get_subscription_count() > 0 and all(
            s.get_publisher_count() > 0 for s in self.node.subscriptions)

    def messages(self, frames: Iterable[np.ndarray]) -> list['Image']:
        out = []
        for frame in frames:
            h, w = frame.shape[:2]
            out.append(self.Image(height=h, width=w, encoding='rgb8', step=w * 3, data=frame.tobytes()))
        return out

    def publish(self, msg: 'Image') -> None:
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10**9)
        self.pub.publish(msg)

    def close(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=1)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(2)


def warmup_seconds(duration: float) -> float:
    """The first 20 % of a run, at least 5 s and at most 60 s."""
    return min(60.0, max(5.0, 0.2 * duration))


def _percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def run_soak(model: str | os.PathLike | None = None, minutes: float = 10.0, overload: float = 4.0, threads: int = 1,
             domain_id: int | None = None, max_rss_growth: float = 0.05, max_age_ratio: float = 2.0,
             min_overload: float = 2.0, progress: Callable[[str], None] = print) -> dict:
    """Run the soak; returns the report dict (``checks``: name -> (passed, text))."""
    model = model or default_model_path()
    if not os.path.isfile(model):
        raise UserError(f'--model {model}: not found')
    duration = minutes * 60.0
    if not 10 <= duration < float('inf'):   # NaN fails both comparisons
        raise UserError(f'--minutes {minutes}: give a finite length of at least 10 seconds (0.17 minutes)')
    frames = _frames()
    t_infer = inference_ms(model, frames, threads)
    rate = overload * 1000.0 / t_infer
    domain_id = random.randint(101, 149) if domain_id is None else domain_id  # tests: 1-100, replay: 150-232
    env = _dds_env(domain_id)
    os.environ.update({k: v for k, v in env.items() if k.startswith(('FASTDDS', 'FASTRTPS'))})
    cmd = [sys.executable, '-m', 'seg_perception.node', '--ros-args']
    params = find_share_file('config', 'segment.yaml')
    if params:
        cmd += ['--params-file', params]
    cmd += ['-p', f'model_path:={model}', '-p', f'intra_op_threads:={threads}', '-p', 'diagnostics_period:=1.0',
            '-p', 'stats_window:=5.0']
    progress(f'model {os.path.basename(model)}: {t_infer:.1f} ms per 640x480 frame here ({threads} thread); '
             f'publishing at {rate:.0f} Hz for {duration:.0f} s in domain {domain_id}')
    log = []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    probe = Probe(domain_id)
    rss = []
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None and not probe.connected():
            time.sleep(0.05)
        if not probe.connected():
            raise RuntimeError('the node did not come up:\n' + ''.join(log[-20:]))
        messages = probe.messages(frames)
        sent = 0
        t0 = time.monotonic()
        next_t, next_rss, stop_at = t0, t0, t0 + duration
        warmup = warmup_seconds(duration)
        while (now := time.monotonic()) < stop_at and proc.poll() is None:
            if now >= next_rss:
                rss.append((now - t0, _rss_kb(proc.pid)))
                next_rss += 1.0
                if now - t0 < warmup:  # warm-up: follow what the node really manages under this load
                    with probe.lock:
                        measured = [float(v['output_rate_hz']) for t, v in probe.diagnostics[-1:] if t > t0 + 2]
                    if measured and measured[0] > 0:
                        rate = overload * measured[0]
            probe.publish(messages[sent % len(messages)])
            sent += 1
            next_t = max(next_t + 1.0 / rate, now - 1.0 / rate)   # never a burst to catch up
            time.sleep(max(0.0, next_t - time.monotonic()))
        elapsed = time.monotonic() - t0
        stopped = time.monotonic()
        settle_end = stopped + 10
        final = None
        while time.monotonic() < settle_end and proc.poll() is None:
            with probe.lock:
                after = [v for t, v in probe.diagnostics if t > stopped + 1.0]
            if after and after[-1].get('frames_in_flight', '0') == '0':
                final = after[-1]
                break
            time.sleep(0.1)
    finally:
        probe.close()
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(2)
    return _report(model, t_infer, rate, overload, sent, t0, elapsed, duration, rss, probe, final, log,
                   max_rss_growth, max_age_ratio, min_overload, proc.returncode)


def _report(model, t_infer, rate, overload, sent, t0, elapsed, duration, rss, probe, final, log, max_rss_growth,
            max_age_ratio, min_overload, returncode):
    """The figures and checks of one run (times: monotonic; ``t0``: first frame sent)."""
    warmup = warmup_seconds(duration)
    samples = [(t, kb) for t, kb in rss if kb]
    base = [kb for t, kb in samples if warmup <= t < warmup + 5]
    tail = [kb for t, kb in samples if t >= elapsed - 5]
    rss_base = float(np.median(base)) if base else float('nan')
    rss_end = float(np.median(tail)) if tail else float('nan')
    growth = (rss_end - rss_base) / rss_base if base and tail else float('nan')
    ages = {name: [a for t, a in probe.ages[name] if warmup <= t - t0 <= elapsed + 1] for name in OUTPUTS}
    loaded = [v for t, v in probe.diagnostics if warmup <= t - t0 <= elapsed]
    def node_figure(key: str) -> float:  # median over the loaded diagnostics messages of one of the node's figures
        values = [float(v[key]) for v in loaded if v.get(key, 'nan') != 'nan']
        return float(np.median(values)) if values else float('nan')
    node_latency, node_latency_p99 = node_figure('latency_p50_ms'), node_figure('latency_p99_ms')
    age_p99 = _percentile(ages['labels'], 99)
    node_age_p99 = node_figure('input_to_output_p99_ms')
    input_rate = float(np.median([float(v['input_rate_hz']) for v in loaded])) if loaded else 0.0
    output_rate = float(np.median([float(v['output_rate_hz']) for v in loaded])) if loaded else 0.0
    final = final or {}
    # every frame received is processed or dropped (counted); any other outcome fails the soak
    other_outcomes = {'rejected': 'rejected', 'errors': 'errors', 'idle_no_subscribers': 'idle',
                      'no_model': 'no model', 'in_flight': 'in flight', 'skipped_rate': 'skipped by max_rate'}
    counts = {k: int(final.get(f'frames_{k}', -1)) for k in ('received', 'processed', 'published', 'dropped',
                                                              *other_outcomes)}
    others = sum(counts[k] for k in other_outcomes)
    tracebacks = [line for line in log if 'Traceback' in line]
    checks = {
        'rss': (growth < max_rss_growth,
                f'node RSS {rss_base / 1024:.1f} MB after warm-up -> {rss_end / 1024:.1f} MB at the end: '
                f'{100 * growth:+.2f} % (limit {100 * max_rss_growth:.0f} %)'),
        'age': (age_p99 < max_age_ratio * node_latency_p99,
                f'labels age p99 {age_p99:.1f} ms = {age_p99 / node_latency_p99:.2f} x the node\'s inference time '
                f'p99 {node_latency_p99:.1f} ms, {age_p99 / node_latency:.2f} x its p50 {node_latency:.1f} ms '
                f'(limit {max_age_ratio:g} x p99)'),
        'counters': (bool(final) and counts['received'] == counts['processed'] + counts['dropped'] and others == 0,
                     f'received {counts["received"]} = processed {counts["processed"]} + dropped '
                     f'{counts["dropped"]}; ' + ', '.join(f'{text} {counts[k]}' for k, text in other_outcomes.items())
                     if final
                     else 'no diagnostics after the input stopped'),
        'overload': (input_rate >= min_overload * output_rate > 0,
                     f'input {input_rate:.1f} Hz vs output {output_rate:.1f} Hz: '
                     f'{input_rate / max(output_rate, 1e-9):.1f} x (target {overload:g} x, limit {min_overload:g} x)'),
        'clean': (not tracebacks and returncode in (0, -15),
                  f'node exit code {returncode}, {len(tracebacks)} tracebacks in its log'),
    }
    return {
        'model': os.path.basename(model), 'seconds': round(elapsed, 1), 'warmup_s': warmup,
        'inference_ms_before': t_infer, 'rate_hz_after_warmup': rate, 'frames_sent': sent,
        'sent_rate_hz': sent / max(elapsed, 1e-9), 'node_input_rate_hz': input_rate,
        'node_output_rate_hz': output_rate, 'node_latency_p50_ms': node_latency,
        'node_latency_p99_ms': node_latency_p99,
        'node_receipt_to_published_p99_ms': node_age_p99,
        'age_ms': {name: {'p50': _percentile(v, 50), 'p99': _percentile(v, 99), 'count': len(v)}
                   for name, v in ages.items()},
        'rss_mb': {'after_warmup': rss_base / 1024, 'end': rss_end / 1024, 'growth': growth,
                   'samples': [(round(t, 1), kb) for t, kb in samples]},
        'counters': counts, 'lost_in_transport': sent - counts['received'] if final else None,
        'label_info_received': len(probe.label_info),
        'checks': {k: {'passed': bool(ok), 'text': text} for k, (ok, text) in checks.items()},
        'passed': all(ok for ok, _ in checks.values()),
    }


def soak_table(report: dict) -> str:
    age = report['age_ms']
    rows = [
        ('duration', f'{report["seconds"]:.0f} s ({report["warmup_s"]:.0f} s warm-up)'),
        ('frames sent', f'{report["frames_sent"]} at {report["sent_rate_hz"]:.1f} Hz (640x480 rgb8)'),
        ('node input / output rate', f'{report["node_input_rate_hz"]:.1f} / {report["node_output_rate_hz"]:.1f} Hz'),
        ('node inference p50 / p99', f'{report["node_latency_p50_ms"]:.1f} / {report["node_latency_p99_ms"]:.1f} ms '
                                     f'(p50 here before the run: {report["inference_ms_before"]:.1f} ms)'),
        ('node receipt -> published p99', f'{report["node_receipt_to_published_p99_ms"]:.1f} ms'),
    ]
    rows += [(f'{name} age p50 / p99', f'{age[name]["p50"]:.1f} / {age[name]["p99"]:.1f} ms '
                                       f'({age[name]["count"]} received)') for name in OUTPUTS]
    rows.append(('lost in transport (best effort)', str(report['lost_in_transport'])))
    rows += [(f'check: {name}', f'{"PASS" if c["passed"] else "FAIL"}: {c["text"]}')
             for name, c in report['checks'].items()]
    lines = ['| | |', '|---|---|'] + [f'| {a} | {b} |' for a, b in rows]
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> int:
    report = run_soak(args.model, args.minutes, args.overload, args.threads, args.domain_id, args.max_rss_growth,
                      args.max_age_ratio, args.min_overload)
    print(soak_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report['passed'] else 1
