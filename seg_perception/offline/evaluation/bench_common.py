"""What the ``seg-perception bench`` sub-commands share: timing (median of repeats after warm-up, candidates
interleaved so they see the same machine load), Markdown tables, ``--markdown FILE`` output.

Benchmarks are commands, never timed asserts: compare ratios taken inside one run, not milliseconds across
runs or machines."""
import argparse
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ..argtypes import non_negative_int, positive_int

if TYPE_CHECKING:
    import onnxruntime as ort


def worker_spinning(threads: int) -> bool | None:
    """Whether a benchmark's sessions let ONNX Runtime's intra-op workers busy-wait between runs: not with 2+
    threads (``False``, as the node runs by default: its ``intra_op_spinning`` is false), else ONNX Runtime's
    default (``None``). A benchmark takes turns between sessions in one process, and a spinning worker of one
    steals the CPU of the next one's run, even after an untimed priming run: TopFormer-tiny and -base at 256x320,
    2 threads, taking turns 3.1 -> 8.0 and 6.3 -> 14.2 ms (each alone -> interleaved, primed); with the workers
    sleeping 4.6 -> 5.3 and 8.6 -> 9.2 ms (session 36)."""
    return False if threads > 1 else None


def bench_session(source: str | bytes, threads: int, hw: tuple | None = None,
                  profile_prefix: str | None = None) -> 'ort.InferenceSession':
    """A CPU session (workers sleeping between runs with 2+ threads: :func:`worker_spinning`); with ``hw``, its
    ``images`` height and width fixed to it as the engine opens its session (``runtime.engine.fix_input_size``:
    ONNX Runtime folds the graph's shape arithmetic); with ``profile_prefix``, ONNX Runtime's profiler on
    (``end_profiling()`` names its file)."""
    import onnxruntime as ort

    from ...runtime.engine import fix_input_size, session_options
    opts = session_options(threads, 1, worker_spinning(threads))
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if hw is not None:
        probe_opts = ort.SessionOptions()
        probe_opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        probe = ort.InferenceSession(source, sess_options=probe_opts, providers=['CPUExecutionProvider'])
        images = next((i for i in probe.get_inputs() if i.name == 'images'), None)
        if images is not None:
            fix_input_size(opts, images.shape, hw)
    return ort.InferenceSession(source, sess_options=opts, providers=['CPUExecutionProvider'])


def interleaved_medians(candidates: dict, warmup: int = 2, repeat: int = 7,
                        clock: Callable[[], float] = time.perf_counter, prime: bool = False) -> dict:
    """``{name: fn}`` -> ``{name: median ms}``: every fn runs ``warmup`` times, then the fns take turns
    ``repeat`` rounds (so a burst of load hits all of them alike). ``clock``: ``time.perf_counter`` (wall) or
    ``time.thread_time`` (this thread's CPU time: with one ONNX Runtime thread the graph runs on the calling
    thread, so other processes' load does not inflate it). ``prime``: each timed call comes right after an
    untimed call of the same fn, as in a steady stream of frames: where one candidate is so heavy that it evicts
    the caches of the one timed after it (``bench peer``: the 150-class official-style graph, 0.3-0.6 s and 157 MB
    of output). Priming does not stop the spinning workers of 2+ thread sessions from competing with the next
    candidate: open them with :func:`worker_spinning`'s setting."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for _ in range(max(1, repeat)):
        for name, fn in candidates.items():
            if prime:
                fn()
            start = clock()
            fn()
            times[name].append((clock() - start) * 1e3)
    return {name: float(np.median(v)) for name, v in times.items()}


def markdown_table(headers: list, rows: list) -> str:
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def fmt(value: float | None, digits: int = 2) -> str:
    return 'n/a' if value is None or not np.isfinite(value) else f'{value:.{digits}f}'


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return 'n/a' if a is None or not b else f'{a / b:.{digits}f}'


def machine_line() -> str:
    """One line naming the machine (CPU model, cores) and the ONNX Runtime / numpy versions."""
    import os

    import onnxruntime as ort
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return (f'{cpu}, {os.cpu_count()} logical CPUs, {platform.machine()}, Python {platform.python_version()}, '
            f'ONNX Runtime {ort.__version__}, numpy {np.__version__}')


def add_common_arguments(parser: argparse.ArgumentParser, warmup: int = 2, repeat: int = 7) -> None:
    parser.add_argument('--warmup', type=non_negative_int, default=warmup, help='untimed runs of each candidate first')
    parser.add_argument('--repeat', type=positive_int, default=repeat,
                        help='timed rounds (candidates interleaved); the table shows the median')
    parser.add_argument('--markdown', default=None, help='also write the tables to this Markdown file')


def command_line(args: argparse.Namespace) -> str:
    """The ``seg-perception bench`` command that reproduces ``args`` (every option spelled out)."""
    words = ['seg-perception', 'bench', args.benchmark]
    for key, value in vars(args).items():
        if key in ('benchmark', 'bench_run', 'markdown') or value is None or value is False:
            continue
        words.append('--' + key.replace('_', '-'))
        if value is not True:
            words.extend(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return ' '.join(words)


def emit(args: argparse.Namespace, title: str, body: str) -> None:
    """Print ``body`` under ``title``; with ``--markdown`` also write it (with the command and machine)."""
    text = f'## {title}\n\n{body}\n\nMachine: {machine_line()}\n'
    print(text)
    if getattr(args, 'markdown', None):
        command = command_line(args)
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f'{text}\nCommand: `{command}`\n')


def parse_size(text: str, stride: int = 32, pad: bool = False) -> tuple:
    """'HxW' -> (H, W); with ``pad`` a size that is not a multiple of ``stride`` is rounded up to one (what the
    engine does for a dynamic model running at the camera's own size: 720x1280 runs as 736x1280)."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise UserError(f'size {text!r}: expected HxW, e.g. 480x640') from None
    if h <= 0 or w <= 0:
        raise UserError(f'size {text!r}: H and W must be positive')
    if pad:
        return -(-h // stride) * stride, -(-w // stride) * stride
    if h % stride or w % stride:
        raise UserError(f'size {text!r}: H and W must be multiples of {stride}')
    return h, w


def complexity_halves(frames: list, difficulty: Sequence[float]) -> dict:
    """``{'all', 'easy half', 'cluttered half'}`` -> frames, split at the median of ``difficulty`` (one value a
    frame; ties keep their order)."""
    order = np.argsort(np.asarray(difficulty, np.float64), kind='stable')
    half = len(frames) // 2
    groups = {'all': frames}
    if half:
        groups['easy half'] = [frames[i] for i in order[:half]]
        groups['cluttered half'] = [frames[i] for i in order[half:]]
    return groups
