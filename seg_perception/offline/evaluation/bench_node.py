"""``seg-perception bench node``: the node's own overhead and the transport, on real rclpy + DDS.

The real node (``python -m seg_perception.node``) in its own process, as on a robot, started once per camera
size and set of subscribed outputs in its own namespace; this process subscribes to labels only (what a
navigation stack takes) or to labels, colour and confidence (a robot with a viewer attached), publishes a camera
frame, waits until every subscribed output for it has arrived, then sends the next (no frame is ever dropped or
queued). Fast DDS uses the package's
large-data profile on both sides (unless the environment already chooses one). Reported:

* node: arrival in the image callback -> all outputs published (the node's ``input_to_output_p50_ms`` in its
  /diagnostics, p50 over every frame of that size including the warm-up ones), and the engine's share of it
  (``latency_p50_ms``: pre-processing + network + post-processing);
* bare engine: ``SegmentationEngine.infer`` on the same frame, same model and threads (OpenCV's too: the node's
  default ``opencv_threads`` of 1), called directly while the node is idle;
* end to end: driver's publish -> labels received by the driver (DDS, executor and the node together);
* the node's per-frame steps timed alone on the same frame: message -> array, confidence -> mono8, colour mask,
  arrays -> serialized messages (``image_cdr``; what the node does around ``infer``).

Frames: the sample bag's 640x480 frames, and the same frames resized to the other ``--sizes``.

``seg-perception bench node-cpu``: the same node fed at a camera rate, ONNX Runtime's worker threads sleeping
between frames (the node's default) and spinning (ONNX Runtime's own): the node process's CPU and latency.
"""
import argparse
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ..argtypes import non_negative_int, positive_float, positive_int
from .bench_common import emit, fmt, markdown_table, parse_size, ratio, worker_spinning
from .bench_models import SHIPPED, sample_frames

if TYPE_CHECKING:
    import subprocess


def _median(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _steps(engine, rgb, result) -> dict:
    """Time the node's own steps around ``infer`` on one frame (ms each)."""
    from sensor_msgs.msg import Image

    from ...runtime.engine import colorize, confidence_to_mono8
    from ...runtime.imgmsg import array_to_image_fields, image_cdr, image_to_rgb
    msg = Image(**array_to_image_fields(rgb, 'rgb8'))
    out = {}
    t = time.perf_counter()
    image_to_rgb(msg)
    out['msg_to_array'] = time.perf_counter() - t
    t = time.perf_counter()
    conf = confidence_to_mono8(result.confidence)
    out['confidence_mono8'] = time.perf_counter() - t
    t = time.perf_counter()
    color = colorize(result.labels, engine.palette)
    out['colorize'] = time.perf_counter() - t
    t = time.perf_counter()
    for arr, enc in ((result.labels, 'mono8'), (conf, 'mono8'), (color, 'rgb8')):
        image_cdr(arr, enc, msg.header)
    out['to_messages'] = time.perf_counter() - t
    return {k: v * 1e3 for k, v in out.items()}


def _node_process(model, name, namespace, threads, log, params=()):
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    cmd = [sys.executable, '-m', 'seg_perception.node', '--ros-args', '-r', f'__node:={name}',
           '-r', f'__ns:={namespace}', '-p', f'model_path:={os.path.abspath(model)}',
           '-p', f'intra_op_threads:={int(threads)}', '-p', 'stats_window:=600.0', '-p', 'diagnostics_period:=0.5',
           '-p', "providers:=['CPUExecutionProvider']"]
    for param in params:
        cmd += ['-p', param]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc):
    import signal
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001 - whatever happened, the node must not outlive the benchmark
            proc.kill()
            proc.wait()


class _Driver:
    """This process's side: a node that publishes camera frames to the node under test (started by
    :meth:`start_node` in its own process) and records the arrival time of each output per header stamp
    (``arrived``) and the node's latest /diagnostics values (``diag``), both guarded by ``done``."""

    OUTPUTS = ('labels', 'color', 'confidence')

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from ...launch_support import large_data_env
        from ...paths import find_share_file
        profile = find_share_file('config', 'fastdds_large_data.xml')
        if profile:   # both processes need the large-data transport for camera-sized images
            os.environ.update(large_data_env(profile))
        self.name, self.namespace = f'seg_bench_{os.getpid()}', f'/seg_bench_{os.getpid()}'
        self.arrived, self.diag = {}, {}
        self.done = threading.Condition()
        self._ctx = rclpy.context.Context()
        rclpy.init(context=self._ctx)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._node = rclpy.create_node(f'{self.name}_driver', context=self._ctx)
        self._subs = []
        self._node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.pub = self._node.create_publisher(Image, f'{self.namespace}/image', qos_profile_sensor_data)
        self._executor.add_node(self._node)
        threading.Thread(target=self._executor.spin, daemon=True).start()

    def subscribe(self, outputs: Iterable[str]) -> None:
        """Subscribe to these of the node's image outputs only (the node makes only what has subscribers); call
        while no node runs."""
        from sensor_msgs.msg import Image
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = [self._node.create_subscription(Image, f'{self.namespace}/segmentation/{o}',
                                                     lambda m, o=o: self._on_output(m, o), 10) for o in outputs]

    def _on_output(self, msg, output):
        now = time.perf_counter()
        with self.done:
            self.arrived.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), {})[output] = now
            self.done.notify_all()

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith(f'{self.name}:'):
                with self.done:
                    self.diag.clear()
                    self.diag.update({kv.key: kv.value for kv in status.values})
                    self.done.notify_all()

    def start_node(self, model: str | os.PathLike, threads: int, log: IO[str], params: Sequence[str] = (),
                   timeout: float = 60.0) -> 'subprocess.Popen':
        """The node in its own process, once it and this driver have discovered each other."""
        with self.done:   # the previous node's last diagnostics must not stand for this one's
            self.diag.clear()
        proc = _node_process(model, self.name, self.namespace, threads, log, params)
        end = time.monotonic() + timeout
        while not (self.pub.get_subscription_count() and all(s.get_publisher_count() for s in self._subs)):
            if proc.poll() is not None or time.monotonic() > end:
                _stop(proc)
                log.seek(0)
                raise UserError(f'the node did not start or was not discovered in {timeout:.0f} s: '
                                + ' | '.join(log.read().strip().splitlines()[-3:]))
            time.sleep(0.05)
        return proc

    def close(self) -> None:
        import rclpy
        self._executor.shutdown()
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._ctx)


def bench_node(model: str | os.PathLike, sizes: Sequence[tuple[int, int]], frames: int = 15, threads: int = 1,
               warmup: int = 3, timeout: float = 60.0,
               output_sets: Sequence[Sequence[str]] = (('labels',), _Driver.OUTPUTS)) -> dict:
    """The node in its own process (as on a robot), one start per camera size and set of subscribed outputs
    (``output_sets``: the node makes only what is subscribed); this process publishes the frames, receives the
    outputs and reads the node's own statistics from its /diagnostics."""
    import tempfile

    import cv2

    from ...runtime.engine import SegmentationEngine
    driver = _Driver()
    base = sample_frames(frames)
    bare = SegmentationEngine(str(model), intra_op_threads=threads, providers=['CPUExecutionProvider'],
                              spinning=worker_spinning(threads))   # as the node: workers sleep between frames
    frames_at = {tuple(size): [np.ascontiguousarray(cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA))
                               if f.shape[:2] != tuple(size) else f for f in base] for size in sizes}
    rows, stamp = [], 0
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)   # as the node sets it (its opencv_threads parameter's default)
    try:
        for outputs in output_sets:
            driver.subscribe(outputs)
            for size in sizes:
                images = frames_at[tuple(size)]
                with tempfile.TemporaryFile('w+') as log:
                    proc = driver.start_node(model, threads, log, timeout=timeout)
                    try:
                        stamp, row = _frames_through_node(driver, bare, [images[0]] * warmup + images, warmup,
                                                          stamp, len(outputs), timeout)
                    finally:
                        _stop(proc)
                rows.append({'size': list(size), 'outputs': list(outputs), **row})
                print(f'  {size[1]}x{size[0]}, {"+".join(outputs)}: node {row["node_ms"]:.1f} ms, '
                      f'bare engine {row["bare_ms"]:.1f} ms, end to end {row["e2e_ms"]:.1f} ms', flush=True)
    finally:
        driver.close()
        cv2.setNumThreads(opencv_threads)
    return {'model': str(model), 'threads': threads, 'rows': rows}


def _frames_through_node(driver, bare, images, warmup, stamp, n_outputs, timeout):
    """Each frame published, its ``n_outputs`` outputs awaited, then the bare engine run on it; medians over
    the frames after ``warmup`` and the node's own p50s from its diagnostics. Returns (last stamp, row)."""
    from sensor_msgs.msg import Image

    from ...runtime.imgmsg import array_to_image_fields
    arrived, done = driver.arrived, driver.done
    e2e, e2e_all, bare_ms, steps = [], [], [], []
    for i, rgb in enumerate(images):
        stamp += 1
        msg = Image(**array_to_image_fields(rgb, 'rgb8'))
        msg.header.stamp.sec, msg.header.frame_id = stamp, 'camera'
        t0 = time.perf_counter()
        driver.pub.publish(msg)
        end = time.monotonic() + timeout
        with done:   # best effort: a frame lost before discovery settles is sent again
            while not done.wait_for(lambda k=(stamp, 0): len(arrived.get(k, {})) == n_outputs, 2.0):
                if time.monotonic() > end:
                    raise UserError(f'no outputs from the node for a {rgb.shape[1]}x{rgb.shape[0]} frame '
                                    f'in {timeout:.0f} s')
                if not arrived.get((stamp, 0)):
                    t0 = time.perf_counter()
                    driver.pub.publish(msg)
            received = arrived.pop((stamp, 0))
        result = bare.infer(rgb)
        if i >= warmup:
            e2e.append((received['labels'] - t0) * 1e3)
            e2e_all.append((max(received.values()) - t0) * 1e3)
            bare_ms.append(result.latency_ms)
            steps.append(_steps(bare, rgb, result))
    with done:
        done.wait_for(lambda n=len(images): int(driver.diag.get('frames_processed', 0)) >= n, timeout)
        stats = dict(driver.diag)
    return stamp, {'frames': len(e2e), 'node_ms': float(stats.get('input_to_output_p50_ms', 'nan')),
                   'node_engine_ms': float(stats.get('latency_p50_ms', 'nan')), 'bare_ms': _median(bare_ms),
                   'e2e_ms': _median(e2e), 'e2e_all_ms': _median(e2e_all),
                   **{k: _median([s[k] for s in steps]) for k in steps[0]}}


def _process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        with open(f'/proc/{pid}/stat') as fh:
            fields = fh.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return None


def bench_node_cpu(model: str | os.PathLike, size: tuple[int, int] = (480, 640), rate: float = 30.0,
                   seconds: float = 10.0, threads: int = 2, timeout: float = 60.0, max_rate: float = 10.0) -> dict:
    """The node in its own process fed frames at a camera ``rate`` for ``seconds`` (after 2 s of warm-up), once with
    ONNX Runtime's worker threads sleeping between frames (``intra_op_spinning:=false``, the node's default), once
    spinning (ONNX Runtime's own default) and, with ``max_rate`` > 0, once sleeping and limited to ``max_rate``
    frames per second (the node's ``max_rate``): the node process's CPU time per second of the run, the labels
    that came back, and the node's own latency p50s from its /diagnostics."""
    import tempfile

    import cv2
    from sensor_msgs.msg import Image

    from ...runtime.imgmsg import array_to_image_fields
    driver = _Driver()
    driver.subscribe(driver.OUTPUTS)
    messages = [Image(**array_to_image_fields(np.ascontiguousarray(cv2.resize(f, size[::-1])), 'rgb8'))
                for f in sample_frames(10)]
    rows, stamp = [], 0
    try:
        for spinning, limit in [(False, 0.0), (True, 0.0)] + ([(False, float(max_rate))] if max_rate > 0 else []):
            with tempfile.TemporaryFile('w+') as log:
                proc = driver.start_node(model, threads, log, [f'intra_op_spinning:={str(spinning).lower()}',
                                                               f'max_rate:={limit}'], timeout=timeout)
                try:
                    counts = []
                    for duration in (2.0, seconds):   # warm-up, then the measured run
                        cpu0, start, first, sent = _process_cpu_seconds(proc.pid), time.monotonic(), stamp + 1, 0
                        while time.monotonic() - start < duration:
                            stamp, sent = stamp + 1, sent + 1
                            msg = messages[stamp % len(messages)]
                            msg.header.stamp.sec = stamp
                            driver.pub.publish(msg)
                            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
                        time.sleep(0.5)   # the last frames' outputs
                        cpu1, wall = _process_cpu_seconds(proc.pid), time.monotonic() - start
                        with driver.done:
                            got = sum(1 for (sec, _), outs in driver.arrived.items()
                                      if first <= sec <= stamp and 'labels' in outs)
                            stats = dict(driver.diag)
                        counts.append((sent, got, None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall))
                finally:
                    _stop(proc)
            sent, got, cpu = counts[-1]
            rows.append({'spinning': spinning, 'max_rate': limit, 'sent': sent, 'received': got, 'cpu_cores': cpu,
                         'engine_ms': float(stats.get('latency_p50_ms', 'nan')),
                         'node_ms': float(stats.get('input_to_output_p50_ms', 'nan'))})
            print(f'  worker threads {"spinning" if spinning else "sleeping"}, max_rate {limit:g}: node CPU '
                  f'{"n/a" if cpu is None else f"{100 * cpu:.0f} %"} of a core, {got}/{sent} labels', flush=True)
    finally:
        driver.close()
    return {'model': str(model), 'threads': threads, 'size': list(size), 'rate': rate, 'seconds': seconds,
            'rows': rows}


def node_table(report: dict) -> str:
    rows = []
    for r in report['rows']:
        rows.append([f'{r["size"][1]}x{r["size"][0]}', ' + '.join(r['outputs']), r['frames'], fmt(r['bare_ms']),
                     fmt(r['node_engine_ms']), fmt(r['node_ms']), ratio(r['node_ms'], r['bare_ms']), fmt(r['e2e_ms']),
                     fmt(r['e2e_all_ms']),
                     fmt(r['e2e_all_ms'] - r['node_ms'] if r['e2e_all_ms'] and r['node_ms'] else None),
                     fmt(r['msg_to_array']), fmt(r['confidence_mono8']), fmt(r['colorize']), fmt(r['to_messages'])])
    head = ['camera', 'outputs subscribed', 'frames', 'bare engine ms', 'engine in node ms',
            'node arrival -> published ms', 'node / bare', 'end to end: labels ms', 'end to end: all subscribed ms',
            'transport + executor ms',
            'msg -> array ms', 'confidence -> mono8 ms', 'colour mask ms', 'arrays -> 3 serialized messages ms']
    return (markdown_table(head, rows) + f'\n\nModel `{os.path.basename(report["model"])}`, '
            f'{report["threads"]} ONNX Runtime thread(s), medians over the frames; the node in its own process, '
            'Fast DDS between the processes; the node makes and publishes only the outputs subscribed; end to end = '
            'publish -> labels (all subscribed outputs) received; transport + executor = end to end (all '
            'subscribed) - node arrival -> published; the last four columns are each step alone on the frame.')


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default=str(SHIPPED), help='the .onnx model the node runs')
    parser.add_argument('--sizes', nargs='+', default=['480x640', '720x1280'], help='camera sizes HxW')
    parser.add_argument('--frames', type=positive_int, default=15, help='frames per size (from the sample bag)')
    parser.add_argument('--threads', type=non_negative_int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--warmup', type=non_negative_int, default=3, help='untimed frames first (per size)')
    parser.add_argument('--outputs', nargs='+', choices=['labels', 'all'], default=['labels', 'all'],
                        help='image outputs subscribed, one node run each: labels only, or labels + colour + '
                             'confidence')
    parser.add_argument('--markdown', default=None, help='also write the table to this Markdown file')


def _check_node_args(args, bench: str) -> None:
    """One line (exit 2) for what a node benchmark cannot run without: a model file the engine loads (the node
    would fail on any other before the first frame) and rclpy."""
    from ...runtime.engine import SegmentationEngine
    if not os.path.isfile(args.model):
        raise UserError(f'model {args.model}: no such file')
    SegmentationEngine(args.model, providers=['CPUExecutionProvider'], intra_op_threads=1)   # EngineError: exit 2
    try:
        import rclpy  # noqa: F401
    except ImportError:
        raise UserError(f'bench {bench} needs rclpy (pip install ".[ros]" or source a ROS 2 install)') from None


def run_node(args: argparse.Namespace) -> int:
    _check_node_args(args, 'node')
    output_sets = [('labels',) if o == 'labels' else _Driver.OUTPUTS for o in dict.fromkeys(args.outputs)]
    report = bench_node(args.model, [parse_size(s, stride=1) for s in args.sizes], args.frames, args.threads,
                        args.warmup, output_sets=output_sets)
    emit(args, 'Node overhead and transport', node_table(report))
    return 0



def node_cpu_table(report: dict) -> str:
    rows = [['spinning (ONNX Runtime default)' if r['spinning'] else 'sleeping (the node\'s default)',
             f'{r["max_rate"]:g}' if r['max_rate'] else 'off', f'{report["rate"]:g}', r['sent'], r['received'],
             'n/a' if r['cpu_cores'] is None else f'{100 * r["cpu_cores"]:.0f} %', fmt(r['engine_ms']),
             fmt(r['node_ms'])] for r in report['rows']]
    head = ['worker threads between frames', 'max_rate (Hz)', 'camera Hz', 'frames sent', 'labels received',
            'node CPU (% of one core)', 'engine p50 ms', 'node arrival -> published p50 ms']
    return (markdown_table(head, rows) + f'\n\nModel `{os.path.basename(report["model"])}`, '
            f'{report["threads"]} ONNX Runtime threads, {report["size"][1]}x{report["size"][0]} frames at '
            f'{report["rate"]:g} Hz for {report["seconds"]:g} s after 2 s of warm-up; the node in its own process '
            '(`intra_op_spinning`, `max_rate`), CPU = its user + system time per second of the run (/proc).')


def add_node_cpu_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default=str(SHIPPED), help='the .onnx model the node runs')
    parser.add_argument('--size', default='480x640', help='camera size HxW')
    parser.add_argument('--rate', type=positive_float, default=30.0, help='camera frames per second')
    parser.add_argument('--seconds', type=positive_float, default=10.0, help='length of the measured run per setting')
    parser.add_argument('--threads', type=int, default=2, help='ONNX Runtime intra-op threads (2 or more)')
    parser.add_argument('--max-rate', type=float, default=10.0,
                        help='a third run with the node limited to this many frames per second (0: none)')
    parser.add_argument('--markdown', default=None, help='also write the table to this Markdown file')


def run_node_cpu(args: argparse.Namespace) -> int:
    if args.threads < 2:
        raise UserError(f'--threads must be 2 or more (one thread has no worker threads to spin), got {args.threads}')
    if not 0 <= args.max_rate <= 1000:
        raise UserError(f'--max-rate must be 0 (no limited run) to 1000 frames per second, got {args.max_rate:g}')
    _check_node_args(args, 'node-cpu')
    report = bench_node_cpu(args.model, parse_size(args.size, stride=1), args.rate, args.seconds, args.threads,
                            max_rate=args.max_rate)
    emit(args, 'The node\'s CPU at a camera rate: ONNX Runtime worker threads sleeping or spinning, max_rate',
         node_cpu_table(report))
    return 0
