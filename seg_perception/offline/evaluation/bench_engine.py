"""``seg-perception bench engine | peak | peer``: the network's latency and throughput, and full-resolution labels.

``bench engine``: per model, network size and thread count, the network (image tensor in, 1/8 logits out) in
ONNX Runtime fp32, ONNX Runtime int8 (static QDQ) and PyTorch eager on the same architecture with the same
thread count, interleaved; GMACs (``flops.count_macs``), achieved GFLOP/s (2 MACs / latency) and its share of
this machine's measured matrix-multiply peak (``bench peak``). Models: a shipped ``.onnx`` file (its
``_int8`` twin when there is one; PyTorch, and a plain ``torch.onnx.export`` of a logits file, run the same
architecture with random weights: latency does not depend on the weights) or a zoo name (``topformer_tiny``,
``seaformer_small:150``, ``rtformer_slim:19``; random weights, exported with a plain ``torch.onnx.export`` and
quantized on sample frames, cached under ``~/.cache/seg_perception/bench``). Every ONNX Runtime session, here
and in ``bench peer``, is opened as the engine opens its own: the graph's height and width fixed to the size
timed (``runtime.engine.fix_input_size``).

``bench peak``: float32 matrix multiply (1024^3) GFLOP/s in ONNX Runtime (MatMul, 1 and 2 threads) and numpy.

``bench peer``: labels at full resolution. "official-style" is the export the official code and our exporter
made until now: the 1/8 logits upsampled bilinearly to the input size inside the graph, then argmax and max
softmax; "network" is the same plain ``torch.onnx.export`` ending at the 1/8 logits (the issue's baseline).
"ours": the graph stops at the 1/8 logits as ``export --head logits`` writes it (Resize nodes as matrix
products; above 8 classes per-pixel logits; its own network time is a column), then
:class:`seg_perception.runtime.upsample.LogitsUpsampler` produces labels and confidence as the engine runs it
(and with its exact rule); both are compared with the exact "bilinear upsample, then argmax" labels.
6 classes: the shipped TopFormer-tiny on the sample bag's frames (real logits; the plain graphs have its
architecture with random weights: their time does not depend on the weights). 150 classes: TopFormer-tiny with
random weights for the graph timings; since random weights give no real class structure, the upsampler's time
and agreement are measured on synthetic region-structured logits of the same shape (stated in the table).
A second table runs the shipped model as deployed (camera 640x480, network 256x320): the old file (labels at
256x320, enlarged by nearest neighbour) against the logits file (labels straight at 640x480).
"""
import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..argtypes import positive_int
from .bench_common import (
    add_common_arguments,
    bench_session,
    emit,
    fmt,
    interleaved_medians,
    markdown_table,
    parse_size,
    ratio,
)
from .bench_models import SHIPPED, labels_bytes, load_bench_model, sample_frames, zoo_files

if TYPE_CHECKING:
    from ...runtime.upsample import LogitsUpsampler

DEFAULT_MODELS = (str(SHIPPED), 'topformer_tiny', 'seaformer_tiny')
MATMUL_N = 1024


# ------------------------------------------------------------------------------------------------ peak

def matmul_peak(threads_list: Sequence[int] = (1, 2), n: int = MATMUL_N, repeat: int = 7) -> dict:
    """GFLOP/s of an n^3 float32 matrix multiply: ONNX Runtime MatMul per thread count, and numpy (its BLAS,
    default threads). Returns ``{'ort': {threads: gflops}, 'numpy': gflops}``."""
    import onnx
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    b = rng.standard_normal((n, n)).astype(np.float32)
    a = rng.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node('MatMul', ['a', 'b'], ['c'])], 'matmul',
                              [helper.make_tensor_value_info('a', TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info('c', TensorProto.FLOAT, [n, n])],
                              [onnx.numpy_helper.from_array(b, 'b')])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    proto.ir_version = 8
    flop = 2.0 * n ** 3
    candidates = {('ort', t): (lambda s=bench_session(proto.SerializeToString(), t): s.run(None, {'a': a}))
                  for t in threads_list}
    candidates[('numpy', 0)] = lambda: a @ b
    ms = interleaved_medians(candidates, warmup=2, repeat=repeat, prime=True)
    return {'ort': {t: flop / ms[('ort', t)] / 1e6 for t in threads_list}, 'numpy': flop / ms[('numpy', 0)] / 1e6}


def peak_table(peak: dict) -> str:
    rows = [[f'ONNX Runtime MatMul {MATMUL_N}^3', t, fmt(g, 1)] for t, g in peak['ort'].items()]
    rows.append([f'numpy matmul {MATMUL_N}^3 (its BLAS, default threads)', 'default', fmt(peak['numpy'], 1)])
    return markdown_table(['what', 'threads', 'GFLOP/s'], rows)


def add_peak_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--threads', type=positive_int, nargs='+', default=[1, 2], help='ONNX Runtime thread counts')
    add_common_arguments(parser)


def run_peak(args: argparse.Namespace) -> int:
    emit(args, 'Matrix-multiply peak', peak_table(matmul_peak(tuple(args.threads), repeat=args.repeat)))
    return 0


# ------------------------------------------------------------------------------------------------ engine

def bench_engine(specs: Sequence[str], sizes: Sequence[tuple[int, int]], threads_list: Sequence[int],
                 int8: bool = True, torch_eager: bool = True, warmup: int = 2, repeat: int = 7) -> dict:
    """Rows of network latency (see the module doc) and the matmul peak they are compared with."""
    import torch

    from .flops import count_macs
    models = [load_bench_model(spec, int8=int8) for spec in specs]   # a bad spec stops before any timing
    peak = matmul_peak(tuple(threads_list), repeat=repeat)
    rows = []
    for bm in models:
        for size in sizes:
            macs, _ = count_macs(bm.torch_model, (1, 3, *size))
            x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
            xt = torch.from_numpy(x)
            for threads in threads_list:
                graphs = {'ort': bm.fp32, 'plain': bm.plain, 'int8': bm.int8}
                candidates = {name: lambda s=bench_session(graph, threads, size), x=x: s.run(None, {'images': x})
                              for name, graph in graphs.items() if graph}
                if torch_eager:
                    def eager(model: torch.nn.Module = bm.torch_model, threads: int = threads,
                              xt: torch.Tensor = xt) -> None:
                        torch.set_num_threads(threads)
                        with torch.inference_mode():
                            model(xt)
                    candidates['torch'] = eager
                ms = interleaved_medians(candidates, warmup, repeat, prime=threads > 1)
                gflops = 2 * macs / ms['ort'] / 1e6
                rows.append({'model': bm.name, 'size': list(size), 'threads': threads, 'gmacs': macs / 1e9,
                             'ort_ms': ms['ort'], 'plain_ms': ms.get('plain'), 'int8_ms': ms.get('int8'),
                             'torch_ms': ms.get('torch'),
                             'gflops': gflops, 'peak_gflops': peak['ort'][threads]})
                print(f'  {bm.name} {size[0]}x{size[1]} threads={threads}: ' +
                      ', '.join(f'{k} {v:.1f} ms' for k, v in ms.items()), flush=True)
    return {'rows': rows, 'peak': peak}


def engine_table(report: dict) -> str:
    rows = []
    for r in report['rows']:
        rows.append([r['model'], f'{r["size"][0]}x{r["size"][1]}', r['threads'], fmt(r['gmacs'], 3),
                     fmt(r['ort_ms']), fmt(r.get('plain_ms')), ratio(r.get('plain_ms'), r['ort_ms']),
                     fmt(r['int8_ms']), ratio(r['ort_ms'], r['int8_ms']),
                     fmt(r['torch_ms']), ratio(r['torch_ms'], r['ort_ms']), fmt(r['gflops'], 1),
                     f'{100 * r["gflops"] / r["peak_gflops"]:.0f} %'])
    head = ['model', 'size', 'threads', 'GMACs', 'ORT fp32 ms', 'plain export ms', 'speed-up over plain',
            'ORT int8 ms', 'int8 speed-up',
            'PyTorch eager ms', 'ORT speed-up vs eager', 'ORT fp32 GFLOP/s', 'of MatMul peak']
    return (markdown_table(head, rows) + '\n\nNetwork only (image tensor in, 1/8 logits out), ONNX Runtime sessions '
            'opened as the engine opens them (height and width fixed to the row\'s size), median after warm-up, '
            'candidates interleaved; GFLOP/s = 2 x MACs / ORT fp32 latency; "plain export": a plain torch.onnx.export '
            'of a model file\'s architecture (zoo rows are that export).\n\n' + peak_table(report['peak']))


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        help='.onnx files and/or zoo names arch[:classes] (e.g. seaformer_small:150)')
    parser.add_argument('--sizes', nargs='+', default=['480x640', '512x512'],
                        help='network input sizes HxW (also try 720x1280 512x1024); sizes that are not multiples '
                             'of 32 are padded up as the engine does (720x1280 runs as 736x1280)')
    parser.add_argument('--threads', type=positive_int, nargs='+', default=[1, 2], help='intra-op thread counts')
    parser.add_argument('--no-int8', action='store_true', help='skip the int8 column')
    parser.add_argument('--no-torch', action='store_true', help='skip the PyTorch eager column')
    add_common_arguments(parser, repeat=5)


def run_engine(args: argparse.Namespace) -> int:
    sizes = [parse_size(s, pad=True) for s in args.sizes]
    report = bench_engine(args.models, sizes, args.threads, int8=not args.no_int8, torch_eager=not args.no_torch,
                          warmup=args.warmup, repeat=args.repeat)
    emit(args, 'Network latency: ONNX Runtime fp32 / int8 vs PyTorch eager', engine_table(report))
    return 0


# ------------------------------------------------------------------------------------------------ peer

def synthetic_logits(num_classes: int, coarse_hw: tuple, regions: int = 24, seed: int = 0,
                     stride: int = 8) -> np.ndarray:
    """(C, h, w) float32 logits with the structure of a trained model's: a full-resolution image split into
    ``regions`` Voronoi regions, each with a class and a confusable runner-up, averaged down by ``stride``
    (so boundary cells mix classes) plus smooth low-resolution noise on every class."""
    import cv2
    rng = np.random.default_rng(seed)
    h, w = coarse_hw
    big_h, big_w = h * stride, w * stride
    centres = rng.uniform(0, 1, (regions, 2)) * (big_h, big_w)
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    owner = np.argmin((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2, 0)
    classes = rng.choice(num_classes, size=(regions, 2), replace=num_classes < 2 * regions)
    logits = np.zeros((num_classes, h, w), np.float32)
    for r in range(regions):
        share = cv2.resize((owner == r).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        logits[classes[r, 0]] += 8 * share
        logits[classes[r, 1]] += 5 * share
    noise = rng.standard_normal((num_classes, h // 4 + 2, w // 4 + 2)).astype(np.float32)
    logits += 1.5 * np.stack([cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) for n in noise])
    return logits


def exact_labels(logits: np.ndarray, upsampler: 'LogitsUpsampler') -> tuple:
    """The reference labels and max softmax: every class interpolated bilinearly, then argmax."""
    from ...runtime.upsample import bilinear_logits
    full = bilinear_logits(logits, upsampler.rows, upsampler.cols)
    labels = full.argmax(axis=0)
    full -= np.take_along_axis(full, labels[None], 0)
    return labels, 1.0 / np.exp(full).sum(axis=0)


def our_export_bytes(path: str | os.PathLike) -> bytes:
    """A plain logits file as ``seg-perception export --head logits`` ends a model with more than 8 classes: its
    Resize nodes as matrix products (``graph/resize_matmul.py``) and its logits as per-pixel rows (N, h, w, C)."""
    import onnx

    from ..graph.logits_head import per_pixel_logits
    from ..graph.resize_matmul import resize_as_matmul
    proto = onnx.load(str(path))
    resize_as_matmul(proto)
    per_pixel_logits(proto.graph)
    return proto.SerializeToString()


def _peer_row(name, classes, size, threads, logits_sess, labels_sess, x, logits_for_upsampler, note, warmup,
              repeat, our_sess, per_pixel):
    """One row: the plain export's network (``logits_sess``) and official-style graph (``labels_sess``) against
    our file's network (``our_sess``, per-pixel logits if ``per_pixel``) followed by the upsampler, which reads
    ``logits_for_upsampler`` as the engine holds that file's output."""
    from ...runtime.upsample import LogitsUpsampler
    coarse = logits_for_upsampler.shape[1:]
    up = LogitsUpsampler.for_resize(coarse, size, exact=False)   # the engine's default
    exact_up = LogitsUpsampler.for_resize(coarse, size)
    ours_logits = logits_for_upsampler
    if per_pixel:   # a (C, h, w) view of per-pixel rows, as the engine holds an nhwc output
        ours_logits = np.ascontiguousarray(logits_for_upsampler.transpose(1, 2, 0)).transpose(2, 0, 1)
    # as the engine does it: the upsampler right after the run
    candidates = {
        'net': lambda: logits_sess.run(None, {'images': x}),
        'official': lambda: labels_sess.run(None, {'images': x}),
        'our_net': lambda: our_sess.run(None, {'images': x}),
        'ours': lambda: (our_sess.run(None, {'images': x}), up(ours_logits)),
    }
    if classes > LogitsUpsampler.FEW:   # with fewer classes the engine's default is the exact rule already
        candidates['exact'] = lambda: (our_sess.run(None, {'images': x}), exact_up(ours_logits))
    # primed, one thread too: 'official' would otherwise evict the caches of the candidate timed after it
    ms = interleaved_medians(candidates, warmup, repeat, prime=True)
    ours, conf = up(ours_logits)
    ref, ref_conf = exact_labels(logits_for_upsampler, exact_up)
    return {'model': name, 'classes': classes, 'size': list(size), 'threads': threads, 'net_ms': ms['net'],
            'our_net_ms': ms['our_net'], 'official_ms': ms['official'], 'ours_ms': ms['ours'],
            'exact_ms': ms.get('exact', ms['ours']),
            'agreement': float((ours == ref).mean()), 'conf_mad': float(np.abs(conf - ref_conf).mean()),
            'ambiguous': up.counters['ambiguous_fraction'], 'logits': note}


def bench_peer(sizes: Sequence[tuple[int, int]], threads_list: Sequence[int], warmup: int = 2, repeat: int = 7,
               frames: int = 4) -> dict:
    import cv2

    from ...runtime.engine import SegmentationEngine, compute_geometry, preprocess
    calib = sample_frames(frames)
    rows = []
    # 6 classes: the shipped, trained model on real frames (the plain exports of its architecture for the network
    # and the official-style graph: their time does not depend on the weights)
    meta6 = SegmentationEngine(str(SHIPPED)).meta
    _, plain6, _, plain6_labels = zoo_files('topformer_tiny', 6, int8=False)
    for size in sizes:
        for threads in threads_list:
            net, off = bench_session(str(plain6), threads, size), bench_session(str(plain6_labels), threads, size)
            ours = bench_session(SHIPPED.read_bytes(), threads, size)
            per_frame = []
            for rgb in calib:
                x = preprocess(rgb, compute_geometry(rgb.shape[:2], size, 'resize'), meta6['mean'], meta6['std'])
                logits = ours.run(None, {'images': x})[0][0]
                per_frame.append(_peer_row('topformer_tiny_scenes (trained)', 6, size, threads, net, off, x, logits,
                                           'real (sample bag frames)', warmup, repeat, ours, per_pixel=False))
            row = dict(per_frame[0])
            for key in ('net_ms', 'our_net_ms', 'official_ms', 'ours_ms', 'exact_ms', 'agreement', 'conf_mad',
                        'ambiguous'):
                row[key] = float(np.median([r[key] for r in per_frame])) if key.endswith('ms') else \
                    float(np.mean([r[key] for r in per_frame]))
            row['agreement_min'] = min(r['agreement'] for r in per_frame)
            rows.append(row)
    # 150 classes: TopFormer-tiny graphs (random weights), synthetic structured logits for the upsampler
    model, fp32, _, labels = zoo_files('topformer_tiny', 150, int8=False)
    del model
    our_export = our_export_bytes(fp32)
    for size in sizes:
        for threads in threads_list:
            net, off = bench_session(str(fp32), threads, size), bench_session(str(labels), threads, size)
            ours = bench_session(our_export, threads, size)
            x = preprocess(cv2.resize(calib[0], size[::-1]), compute_geometry(size, size, 'resize'),
                           meta6['mean'], meta6['std'])
            shape = net.run(None, {'images': x})[0].shape[2:]
            per_seed = [_peer_row('topformer_tiny (ADE-size head)', 150, size, threads, net, off, x,
                                  synthetic_logits(150, shape, seed=s), 'synthetic (24 regions)', warmup, repeat,
                                  ours, per_pixel=True)
                        for s in range(frames)]
            row = dict(per_seed[0])
            for key in ('net_ms', 'our_net_ms', 'official_ms', 'ours_ms', 'exact_ms'):
                row[key] = float(np.median([r[key] for r in per_seed]))
            for key in ('agreement', 'conf_mad', 'ambiguous'):
                row[key] = float(np.mean([r[key] for r in per_seed]))
            row['agreement_min'] = min(r['agreement'] for r in per_seed)
            rows.append(row)
    return {'rows': rows, 'deployed': bench_deployed(warmup, repeat)}


def bench_deployed(warmup: int = 2, repeat: int = 7, threads: int = 1) -> dict:
    """The shipped model as the node runs it on 640x480 frames: labels file vs logits file, through the engine."""
    import tempfile

    from ...runtime.engine import SegmentationEngine, compute_geometry
    frames = sample_frames(4)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, 'labels.onnx').write_bytes(labels_bytes(SHIPPED))
        old = SegmentationEngine(str(Path(tmp, 'labels.onnx')), intra_op_threads=threads)
        new = SegmentationEngine(str(SHIPPED), intra_op_threads=threads)
        times = {'old': [], 'new': []}
        agree = {'old': [], 'new': []}
        for rgb in frames:
            ms = interleaved_medians({'old': lambda rgb=rgb: old.infer(rgb), 'new': lambda rgb=rgb: new.infer(rgb)},
                                     warmup, repeat)
            for k in ms:
                times[k].append(ms[k])
            r_old, r_new = old.infer(rgb), new.infer(rgb)
            geometry = compute_geometry(rgb.shape[:2], new.net_hw, new.meta['resize_mode'])
            ref, _ = exact_labels(r_new.logits, new._upsampler(r_new.logits.shape[1:], geometry))
            agree['old'].append((r_old.labels == ref).mean())
            agree['new'].append((r_new.labels == ref).mean())
    return {'threads': threads, 'camera': list(frames[0].shape[:2]), 'net': list(new.net_hw),
            **{f'{k}_ms': float(np.median(v)) for k, v in times.items()},
            **{f'{k}_agreement': float(np.mean(v)) for k, v in agree.items()}}


def peer_table(report: dict) -> str:
    rows = []
    for r in report['rows']:
        rows.append([r['model'], r['classes'], f'{r["size"][0]}x{r["size"][1]}', r['threads'], fmt(r['net_ms']),
                     fmt(r['official_ms']), ratio(r['official_ms'], r['net_ms']), fmt(r['our_net_ms']),
                     fmt(r['ours_ms']), ratio(r['ours_ms'], r['net_ms']), ratio(r['ours_ms'], r['our_net_ms']),
                     fmt(r['exact_ms']), ratio(r['exact_ms'], r['net_ms']),
                     f'{100 * r["agreement"]:.3f} (min {100 * r["agreement_min"]:.3f})',
                     f'{100 * r["ambiguous"]:.1f} %', fmt(r['conf_mad'], 4), r['logits']])
    head = ['model', 'classes', 'size', 'threads', 'network to 1/8 logits ms', 'official-style ms', 'x network',
            'our network ms', 'ours ms', 'x network', 'x our network', 'ours, exact rule ms', 'x network',
            'ours = exact labels %', 'pixels refined',
            'confidence mean abs diff', 'logits for ours']
    d = report['deployed']
    deployed = markdown_table(
        ['file', 'engine ms (pre + network + post)', 'labels = exact bilinear at camera size %'],
        [['topformer_tiny_scenes, labels head (256x320 labels, nearest to camera)', fmt(d['old_ms']),
          f'{100 * d["old_agreement"]:.2f}'],
         ['topformer_tiny_scenes, logits head + LogitsUpsampler (labels at camera size)', fmt(d['new_ms']),
          f'{100 * d["new_agreement"]:.2f}']])
    return (markdown_table(head, rows) + '\n\n"official-style": 1/8 logits upsampled to the input size in the graph, '
            'argmax and max softmax (ONNX Runtime), and "network" the same plain torch.onnx.export ending at the 1/8 '
            'logits; "our network": the graph as `export --head logits` writes it (Resize nodes as matrix products; '
            '150 classes: per-pixel logits; 6 classes: the shipped file); "ours": '
            'our network, then `LogitsUpsampler` as the engine runs it (labels exact up to 8 classes; above, each '
            'ambiguous cell decided by its corners\' two best classes), confidence = interpolated coarse max softmax; '
            '"exact rule": the engine\'s `exact_labels`. x network = time / network time.\n\n'
            f'Deployed: camera {d["camera"][0]}x{d["camera"][1]}, network {d["net"][0]}x{d["net"][1]}, '
            f'{d["threads"]} thread, sample-bag frames:\n\n' + deployed)


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--sizes', nargs='+', default=['480x640', '512x512'], help='input sizes HxW')
    parser.add_argument('--threads', type=positive_int, nargs='+', default=[2], help='intra-op thread counts')
    parser.add_argument('--frames', type=positive_int, default=4, help='frames (6 classes) / synthetic seeds (150)')
    add_common_arguments(parser, repeat=5)


def run_peer(args: argparse.Namespace) -> int:
    report = bench_peer([parse_size(s) for s in args.sizes], args.threads, args.warmup, args.repeat, args.frames)
    emit(args, 'Full-resolution labels: official-style export vs ours', peer_table(report))
    return 0
