"""``seg-perception bench node``: the node's own overhead and the transport, on real rclpy + DDS.

The real node (``python -m seg_perception.node``) in its own process, as on a robot, started once per camera
size in its own namespace; this process publishes a camera frame, waits until labels, colour and confidence for
it have arrived, then sends the next (no frame is ever dropped or queued). Fast DDS uses the package's
large-data profile on both sides (unless the environment already chooses one). Reported:

* node: arrival in the image callback -> all outputs published (the node's ``input_to_output_p50_ms`` in its
  /diagnostics, p50 over every frame of that size including the warm-up ones), and the engine's share of it
  (``latency_p50_ms``: pre-processing + network + post-processing);
* bare engine: ``SegmentationEngine.infer`` on the same frame, same model and threads, called directly while the
  node is idle;
* end to end: driver's publish -> labels received by the driver (DDS, executor and the node together);
* the node's per-frame steps timed alone on the same frame: message -> array, confidence -> mono8, colour mask,
  arrays -> serialized messages (``image_cdr``; what the node does around ``infer``).

Frames: the sample bag's 640x480 frames, and the same frames resized to the other ``--sizes``.
"""
import os
import threading
import time

import numpy as np

from ...errors import UserError
from .bench_common import emit, fmt, markdown_table, parse_size, ratio
from .bench_models import SHIPPED, sample_frames


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


def _node_process(model, name, namespace, threads, log):
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != '_ROS_WHEELS_BOOTSTRAP_COMPLETE'}
    cmd = [sys.executable, '-m', 'seg_perception.node', '--ros-args', '-r', f'__node:={name}',
           '-r', f'__ns:={namespace}', '-p', f'model_path:={os.path.abspath(model)}',
           '-p', f'intra_op_threads:={int(threads)}', '-p', 'stats_window:=600.0', '-p', 'diagnostics_period:=0.5',
           '-p', "providers:=['CPUExecutionProvider']"]
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


def bench_node(model, sizes, frames=15, threads=1, warmup=3, timeout=60.0) -> dict:
    """The node in its own process (as on a robot), one start per camera size; this process publishes the
    frames, receives the outputs and reads the node's own statistics from its /diagnostics."""
    import tempfile

    import cv2
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from ...launch_support import large_data_env
    from ...paths import find_share_file
    from ...runtime.engine import SegmentationEngine
    from ...runtime.imgmsg import array_to_image_fields
    profile = find_share_file('config', 'fastdds_large_data.xml')
    if profile:   # both processes need the large-data transport for camera-sized images
        os.environ.update(large_data_env(profile))
    base = sample_frames(frames)
    bare = SegmentationEngine(str(model), intra_op_threads=threads, providers=['CPUExecutionProvider'])
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    name, namespace = f'seg_bench_{os.getpid()}', f'/seg_bench_{os.getpid()}'
    driver = rclpy.create_node(f'{name}_driver', context=ctx)
    arrived, diag = {}, {}
    done = threading.Condition()

    def on_output(msg, output):
        now = time.perf_counter()
        with done:
            arrived.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), {})[output] = now
            done.notify_all()

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.startswith(f'{name}:'):
                with done:
                    diag.clear()
                    diag.update({kv.key: kv.value for kv in status.values})
                    done.notify_all()

    subs = [driver.create_subscription(Image, f'{namespace}/segmentation/{o}', lambda m, o=o: on_output(m, o), 10)
            for o in ('labels', 'color', 'confidence')]
    driver.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    pub = driver.create_publisher(Image, f'{namespace}/image', qos_profile_sensor_data)
    executor.add_node(driver)
    threading.Thread(target=executor.spin, daemon=True).start()
    rows, stamp = [], 0
    try:
        for size in sizes:
            images = [np.ascontiguousarray(cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA))
                      if f.shape[:2] != tuple(size) else f for f in base]
            with tempfile.TemporaryFile('w+') as log:
                proc = _node_process(model, name, namespace, threads, log)
                try:
                    end = time.monotonic() + timeout
                    while not (pub.get_subscription_count() and all(s.get_publisher_count() for s in subs)):
                        if proc.poll() is not None or time.monotonic() > end:
                            log.seek(0)
                            raise UserError(f'the node did not start or was not discovered in {timeout:.0f} s: '
                                            + ' | '.join(log.read().strip().splitlines()[-3:]))
                        time.sleep(0.05)
                    e2e, e2e_all, bare_ms, steps = [], [], [], []
                    for i, rgb in enumerate([images[0]] * warmup + images):
                        stamp += 1
                        msg = Image(**array_to_image_fields(rgb, 'rgb8'))
                        msg.header.stamp.sec, msg.header.frame_id = stamp, 'camera'
                        t0 = time.perf_counter()
                        pub.publish(msg)
                        end = time.monotonic() + timeout
                        with done:   # best effort: a frame lost before discovery settles is sent again
                            while not done.wait_for(lambda k=(stamp, 0): len(arrived.get(k, {})) == 3, 2.0):
                                if time.monotonic() > end:
                                    raise UserError(f'no outputs from the node for a {size[1]}x{size[0]} frame '
                                                    f'in {timeout:.0f} s')
                                if not arrived.get((stamp, 0)):
                                    t0 = time.perf_counter()
                                    pub.publish(msg)
                            received = arrived.pop((stamp, 0))
                        result = bare.infer(rgb)
                        if i >= warmup:
                            e2e.append((received['labels'] - t0) * 1e3)
                            e2e_all.append((max(received.values()) - t0) * 1e3)
                            bare_ms.append(result.latency_ms)
                            steps.append(_steps(bare, rgb, result))
                    sent = warmup + len(images)
                    with done:
                        done.wait_for(lambda n=sent: int(diag.get('frames_processed', 0)) >= n, timeout)
                        stats = dict(diag)
                finally:
                    _stop(proc)
            rows.append({'size': list(size), 'frames': len(e2e),
                         'node_ms': float(stats.get('input_to_output_p50_ms', 'nan')),
                         'node_engine_ms': float(stats.get('latency_p50_ms', 'nan')), 'bare_ms': _median(bare_ms),
                         'e2e_ms': _median(e2e), 'e2e_all_ms': _median(e2e_all),
                         **{k: _median([s[k] for s in steps]) for k in steps[0]}})
            r = rows[-1]
            print(f'  {size[1]}x{size[0]}: node {r["node_ms"]:.1f} ms, bare engine {r["bare_ms"]:.1f} ms, '
                  f'end to end {r["e2e_ms"]:.1f} ms', flush=True)
    finally:
        executor.shutdown()
        driver.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return {'model': str(model), 'threads': threads, 'rows': rows}


def node_table(report: dict) -> str:
    rows = []
    for r in report['rows']:
        rows.append([f'{r["size"][1]}x{r["size"][0]}', r['frames'], fmt(r['bare_ms']), fmt(r['node_engine_ms']),
                     fmt(r['node_ms']), ratio(r['node_ms'], r['bare_ms']), fmt(r['e2e_ms']), fmt(r['e2e_all_ms']),
                     fmt(r['e2e_all_ms'] - r['node_ms'] if r['e2e_all_ms'] and r['node_ms'] else None),
                     fmt(r['msg_to_array']), fmt(r['confidence_mono8']), fmt(r['colorize']), fmt(r['to_messages'])])
    head = ['camera', 'frames', 'bare engine ms', 'engine in node ms', 'node arrival -> published ms',
            'node / bare', 'end to end: labels ms', 'end to end: all 3 ms', 'transport + executor ms',
            'msg -> array ms', 'confidence -> mono8 ms', 'colour mask ms', 'arrays -> 3 serialized messages ms']
    return (markdown_table(head, rows) + f'\n\nModel `{os.path.basename(report["model"])}`, '
            f'{report["threads"]} ONNX Runtime thread(s), medians over the frames; the node in its own process, '
            'Fast DDS between the processes; end to end = publish -> labels (all three outputs) received; '
            'transport + executor = end to end (all 3) - node arrival -> published.')


def add_node_arguments(parser) -> None:
    parser.add_argument('--model', default=str(SHIPPED), help='the .onnx model the node runs')
    parser.add_argument('--sizes', nargs='+', default=['480x640', '720x1280'], help='camera sizes HxW')
    parser.add_argument('--frames', type=int, default=15, help='frames per size (from the sample bag)')
    parser.add_argument('--threads', type=int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--warmup', type=int, default=3, help='untimed frames first (per size)')
    parser.add_argument('--markdown', default=None, help='also write the table to this Markdown file')


def run_node(args) -> int:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        raise UserError('bench node needs rclpy (pip install ".[ros]" or source a ROS 2 install)') from None
    if not os.path.isfile(args.model):
        raise UserError(f'model {args.model}: no such file')
    report = bench_node(args.model, [parse_size(s, stride=1) for s in args.sizes], args.frames, args.threads,
                        args.warmup)
    emit(args, 'Node overhead and transport', node_table(report))
    return 0

