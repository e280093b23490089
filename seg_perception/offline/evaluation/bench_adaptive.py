"""``seg-perception bench adaptive``: an adaptive model over its knob's range against static models, on the
same frames in one run, per complexity group::

    seg-perception bench adaptive --model adaptive.onnx --static topformer_tiny.onnx topformer_small.onnx \\
        --data data/bench640 --input-size 480 640 --thresholds 0 0.8 0.9 0.95 1 [--plot curve.png]

Every model runs through the runtime engine (the node's inference path), frame by frame, the candidates
interleaved so they see the same machine load. The adaptive model (an ``.onnx`` with a ``refine_threshold``
or ``exit_threshold`` input) runs once per knob value; the static models (any exported model, e.g. the zoo
models and the token-pass ViT at its default threshold) once each, ``PATH@HxW`` at a network input of its own (a
larger model at a smaller size is a cost knob too). Reported per group (all frames, the easy
half, the cluttered half): MACs per frame (the model's ``macs`` output, else its ``static_macs`` metadata at the
stored size, else n/a), ONNX Runtime latency (p50 and mean of ``model_ms``), the latency ratio to the first and
to the last static model (e.g. TopFormer-tiny and the larger model), the fraction of tiles (regions) and of
frames that took the deep path, and mIoU. Halves: the renderer's clutter level (``meta/*.json``) when every
frame has one, else the fraction of tiles the adaptive model refines at its default knob.

``--plot FILE`` draws mIoU against mean latency: the adaptive model's curve over the knob, one point per static
model, and the straight line joining the first and last static models.
"""
import argparse
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..argtypes import non_negative_int, positive_int, share
from .bench_common import (
    bench_session,
    complexity_halves,
    emit,
    fmt,
    interleaved_medians,
    machine_line,
    markdown_table,
    parse_size,
    ratio,
    worker_spinning,
)
from .evaluate import merge_table, parse_merge
from .metrics import ConfusionMatrix


def _knob(engine):
    if engine.has_refine_threshold:
        return 'refine_threshold'
    if engine.has_exit_threshold:
        return 'exit_threshold'
    return None


def _static_macs(engine, input_size):
    """MACs of one forward of a static model: its ``static_macs`` metadata at the stored size, else counted on
    its architecture (``arch`` metadata) at ``input_size`` when torch is installed, else None."""
    if input_size is None or tuple(input_size) == tuple(engine.meta['input_size']):
        return engine.static_macs
    arch = engine.meta.get('arch')
    try:
        from ...nets import create_model
        from .flops import count_macs
    except ImportError:          # the robot-side install: no torch, no count
        return None
    try:
        model = create_model(arch, num_classes=engine.num_classes)
    except ValueError:           # no such architecture here
        return None
    return float(count_macs(model, (1, 3, *input_size))[0])


def _static_spec(spec: str) -> tuple:
    """``PATH`` or ``PATH@HxW`` (a static model run at its own network input, e.g. a larger model at a smaller
    size) -> (path, (H, W) or None, the name its rows get)."""
    path, at, size = spec.rpartition('@')
    if not at or not re.fullmatch(r'\d+[xX]\d+', size):   # no size: an '@' may belong to the path itself
        return spec, None, Path(spec).stem
    hw = parse_size(size)
    return path, hw, f'{Path(path).stem}@{hw[0]}x{hw[1]}'


def bench_adaptive(model: str | os.PathLike, statics: Sequence[str], data: str | os.PathLike,
                   thresholds: Sequence[float] | None = None, threads: int = 1, warmup: int = 2, limit: int = 0,
                   providers: list[str] | None = None, image_topic: str | None = None, gt_topic: str | None = None,
                   split: str | None = None, input_size: tuple[int, int] | None = None, clock: str = 'wall',
                   merge: dict[str, str] | None = None) -> dict:
    """Run the adaptive ``model`` at each knob value and every model of ``statics`` on every frame of ``data``;
    returns a report dict (see :func:`adaptive_table`). ``clock``: 'wall' (elapsed ONNX Runtime run time) or
    'cpu' (the calling thread's CPU time during the run: the run's cost whatever else loads the machine; with
    one intra-op thread only, where the graph runs on the calling thread). ``merge`` {model class: dataset class}
    (e.g. covered_floor: floor): every model is scored in the dataset's classes, each through the entries of
    ``merge`` it has, so models whose classes differ that way are compared on the same frames; without it
    every model must predict the adaptive model's classes."""
    if clock not in ('wall', 'cpu'):
        raise UserError(f'clock {clock!r} must be wall or cpu')
    if clock == 'cpu' and threads != 1:
        raise UserError(f'--clock cpu times the calling thread only: use it with --threads 1, not {threads}')
    from ...runtime.engine import SegmentationEngine
    from .bench import iter_labelled_frames, open_labelled

    adaptive = SegmentationEngine(model, providers=providers, intra_op_threads=threads, input_size=input_size,
                                   spinning=worker_spinning(threads))
    knob = _knob(adaptive)
    if knob is None:
        raise UserError(f'{model}: not an adaptive model (no refine_threshold or exit_threshold input)')
    default = float(adaptive.meta.get(knob, 1.0))
    thresholds = sorted(set([float(t) for t in (thresholds or ())] + [default]))
    engines = {f'{Path(model).stem} {knob}={t:g}': (adaptive, {knob: t}) for t in thresholds}
    default_name = f'{Path(model).stem} {knob}={default:g}'
    static_sizes = {}
    for spec in statics:
        path, size, name = _static_spec(spec)
        static_sizes[name] = size or input_size
        engine = SegmentationEngine(path, providers=providers, intra_op_threads=threads,
                                     input_size=static_sizes[name], spinning=worker_spinning(threads))
        if not merge and engine.names != adaptive.names:
            raise UserError(f'{path} predicts {engine.names}, {model} predicts {adaptive.names} (--merge scores '
                            "models with other classes in the dataset's)")
        engines[name] = (engine, {})
    dataset = open_labelled(data, image_topic, gt_topic, split, None if merge else adaptive.names)
    num_classes = len(dataset.classes) if merge else adaptive.num_classes
    unused = sorted(set(merge or ()) - {n for engine, _ in engines.values() for n in engine.names})
    if unused:
        raise UserError(f'--merge {unused[0]}:{merge[unused[0]]}: no model predicts a class {unused[0]!r}')
    # each row's class id -> the dataset's (merge only)
    to_dataset = {name: merge_table([str(n) for n in engine.names], [str(c) for c in dataset.classes],
                                    {k: v for k, v in merge.items() if k in engine.names})
                  for name, (engine, _) in engines.items()} if merge else {}
    frames = []
    for rgb, label, clutter in iter_labelled_frames(dataset, limit):
        if not frames:
            for engine, kwargs in engines.values():
                for _ in range(warmup):
                    engine.infer(rgb, **kwargs)
        runs = {}
        for name, (engine, kwargs) in engines.items():
            # prime, as in a stream of frames through one model: the call timed comes right after an untimed one of
            # the same engine and frame (the previous engine's spinning workers must not compete, and its weights
            # must not stand in this one's caches: unprimed, whichever configuration came first after another
            # model's run was timed 1 ms slower on one thread)
            engine.infer(rgb, **kwargs)
            result = engine.infer(rgb, **kwargs)
            ms = result.model_cpu_ms if clock == 'cpu' else result.model_ms
            labels = to_dataset[name][result.labels] if merge else result.labels
            runs[name] = {'labels': labels, 'ms': ms, 'engine_ms': result.latency_ms, 'macs': result.macs,
                          'refined': result.refined_fraction}
        frames.append({'label': label, 'clutter': clutter, 'runs': runs})
    if not frames:
        raise UserError(f'{data}: no labelled frames')
    by_clutter = all(f['clutter'] is not None for f in frames)
    groups = complexity_halves(frames, [f['clutter'] if by_clutter else (f['runs'][default_name]['refined'] or 0.0)
                                        for f in frames])
    ignore_index = adaptive.meta.get('ignore_index', 255)
    # the static models (the adaptive one reports its own per frame)
    static_macs = {name: _static_macs(engine, static_sizes[name]) for name, (engine, kwargs) in engines.items()
                   if not kwargs}
    summary = {}
    for group, members in groups.items():
        summary[group] = {}
        for name in engines:
            confusion = ConfusionMatrix(num_classes, ignore_index)
            for f in members:
                confusion.update(f['runs'][name]['labels'], f['label'])
            ms = np.array([f['runs'][name]['ms'] for f in members], np.float64)
            macs = [f['runs'][name]['macs'] for f in members if f['runs'][name]['macs'] is not None]
            refined = [f['runs'][name]['refined'] for f in members if f['runs'][name]['refined'] is not None]
            static = static_macs.get(name)
            summary[group][name] = {
                'frames': len(members), 'miou': confusion.compute()['mIoU'],
                'ms_p50': float(np.percentile(ms, 50)), 'ms_mean': float(ms.mean()),
                'engine_ms_mean': float(np.mean([f['runs'][name]['engine_ms'] for f in members])),
                'gmacs': (float(np.mean(macs)) if macs else static) / 1e9 if (macs or static) else None,
                'refined_tiles': float(np.mean(refined)) if refined else None,
                'refined_frames': float(np.mean(np.asarray(refined) > 0)) if refined else None,
            }
    return {'model': str(model), 'statics': [str(s) for s in statics], 'data': str(data), 'knob': knob,
            'thresholds': thresholds, 'default': default, 'threads': threads, 'provider': adaptive.provider,
            'clock': clock, 'merge': dict(merge or {}),
            'input_size': list(adaptive.net_hw or ()), 'split_by': 'clutter' if by_clutter else 'refined fraction',
            'static_names': list(static_sizes), 'groups': summary}


def adaptive_table(report: dict) -> str:
    """Markdown table of :func:`bench_adaptive`'s report (one row per model / knob value and group)."""
    statics = report['static_names']
    bases = list(dict.fromkeys(statics[:1] + statics[-1:]))   # the first and the last static model
    headers = (['group', 'frames', 'model', 'GMACs/frame', 'ms p50', 'ms mean', 'engine ms mean (wall)']
               + [f'latency / {b}' for b in bases] + ['tiles refined', 'frames refined', 'mIoU'])
    rows = []
    for group, models in report['groups'].items():
        for name, g in models.items():
            rows.append([group, g['frames'], name, fmt(g['gmacs'], 3), fmt(g['ms_p50']), fmt(g['ms_mean']),
                         fmt(g.get('engine_ms_mean'))]
                        + [ratio(g['ms_mean'], models[b]['ms_mean']) for b in bases]
                        + [fmt(g['refined_tiles'], 3), fmt(g['refined_frames'], 3),
                           fmt(100 * g['miou'] if g['miou'] is not None else None, 1)])
    note = (f'\n\n{report["knob"]} default {report["default"]:g}; network input {report["input_size"] or "native"}; '
            f'{report["provider"]} with {report["threads"]} thread(s)'
            f'{" (workers sleeping between runs, as in the node)" if report["threads"] > 1 else ""}; '
            f'halves split by {report["split_by"]}; latency = ONNX Runtime run time '
            f'({report.get("clock", "wall")} clock; mean ratios within this run); '
            'engine ms = the whole infer() (pre-processing, run, labels and confidence at camera resolution), '
            'elapsed; tiles refined = mean fraction of '
            'tiles through the deep head; frames refined = fraction of frames with at least one.')
    return markdown_table(headers, rows) + note


def plot_curve(report: dict, path: str | os.PathLike) -> str | os.PathLike:
    """mIoU vs mean latency (all frames): the adaptive curve over the knob, static points, and the line
    joining the first and the last static model."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    models = report['groups']['all']
    statics = report['static_names']
    curve = [(g['ms_mean'], 100 * (g['miou'] or 0.0), name) for name, g in models.items() if name not in statics]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], marker='o', label=f'adaptive ({report["knob"]})')
    for ms, miou, name in curve:
        ax.annotate(name.rsplit('=', 1)[-1], (ms, miou), textcoords='offset points', xytext=(4, -10), fontsize=8)
    families = {}   # a static model at several network inputs (PATH@HxW): one colour, its points joined
    for name in statics:
        families.setdefault(name.split('@')[0], []).append(name)
    for family, names in families.items():
        points = sorted((models[n]['ms_mean'], 100 * (models[n]['miou'] or 0.0), n) for n in names)
        label = family if len(names) == 1 else f'{family} (input sizes)'
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker='s', linestyle=':' if len(names) > 1
                        else 'none', label=label)
        for ms, miou, name in points:
            if '@' in name:
                ax.annotate(name.split('@')[1], (ms, miou), textcoords='offset points', xytext=(4, 4), fontsize=7,
                            color=line.get_color())
    if len(statics) >= 2:
        a, b = models[statics[0]], models[statics[-1]]
        ax.plot([a['ms_mean'], b['ms_mean']], [100 * (a['miou'] or 0), 100 * (b['miou'] or 0)], '--', color='gray',
                label='static line')
    clock = 'CPU time' if report.get('clock') == 'cpu' else 'elapsed'
    ax.set_xlabel(f'mean ONNX Runtime latency (ms {clock}, {report["threads"]} thread(s))')
    ax.set_ylabel('mIoU (%)')
    ax.set_title('accuracy vs latency (all frames)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return path


def png_path(text: str) -> str:
    """``--plot``: a .png file path whose folder exists or can be made (checked while parsing, before the run)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f'{text} is a folder; give a .png file path (e.g. {path / "chart.png"})')
    if path.suffix.lower() != '.png':
        raise argparse.ArgumentTypeError(f'{text} must be a .png file path (the chart is a PNG image)')
    existing = next(folder for folder in path.absolute().parents if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f'{text} cannot be written ({existing} is not a writable folder)')
    return text


def add_adaptive_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='adaptive .onnx (refine_threshold or exit_threshold input)')
    parser.add_argument('--static', nargs='*', default=[],
                        help='static .onnx models to compare with, smallest first and the larger model last '
                             '(latency ratios are taken to the first and the last); PATH@HxW runs one at its own '
                             'network input (e.g. the larger model at a smaller size)')
    parser.add_argument('--data', required=True, help='dataset folder (images/, masks/, meta/), YAML or rosbag2')
    parser.add_argument('--thresholds', type=share, nargs='*', default=[0.0, 1.0],
                        help="knob values to run besides the model's stored default (0 = never refine, "
                             '1 = always)')
    parser.add_argument('--threads', type=positive_int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--warmup', type=non_negative_int, default=2, help='untimed inferences of each candidate first')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='first N frames only (0: all)')
    parser.add_argument('--providers', default=None, help='comma list of onnxruntime execution providers')
    parser.add_argument('--image-topic', default=None, help='rosbag: image topic')
    parser.add_argument('--gt-topic', default=None, help='rosbag: ground-truth label topic')
    parser.add_argument('--split', default=None, help="dataset split (default: the dataset YAML's split, else val)")
    parser.add_argument('--input-size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help="network input for every model (multiples of 32; default: the models' own)")
    parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                        help='wall: elapsed run time; cpu: CPU time of the run (1 thread only; robust to other '
                             'load on the machine)')
    parser.add_argument('--merge', action='append', default=[], metavar='MODEL_CLASS:DATASET_CLASS',
                        help="score a model's class as one of the dataset's (repeatable; e.g. covered_floor:floor): "
                             'every model is then scored in the dataset\'s classes, so a 7-class model and a '
                             '6-class one can be compared')
    parser.add_argument('--plot', type=png_path, default=None,
                        help='write the mIoU-vs-latency chart to this .png file (its folder is made if need be)')
    parser.add_argument('--json', default=None, help='also write the report to this JSON file')
    parser.add_argument('--markdown', default=None, help='also write the table to this Markdown file')


def run_adaptive(args: argparse.Namespace) -> int:
    providers = [p.strip() for p in args.providers.split(',') if p.strip()] if args.providers else None
    start = time.perf_counter()
    report = bench_adaptive(args.model, args.static, args.data, args.thresholds, args.threads, args.warmup,
                            args.limit, providers, args.image_topic, args.gt_topic, args.split,
                            tuple(args.input_size) if args.input_size else None, args.clock,
                            parse_merge(args.merge))
    emit(args, f'Adaptive model against static models on {args.data}', adaptive_table(report))
    print(f'{time.perf_counter() - start:.0f} s')
    if args.plot:
        print(f'chart: {plot_curve(report, args.plot)}')
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


# ------------------------------------------------------------------ bench adaptive-cost (random weights)

def bench_adaptive_cost(arch: str = 'adaptive_topformer_tiny',
                        statics: Sequence[str] = ('topformer_tiny', 'topformer_base'),
                        input_size: tuple[int, int] = (480, 640), windows: Sequence[int] = (1, 4, 8, 16, 32, 48, 80),
                        threads: int = 1, warmup: int = 2, repeat: int = 7, num_classes: int = 6,
                        clock: str = 'wall') -> tuple[list[tuple[str, float, float]], int]:
    """ONNX Runtime latency of an adaptive architecture's paths at ``input_size`` (weights do not change the
    cost, so random ones are used): the whole graph at refine_threshold 0 (cheap path + one masked window)
    and 1 (every tile), the deep head alone on N windows, and static zoo models. Returns rows
    ``(name, GMACs, median ms)``; every candidate is timed interleaved with the others."""
    import io
    import tempfile
    import warnings

    import torch

    from ...nets import create_model
    from ..predict import labels_head
    from .flops import count_macs

    class LabelsGraph(torch.nn.Module):
        """What ``seg-perception export`` writes (evaluation does not import deployment): the network (with its
        knob and per-frame stats for the adaptive model), logits upsampled to the input size, argmax, max
        softmax."""

        def __init__(self, net, adaptive):
            super().__init__()
            self.net, self.adaptive = net, adaptive

        def forward(self, images: torch.Tensor,
                    refine_threshold: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
            stats = ()
            if self.adaptive:
                logits, fraction, spent = self.net.forward_with_stats(images, refine_threshold)
                stats = (fraction.float().reshape(-1), spent.float().reshape(()))
            else:
                logits = self.net(images)
            return (*labels_head(logits, images.shape[-2:]), *stats)

    def export(net: torch.nn.Module, path: str, adaptive: bool) -> None:
        knob = (torch.tensor(1.0),) if adaptive else ()
        inputs, outputs = ['images'] + (['refine_threshold'] if adaptive else []), ['labels', 'confidence']
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            torch.onnx.export(LabelsGraph(net, adaptive).eval(), (torch.zeros(1, 3, *input_size), *knob), path,
                              dynamo=False, opset_version=17, input_names=inputs,
                              output_names=outputs + (['refined_fraction', 'macs'] if adaptive else []))

    torch.manual_seed(0)
    h, w = input_size
    images = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    model = create_model(arch, num_classes=num_classes).eval()
    if not hasattr(model, 'forward_with_stats'):
        raise UserError(f'--arch {arch}: not an adaptive architecture (adaptive_topformer_tiny, ...); static ones '
                        'go in --static')
    nets = {name: model if name == arch else create_model(name, num_classes=num_classes).eval()
            for name in (arch, *statics)}   # every name checked before the first export
    candidates, macs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in nets.items():
            path = f'{tmp}/{name}.onnx'
            export(net, path, adaptive=name == arch)
            sess = bench_session(path, threads)
            if name == arch:
                for t in (0.0, 1.0):
                    feeds = {'images': images, 'refine_threshold': np.asarray(t, np.float32)}
                    what = 'cheap path + 1 masked window' if t == 0 else 'every tile'
                    label = f'{arch}, refine_threshold={t:g} ({what})'
                    macs[label] = float(sess.run(['macs'], feeds)[0])
                    candidates[label] = (lambda s=sess, f=feeds: s.run(None, f))
            else:
                macs[name] = float(count_macs(net, (1, 3, h, w))[0])
                candidates[name] = (lambda s=sess: s.run(None, {'images': images}))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model.deep, torch.zeros(model.window_shape(2)), buffer, dynamo=False, opset_version=17,
                          input_names=['windows'], output_names=['logits'],
                          dynamic_axes={'windows': {0: 'n'}, 'logits': {0: 'n'}})
    deep = bench_session(buffer.getvalue(), threads)
    tiles = model.num_tiles(h, w)
    for n in windows:
        if n > tiles:
            continue
        batch = np.random.default_rng(n).standard_normal(model.window_shape(n)).astype(np.float32)
        label = f'deep head alone, {n} of {tiles} windows'
        macs[label] = float(n * model.window_macs)
        candidates[label] = (lambda b=batch: deep.run(None, {'windows': b}))
    if clock == 'cpu' and threads != 1:
        raise UserError('--clock cpu measures the calling thread: use it with --threads 1')
    times = interleaved_medians(candidates, warmup=warmup, repeat=repeat,
                                clock=time.thread_time if clock == 'cpu' else time.perf_counter, prime=threads > 1)
    return [(name, macs[name] / 1e9, times[name]) for name in candidates], tiles


def add_adaptive_cost_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--arch', default='adaptive_topformer_tiny', help='adaptive architecture (nets)')
    parser.add_argument('--static', nargs='*', default=['topformer_tiny', 'topformer_base'],
                        help='static zoo architectures to time beside it (the first is the ratio reference)')
    parser.add_argument('--input-size', type=positive_int, nargs=2, default=[480, 640], metavar=('H', 'W'),
                        help='network input height and width')
    parser.add_argument('--windows', type=positive_int, nargs='*', default=[1, 4, 8, 16, 32, 48, 80],
                        help='deep-head batch sizes (windows) to time')
    parser.add_argument('--threads', type=positive_int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--warmup', type=non_negative_int, default=2, help='untimed runs of each candidate first')
    parser.add_argument('--repeat', type=positive_int, default=7,
                        help='timed rounds (candidates interleaved); median shown')
    parser.add_argument('--clock', choices=('wall', 'cpu'), default='wall',
                        help="wall time, or (with --threads 1) the CPU time of the thread running the graph, which "
                             "other processes' load does not inflate")


def run_adaptive_cost(args: argparse.Namespace) -> int:
    rows, tiles = bench_adaptive_cost(args.arch, args.static, tuple(args.input_size), args.windows, args.threads,
                                      args.warmup, args.repeat, clock=args.clock)
    reference = next((ms for name, _, ms in rows if args.static and name == args.static[0]), None)
    table = markdown_table(['what', 'GMACs', 'ms (median)', f'/ {args.static[0]}' if args.static else 'ratio'],
                           [[name, fmt(g, 3), fmt(ms), ratio(ms, reference)] for name, g, ms in rows])
    print(f'{table}\n\n{args.input_size[0]}x{args.input_size[1]} input ({tiles} tiles), random weights, '
          f'{args.threads} thread(s), {args.clock} clock, median of {args.repeat} interleaved rounds.\n'
          f'Machine: {machine_line()}')
    return 0


# ------------------------------------------------------------------ bench refine-rule (a trained early head)

def bench_refine_rule(model: str | os.PathLike, data: str | os.PathLike, thresholds: Sequence[float],
                      image_topic: str | None = None, gt_topic: str | None = None, split: str | None = None,
                      input_size: tuple[int, int] = (480, 640), tile: int = 8, min_uncertain: float = 0.02,
                      limit: int = 0) -> list[dict]:
    """The adaptive model's refine rule applied to a trained TopFormer-tiny (``--head logits`` file: its logits
    are the adaptive model's early logits, same arithmetic): per knob value, the fraction of tiles refined (all
    frames, and the halves of frames with fewer / more refined tiles), the fraction of frames with any, and the
    share of the model's wrong pixels that lie inside refined tiles. Returns rows of dicts."""
    from ...runtime.engine import SegmentationEngine
    from .bench import iter_labelled_frames, open_labelled

    engine = SegmentationEngine(model, intra_op_threads=1, input_size=input_size)
    frames = []
    for rgb, label, _ in iter_labelled_frames(open_labelled(data, image_topic, gt_topic, split, engine.names), limit):
        result = engine.infer(rgb)
        if result.logits is None:
            raise UserError(f'{model}: needs a logits model (export --head logits), to read the early logits')
        z = result.logits - result.logits.max(0, keepdims=True)
        frames.append((1.0 / np.exp(z).sum(0), (result.labels != label) & (label != engine.meta['ignore_index'])))
    if not frames:
        raise UserError(f'{data}: no labelled frames')
    rows = []
    for threshold in thresholds:
        fractions, covered, wrong_total = [], 0, 0
        for conf, wrong in frames:
            h8, w8 = conf.shape
            ph, pw = (-h8) % tile, (-w8) % tile
            padded = np.pad(conf, ((0, ph), (0, pw)), constant_values=1.0)
            counts = (padded < threshold).reshape((h8 + ph) // tile, tile, (w8 + pw) // tile, tile).sum((1, 3))
            selected = (counts > min_uncertain * tile * tile) | (threshold >= 1.0)
            fractions.append(selected.mean())
            rows_of = np.minimum(np.arange(wrong.shape[0]) * h8 // wrong.shape[0] // tile, selected.shape[0] - 1)
            cols_of = np.minimum(np.arange(wrong.shape[1]) * w8 // wrong.shape[1] // tile, selected.shape[1] - 1)
            covered += int((wrong & selected[rows_of][:, cols_of]).sum())
            wrong_total += int(wrong.sum())
        fractions = np.sort(np.asarray(fractions))
        half = len(fractions) // 2
        rows.append({'threshold': threshold, 'tiles': float(fractions.mean()),
                     'tiles_low_half': float(fractions[:half].mean()) if half else None,
                     'tiles_high_half': float(fractions[half:].mean()),
                     'frames_any': float(np.mean(fractions > 0)),
                     'errors_covered': covered / wrong_total if wrong_total else None})
    return rows


def add_refine_rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='a trained TopFormer-tiny exported with --head logits')
    parser.add_argument('--data', required=True, help='dataset folder, YAML or rosbag2 (with the topics)')
    parser.add_argument('--image-topic', default=None, help='rosbag: image topic')
    parser.add_argument('--gt-topic', default=None, help='rosbag: ground-truth label topic')
    parser.add_argument('--split', default=None, help="dataset split (default: the dataset YAML's split, else val)")
    parser.add_argument('--input-size', type=positive_int, nargs=2, default=[480, 640], metavar=('H', 'W'),
                        help='network input (multiples of 32)')
    parser.add_argument('--thresholds', type=share, nargs='+', default=[0.5, 0.7, 0.8, 0.9, 0.95],
                        help='refine_threshold values')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='first N frames only (0: all)')


def run_refine_rule(args: argparse.Namespace) -> int:
    rows = bench_refine_rule(args.model, args.data, args.thresholds, args.image_topic, args.gt_topic, args.split,
                             tuple(args.input_size), limit=args.limit)
    table = markdown_table(
        ['refine_threshold', 'tiles refined', 'easier half of frames', 'harder half', 'frames with any',
         'errors inside refined tiles'],
        [[f'{r["threshold"]:g}', fmt(r['tiles'], 3), fmt(r['tiles_low_half'], 3), fmt(r['tiles_high_half'], 3),
          fmt(r['frames_any'], 3), fmt(r['errors_covered'], 3)] for r in rows])
    print(f'{table}\n\nTiles of 8x8 cells at 1/8 ({8 * 8}x{8 * 8} pixels) refined when more than 2 % of their cells '
          f'have an early confidence below the threshold; network input {args.input_size[0]}x{args.input_size[1]}; '
          'halves of frames by their refined fraction.')
    return 0


def bench_cascade(small: str | os.PathLike, large: str | os.PathLike, data: str | os.PathLike,
                  shares: Sequence[float], split: str | None = None, image_topic: str | None = None,
                  gt_topic: str | None = None, threads: int = 1, grid: int = 8, confidence: float = 0.9,
                  limit: int = 0) -> dict:
    """Issue 9's cascade baselines from two static models, no training: per frame both run through the engine
    (CPU time of each ``infer``) and the small model's pixels below ``confidence`` decide where the large one's
    labels are taken. Frame cascade (option d): a frame whose share of such pixels exceeds s takes the large
    model's labels; cost small + large on those frames. Tile cascade (regions without shared features): each tile
    of a ``grid`` x ``grid`` split of the image whose share exceeds s takes the large model's labels there; cost
    small + the tiles' area share of large (a lower bound: crops need context). Returns a dict with the two
    models' mean ms and mIoU and one row per (rule, s): share of frames or tiles taken, mIoU, mean ms."""
    from ...runtime.engine import SegmentationEngine
    from .bench import iter_labelled_frames, open_labelled

    engines = [SegmentationEngine(path, intra_op_threads=threads, spinning=worker_spinning(threads))
               for path in (small, large)]
    num_classes, ignore = len(engines[0].names), engines[0].meta['ignore_index']
    if len(engines[1].names) != num_classes:
        raise UserError(f'{small} has {num_classes} classes, {large} {len(engines[1].names)}: they must match')
    rules = [(rule, s) for rule in ('frame', 'tile') for s in shares]
    matrices = {key: ConfusionMatrix(num_classes, ignore) for key in [*rules, 'small', 'large']}
    taken = {key: [] for key in rules}
    times = [[], []]
    for rgb, label, _ in iter_labelled_frames(open_labelled(data, image_topic, gt_topic, split, engines[0].names),
                                              limit):
        outs = []
        for engine, spent in zip(engines, times):
            tic = time.process_time()
            outs.append(engine.infer(rgb))
            spent.append(time.process_time() - tic)
        (a, b), (h, w) = outs, label.shape
        if grid > min(h, w):
            raise UserError(f'--grid {grid}: more tiles per side than the {w}x{h} frames have pixels')
        matrices['small'].update(a.labels, label)
        matrices['large'].update(b.labels, label)
        unsure = a.confidence < confidence
        rows, cols = np.arange(h) * grid // h, np.arange(w) * grid // w
        tile = (rows[:, None] * grid + cols[None, :]).ravel()
        tile_share = (np.bincount(tile, weights=unsure.ravel(), minlength=grid * grid)
                      / np.bincount(tile, minlength=grid * grid)).reshape(grid, grid)
        for rule, s in rules:
            if rule == 'frame':
                use = np.full((grid, grid), unsure.mean() > s)
            else:
                use = tile_share > s
            taken[(rule, s)].append(use.mean())
            matrices[(rule, s)].update(np.where(use[rows[:, None], cols[None, :]], b.labels, a.labels), label)
    if not times[0]:
        raise UserError(f'{data}: no labelled frames')
    small_ms, large_ms = (1000 * float(np.mean(t)) for t in times)
    return {'frames': len(times[0]), 'small_ms': small_ms, 'large_ms': large_ms,
            'small_miou': matrices['small'].compute()['mIoU'], 'large_miou': matrices['large'].compute()['mIoU'],
            'rows': [{'rule': rule, 'share': s, 'taken': float(np.mean(taken[(rule, s)])),
                      'miou': matrices[(rule, s)].compute()['mIoU'],
                      'ms': small_ms + float(np.mean(taken[(rule, s)])) * large_ms} for rule, s in rules]}


def add_cascade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--small', required=True, help='the cheap static model (e.g. TopFormer-tiny)')
    parser.add_argument('--large', required=True, help='the larger static model (same classes)')
    parser.add_argument('--data', required=True, help='dataset folder, YAML or rosbag2 (with the topics)')
    parser.add_argument('--image-topic', default=None, help='rosbag: image topic')
    parser.add_argument('--gt-topic', default=None, help='rosbag: ground-truth label topic')
    parser.add_argument('--split', default=None, help="dataset split (default: the dataset YAML's split, else val)")
    parser.add_argument('--shares', type=float, nargs='+', default=[0.02, 0.05, 0.1, 0.2, 0.4],
                        help='share of unsure pixels above which a frame or tile goes to the large model')
    parser.add_argument('--confidence', type=share, default=0.9, help='the small model\'s pixels below it are unsure')
    parser.add_argument('--grid', type=positive_int, default=8, help='tiles per image side for the tile cascade')
    parser.add_argument('--threads', type=positive_int, default=1, help='ONNX Runtime intra-op threads')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='first N frames only (0: all)')
    parser.add_argument('--markdown', default=None, help='also write the table to this Markdown file')


def run_cascade(args: argparse.Namespace) -> int:
    if args.confidence == 0:   # --grid and the rest of --confidence's range are checked while parsing
        raise UserError('--confidence 0: must be in (0, 1] (no pixel is below 0)')
    bad = [s for s in args.shares if not -1 <= s <= 1]   # NaN too
    if bad:
        raise UserError(f'--shares {bad[0]:g}: must be in [-1, 1] (a share of unsure pixels; below 0 sends every '
                        'frame and tile to the large model)')
    report = bench_cascade(args.small, args.large, args.data, args.shares, args.split, args.image_topic,
                           args.gt_topic, args.threads, args.grid, args.confidence, args.limit)
    large_ms = report['large_ms']
    rows = [['small model alone', '', '0', fmt(100 * report['small_miou']), fmt(report['small_ms']),
             ratio(report['small_ms'], large_ms)],
            ['large model alone', '', '1', fmt(100 * report['large_miou']), fmt(large_ms), '1.00']]
    rows += [[f'{r["rule"]} cascade', f'> {r["share"]:g}', fmt(r['taken'], 3), fmt(100 * r['miou']), fmt(r['ms']),
              ratio(r['ms'], large_ms)] for r in report['rows']]
    table = markdown_table(['rule', 'unsure share', 'frames or tiles to the large model', 'mIoU',
                            'ms per frame (CPU time; tile rows: small + area share x large)', '/ large'], rows)
    emit(args, f'Cascade baselines on {report["frames"]} frames of {args.data}', table)
    return 0
