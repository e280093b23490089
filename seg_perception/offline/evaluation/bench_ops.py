"""``seg-perception bench ops``: where the time goes inside the graph, fp32 beside int8 (ONNX Runtime profiling).

Both graphs run ``--runs`` times with ``enable_profiling`` after warm-up (height and width fixed, as the engine
runs them); the per-node kernel times of the profile are summed per operator type and divided by the runs, and
the same graphs are timed again without the profiler. In the int8 graph ONNX Runtime fuses the QDQ
pattern into ``QLinear*`` / ``*Integer*`` kernels: their rows are shown under the float operator they replace
(``QLinearConv`` under ``Conv``), so each row compares the same work; ``QuantizeLinear`` / ``DequantizeLinear``
that stay in the graph are the price of switching between float and int8 and get their own rows.
"""
import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..argtypes import non_negative_int, positive_int
from .bench_common import bench_session, emit, fmt, markdown_table, ratio
from .bench_models import SHIPPED, load_bench_model

# int8 kernels -> the float operator they stand for
_INT8_BASE = {'QLinearConv': 'Conv', 'ConvInteger': 'Conv', 'QLinearMatMul': 'MatMul', 'MatMulInteger': 'MatMul',
              'QLinearAdd': 'Add', 'QLinearMul': 'Mul', 'QLinearSigmoid': 'Sigmoid',
              'QLinearAveragePool': 'AveragePool',
              'QLinearGlobalAveragePool': 'GlobalAveragePool', 'QLinearConcat': 'Concat',
              'QLinearLeakyRelu': 'LeakyRelu', 'QLinearSoftmax': 'Softmax', 'QGemm': 'Gemm',
              'DynamicQuantizeMatMul': 'MatMul', 'MatMulIntegerToFloat': 'MatMul'}


def op_profile(graph: bytes, x: np.ndarray, threads: int, runs: int, warmup: int) -> tuple[dict, float]:
    """``({op type: ms per run}, ms per unprofiled run)`` of one graph at ``x``'s size, fixed as the engine fixes
    it: kernel times from ONNX Runtime's profiler, and the median wall time of ``runs`` runs without it (the
    profiler's own cost per node inflates the kernel times of small nodes; the table shows both)."""
    size = x.shape[2:]
    plain = bench_session(graph, threads, size)
    for _ in range(warmup):
        plain.run(None, {'images': x})
    wall = []
    for _ in range(runs):
        start = time.perf_counter()
        plain.run(None, {'images': x})
        wall.append((time.perf_counter() - start) * 1e3)
    with tempfile.TemporaryDirectory() as tmp:
        session = bench_session(graph, threads, size, profile_prefix=str(Path(tmp, 'profile')))
        for _ in range(warmup + runs):
            session.run(None, {'images': x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node = defaultdict(list)
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time'):
            per_node[(e['args'].get('op_name', '?'), e['name'])].append(e['dur'] / 1e3)
    totals = defaultdict(float)
    for (op, _), durations in per_node.items():
        totals[op] += sum(sorted(durations)[:runs])   # the fastest `runs` calls: drops the warm-up ones
    return {op: total / runs for op, total in totals.items()}, float(np.median(wall))


def bench_ops(spec: str, size: tuple, threads: int = 1, runs: int = 10, warmup: int = 3) -> dict:
    bm = load_bench_model(spec, int8=True)
    if bm.int8 is None:
        raise UserError(f'{spec}: no int8 twin (a <name>_int8.onnx beside the file, or a zoo name)')
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    fp32, fp32_run = op_profile(bm.fp32, x, threads, runs, warmup)
    int8_raw, int8_run = op_profile(bm.int8, x, threads, runs, warmup)
    int8 = defaultdict(float)
    for op, ms in int8_raw.items():
        int8[_INT8_BASE.get(op, op)] += ms
    return {'model': bm.name, 'size': list(size), 'threads': threads, 'runs': runs, 'fp32': fp32,
            'int8': dict(int8), 'int8_kernels': sorted(int8_raw), 'run_ms': {'fp32': fp32_run, 'int8': int8_run}}


def ops_table(report: dict) -> str:
    fp32, int8 = report['fp32'], report['int8']
    ops = sorted(set(fp32) | set(int8), key=lambda op: -max(fp32.get(op, 0), int8.get(op, 0)))
    total32, total8 = sum(fp32.values()), sum(int8.values())
    rows = [[op, fmt(fp32.get(op)), f'{100 * fp32.get(op, 0) / total32:.0f} %', fmt(int8.get(op)),
             ratio(fp32.get(op), int8.get(op))] for op in ops if max(fp32.get(op, 0), int8.get(op, 0)) >= 0.01]
    rows.append(['**total (kernels)**', fmt(total32), '100 %', fmt(total8), ratio(total32, total8)])
    run = report['run_ms']
    rows.append(['**one run, profiler off (wall, median)**', fmt(run['fp32']), '', fmt(run['int8']),
                 ratio(run['fp32'], run['int8'])])
    return (markdown_table(['operator', 'fp32 ms', 'fp32 share', 'int8 ms', 'int8 speed-up'], rows)
            + f'\n\n`{report["model"]}` at {report["size"][0]}x{report["size"][1]}, {report["threads"]} thread(s), '
            f'kernel time per run from ONNX Runtime profiling ({report["runs"]} runs; the graph\'s height and width '
            'fixed as the engine fixes them); the last row times the same sessions without the profiler, whose own '
            'cost per node inflates small nodes\' kernel times (read their shares as upper bounds); int8 kernels: '
            + ', '.join(report['int8_kernels']))


def add_ops_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', default=str(SHIPPED), help='.onnx file with an _int8 twin, or a zoo name')
    parser.add_argument('--size', default='256x320', help='network input HxW (multiples of 32)')
    parser.add_argument('--threads', type=positive_int, default=1, help='intra-op threads')
    parser.add_argument('--runs', type=positive_int, default=10, help='profiled runs (after warm-up)')
    parser.add_argument('--warmup', type=non_negative_int, default=3, help='unprofiled runs first')
    parser.add_argument('--markdown', default=None, help='also write the table to this Markdown file')


def run_ops(args: argparse.Namespace) -> int:
    from .bench_common import parse_size
    report = bench_ops(args.model, parse_size(args.size), args.threads, args.runs, args.warmup)
    emit(args, 'Per-operator time, fp32 vs int8', ops_table(report))
    return 0
