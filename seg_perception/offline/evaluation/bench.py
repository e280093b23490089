"""``seg-perception bench <name>``: benchmarks printed as tables (one sub-command per benchmark).

``bench tokenpass``: a token-pass model against its static twin on the same frames, in one run::

    seg-perception bench tokenpass --model tp.onnx --static static.onnx --data data/scenes_val [--threshold 0.96]

Both models run through the runtime engine (:class:`seg_perception.runtime.engine.SegmentationEngine`, the
node's inference path) with ONNX Runtime, frame by frame and interleaved so that both see the same machine
load. Reported for all frames, the easy half and the cluttered half: MACs per frame (the token-pass model's
``macs`` output; the static model's ``static_macs`` metadata), ONNX Runtime latency per frame (p50 and mean
of the session run, ``model_ms``), their token-pass / static ratios, kept-token fraction and the mIoU of both.
Halves: by the frames' clutter level (the ``meta/<name>.json`` files ``seg-perception render`` writes) when
every frame has one, else by the token-pass model's mean kept fraction (more tokens kept = harder frame).

``--data`` is a rendered dataset folder (``images/``, ``masks/``, optional ``meta/``), or anything
:func:`seg_perception.offline.data.datasets.open_dataset` opens (dataset YAML, rosbag2 with ``--image-topic`` and
``--gt-topic``; no clutter metadata there).

To add a benchmark: write ``add_<name>_arguments(parser)`` and ``run_<name>(args)`` and list them in
``BENCHMARKS``.
"""
import argparse
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ..argtypes import non_negative_int, positive_int, share
from . import bench_adaptive, bench_costmap, bench_engine, bench_node, bench_ops
from .bench_common import complexity_halves, worker_spinning
from .metrics import ConfusionMatrix

if TYPE_CHECKING:
    from ..data.datasets import SegDataset


def open_labelled(data: str | os.PathLike, image_topic: str | None = None, gt_topic: str | None = None,
                  split: str | None = None, model_names: Sequence[str] | None = None) -> 'SegDataset':
    """Anything ``open_dataset`` opens (a folder, a data YAML, a rosbag2 with its ground-truth topic); ``split``
    None: a dataset YAML's, else val. With ``model_names``, a dataset whose classes differ in number from the
    model's is refused as ``evaluate`` refuses it (benchmarks with ``--merge`` map classes themselves)."""
    from ..data.datasets import open_dataset
    from .evaluate import check_classes

    kwargs = {k: v for k, v in (('image_topic', image_topic), ('gt_topic', gt_topic)) if v}
    dataset = open_dataset(str(data), split=split, **kwargs)
    if model_names is not None:
        check_classes([str(n) for n in model_names], [str(c) for c in dataset.classes], merge_hint=False)
    return dataset


def iter_labelled_frames(dataset: 'SegDataset', limit: int = 0
                         ) -> Iterator[tuple[np.ndarray, np.ndarray, float | None]]:
    """Yield ``(rgb uint8 HxWx3, label HxW, clutter float or None)`` of an :func:`open_labelled` dataset."""
    total = len(dataset) if not limit else min(limit, len(dataset))
    for i in range(total):
        image, label = dataset[i]
        yield image, label, dataset.sample_meta(i).get('clutter')


def _latency(values):
    values = np.asarray(values, np.float64)
    return {'p50': float(np.percentile(values, 50)), 'mean': float(values.mean())} if values.size else None


def _group_summary(frames, num_classes, ignore_index, static_macs):
    out = {'frames': len(frames)}
    for key in ('tp', 'static', 'nostop'):
        confusion = ConfusionMatrix(num_classes, ignore_index)
        for f in frames:
            confusion.update(f[f'{key}_labels'], f['label'])
        out[f'{key}_miou'] = confusion.compute()['mIoU']
        out[f'{key}_ms'] = _latency([f[f'{key}_ms'] for f in frames])
    out['kept_fraction'] = float(np.mean([f['kept'] for f in frames]))
    tp_macs = [f['macs'] for f in frames if f['macs'] is not None]
    out['tp_macs'] = float(np.mean(tp_macs)) if tp_macs else None
    if not static_macs:
        nostop = [f['nostop_macs'] for f in frames if f['nostop_macs'] is not None]
        static_macs = np.mean(nostop) if nostop else None
    out['static_macs'] = float(static_macs) if static_macs else None
    return out


def bench_tokenpass(model: str | os.PathLike, static: str | os.PathLike, data: str | os.PathLike,
                    threshold: float | None = None, threads: int = 1, warmup: int = 2, limit: int = 0,
                    providers: list[str] | None = None, image_topic: str | None = None, gt_topic: str | None = None,
                    split: str | None = None, input_size: tuple[int, int] | None = None) -> dict:
    """Run both models on every frame of ``data``; returns a report dict (see :func:`tokenpass_table`).

    The token-pass model runs twice per frame: at ``threshold`` (None = its stored default) and at 1.0 (no
    stopping, same weights), so the mIoU change caused by stopping alone is reported too."""
    from ...runtime.engine import SegmentationEngine

    tp, st = (SegmentationEngine(path, providers=providers, intra_op_threads=threads, input_size=input_size,
                                 spinning=worker_spinning(threads)) for path in (model, static))
    if not tp.has_exit_threshold:
        raise UserError(f'{model}: not a token-pass model (no exit_threshold input)')
    if threshold is None:
        threshold = float(tp.meta.get('exit_threshold', 1.0))
    if tp.names != st.names:
        raise ValueError(f'the models predict different classes: {tp.names} vs {st.names}')
    ignore_index = tp.meta.get('ignore_index', 255)
    frames = []
    for rgb, label, clutter in iter_labelled_frames(open_labelled(data, image_topic, gt_topic, split, tp.names),
                                                    limit):
        if not frames:
            for _ in range(warmup):
                tp.infer(rgb, exit_threshold=threshold)
                st.infer(rgb)
        a = tp.infer(rgb, exit_threshold=threshold)
        b = st.infer(rgb)
        c = tp.infer(rgb, exit_threshold=1.0)
        kept = float(np.mean(a.kept_fraction)) if a.kept_fraction is not None else 1.0
        frames.append({'label': label, 'clutter': clutter, 'kept': kept, 'macs': a.macs,
                       'tp_labels': a.labels, 'tp_ms': a.model_ms, 'static_labels': b.labels, 'static_ms': b.model_ms,
                       'nostop_labels': c.labels, 'nostop_ms': c.model_ms, 'nostop_macs': c.macs})
    if not frames:
        raise ValueError(f'{data}: no labelled frames')
    by_clutter = all(f['clutter'] is not None for f in frames)
    groups = complexity_halves(frames, [f['clutter'] if by_clutter else f['kept'] for f in frames])
    # the stored static MACs hold at the stored input size only; elsewhere the no-stop run counts them
    stored_size = st.net_hw == tuple(st.meta['input_size'])
    static_macs = (st.static_macs or tp.static_macs) if stored_size else None
    return {
        'model': str(model), 'static': str(static), 'data': str(data), 'provider': tp.provider,
        'threads': threads, 'exit_threshold': threshold, 'input_size': list(tp.net_hw or ()),
        'split_by': 'clutter' if by_clutter else 'kept fraction',
        'groups': {name: _group_summary(g, tp.num_classes, ignore_index, static_macs) for name, g in groups.items()},
    }


def _ratio(a, b):
    return f'{a / b:.2f}' if a is not None and b else 'n/a'


def _gmacs(v):
    return f'{v / 1e9:.3f}' if v is not None else 'n/a'


def _pct(v):
    return f'{100 * v:.1f}' if v is not None and np.isfinite(v) else 'n/a'


def tokenpass_table(report: dict) -> str:
    """Markdown table of :func:`bench_tokenpass`'s report."""
    head = ('| frames | group | kept | GMACs TP | GMACs static | MACs ratio | ms p50 TP | ms p50 static | '
            'ms mean TP | ms mean static | latency ratio (mean) | mIoU TP | mIoU TP no stop | mIoU static |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for name, g in report['groups'].items():
        tp_ms, st_ms = g['tp_ms'], g['static_ms']
        lines.append(f'| {g["frames"]} | {name} | {g["kept_fraction"]:.3f} | {_gmacs(g["tp_macs"])} | '
                     f'{_gmacs(g["static_macs"])} | {_ratio(g["tp_macs"], g["static_macs"])} | '
                     f'{tp_ms["p50"]:.2f} | {st_ms["p50"]:.2f} | {tp_ms["mean"]:.2f} | {st_ms["mean"]:.2f} | '
                     f'{_ratio(tp_ms["mean"], st_ms["mean"])} | {_pct(g["tp_miou"])} | {_pct(g["nostop_miou"])} | '
                     f'{_pct(g["static_miou"])} |')
    threshold = report['exit_threshold']
    lines.append('')
    lines.append(f'exit threshold {threshold:g}, network input {report["input_size"] or "native"}, '
                 f'{report["provider"]} with {report["threads"]} thread(s), halves split by {report["split_by"]}; '
                 'kept = mean fraction of tokens still active per stage; "no stop" = the token-pass model at '
                 'threshold 1.0; latency = ONNX Runtime run time')
    return '\n'.join(lines)


def add_tokenpass_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='token-pass .onnx (with an exit_threshold input)')
    parser.add_argument('--static', required=True, help='its static twin .onnx')
    parser.add_argument('--data', required=True, help='dataset folder (images/, masks/, meta/), YAML or rosbag2')
    parser.add_argument('--threshold', type=share, default=None,
                        help="exit threshold (default: the model's stored threshold)")
    parser.add_argument('--threads', type=non_negative_int, default=1, help='ONNX Runtime intra-op threads (default 1)')
    parser.add_argument('--warmup', type=non_negative_int, default=2, help='untimed inferences of each model first')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='first N frames only')
    parser.add_argument('--providers', default=None, help='comma list of onnxruntime execution providers')
    parser.add_argument('--image-topic', default=None, help='rosbag: image topic (default: /camera/image_raw)')
    parser.add_argument('--gt-topic', default=None,
                        help='rosbag: ground-truth label topic (default: /ground_truth/labels)')
    parser.add_argument('--split', default=None, help="dataset split (default: the dataset YAML's split, else val)")
    parser.add_argument('--input-size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help="network input for both models (multiples of 32; default: the models' own)")
    parser.add_argument('--json', default=None, help='also write the report to this JSON file')


def run_tokenpass(args: argparse.Namespace) -> int:
    providers = [p.strip() for p in args.providers.split(',') if p.strip()] if args.providers else None
    report = bench_tokenpass(args.model, args.static, args.data, args.threshold, args.threads, args.warmup,
                             args.limit, providers, args.image_topic, args.gt_topic, args.split,
                             tuple(args.input_size) if args.input_size else None)
    print(tokenpass_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


BENCHMARKS = {
    'costmap': ('the costmap\'s share of the node\'s per-frame time (640x480, 10 m grid at 5 cm)',
                bench_costmap.add_costmap_arguments, bench_costmap.run_costmap),
    'tokenpass': ('token-pass model vs its static twin: MACs, latency, mIoU on easy and cluttered frames',
                  add_tokenpass_arguments, run_tokenpass),
    'engine': ('network latency per model, size and threads: ONNX Runtime fp32 / int8 vs PyTorch eager, GFLOP/s',
               bench_engine.add_engine_arguments, bench_engine.run_engine),
    'peak': ('this machine\'s float32 matrix-multiply GFLOP/s (ONNX Runtime MatMul, numpy)',
             bench_engine.add_peak_arguments, bench_engine.run_peak),
    'peer': ('full-resolution labels: official-style in-graph upsampling vs logits + LogitsUpsampler',
             bench_engine.add_peer_arguments, bench_engine.run_peer),
    'node': ('the node\'s overhead (callback -> published) vs the bare engine, and end to end over rclpy',
             bench_node.add_node_arguments, bench_node.run_node),
    'node-cpu': ('the node\'s CPU share and latency at a camera rate, ONNX Runtime worker threads sleeping or '
                 'spinning between frames', bench_node.add_node_cpu_arguments, bench_node.run_node_cpu),
    'ops': ('per-operator time inside the graph, fp32 beside int8 (ONNX Runtime profiling)',
            bench_ops.add_ops_arguments, bench_ops.run_ops),
    'adaptive': ('adaptive model over its knob vs static models: MACs, latency, refined fraction, mIoU per '
                 'complexity group, chart', bench_adaptive.add_adaptive_arguments, bench_adaptive.run_adaptive),
    'adaptive-cost': ('adaptive architecture\'s paths in ONNX Runtime (random weights): cheap path, every tile, '
                      'deep head per window count, static zoo models', bench_adaptive.add_adaptive_cost_arguments,
                      bench_adaptive.run_adaptive_cost),
    'refine-rule': ('the adaptive refine rule on a trained TopFormer-tiny (logits file): tiles refined per knob value '
                    'and the share of errors inside them', bench_adaptive.add_refine_rule_arguments,
                    bench_adaptive.run_refine_rule),
    'cascade': ('issue 9\'s cascade baselines from two static models: the large model on unsure frames or on unsure '
                'tiles, mIoU and cost', bench_adaptive.add_cascade_arguments, bench_adaptive.run_cascade),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='benchmark', metavar='BENCHMARK', required=True)
    for name, (help_text, add, run_fn) in BENCHMARKS.items():
        sub.add_parser(name, help=help_text, description=help_text).set_defaults(bench_run=run_fn)
        add(sub.choices[name])


def run(args: argparse.Namespace) -> int:
    return args.bench_run(args)
