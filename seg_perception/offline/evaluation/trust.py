"""How far to trust a calibrated model (issue 18): ECE before / after calibration and the shift monitor's
separation, false alarms and cost, on held-out data of its own renderer and on foreign data.

    python -m seg_perception.offline.evaluation.trust --model runs/calibrated.onnx \\
        [--own data/scenes:test] [--own samples/scenes_sample] [--foreign data/raycast:test] \\
        [--foreign config/data/camvid_test_scene_classes.yaml:test] [--out runs/trust]

``--own`` sets are frames of the model's own training distribution (never its training split): the alarm should
stay quiet there; ``--foreign`` sets should raise it. AUROC is per frame (the first ``--own`` set against each
``--foreign`` one); alarm rates use the smoothed score the node publishes. Prints a Markdown table. Sets with
other classes than the model's are scored for the alarm only, unless ``--merge MODEL_CLASS:DATASET_CLASS`` maps
the model's extra classes onto theirs (e.g. covered_floor:floor), as in ``evaluate``.
"""
import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...runtime.engine import SegmentationEngine
from ...runtime.shift import ShiftScorer, smooth
from ..argtypes import non_negative_int
from .calibration import ReliabilityStats, auroc

DEFAULT_OWN = ('data/scenes:test', 'samples/scenes_sample')
DEFAULT_FOREIGN = ('data/raycast:test', 'config/data/camvid_test_scene_classes.yaml:test')


def measure_set(engine: SegmentationEngine, scorer: ShiftScorer | None, spec: str, limit: int = 0,
                merge: dict[str, str] | None = None) -> dict:
    from ..data.datasets import open_dataset
    from .evaluate import merge_table

    path, _, split = spec.partition(':')
    dataset = open_dataset(path, split=split or None)
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    ignore = getattr(dataset, 'ignore_index', 255)
    classes = [str(c) for c in dataset.classes]
    # another class set: the alarm is scored only, unless merge maps the model's extra classes onto the set's
    to_dataset = None
    if merge and len(classes) != engine.num_classes and all(into in classes for into in merge.values()):
        to_dataset = merge_table([str(n) for n in engine.names], classes, merge)
    labelled = len(classes) == engine.num_classes or to_dataset is not None

    def scored(labels: np.ndarray) -> np.ndarray:
        return labels if to_dataset is None else to_dataset[labels]

    inv = engine.inv_temperature
    raw, cal, scores, cost_ms, frame_ms = ReliabilityStats(), ReliabilityStats(), [], [], []
    for i in range(count):
        image, gt = dataset[i]
        if labelled:
            engine.inv_temperature = None
            r = engine.infer(image)
            raw.add(r.confidence, scored(r.labels), gt, ignore)
            engine.inv_temperature = inv
        c = engine.infer(image)
        if labelled:
            cal.add(c.confidence, scored(c.labels), gt, ignore)
        frame_ms.append(c.latency_ms)
        if scorer is not None:
            t0 = time.perf_counter()
            scores.append(scorer.score(c.logits, c.shift_features))
            cost_ms.append((time.perf_counter() - t0) * 1e3)
    return {'set': spec, 'frames': count, 'pixel_accuracy': raw.summary()['pixel_accuracy'] if labelled else None,
            'ece_uncalibrated': raw.ece(), 'ece_calibrated': cal.ece(), 'scores': scores,
            'shift_ms': float(np.median(cost_ms)) if cost_ms else None, 'frame_ms': float(np.median(frame_ms)),
            'reliability': (raw, cal)}


def report(model: str | os.PathLike, own: Sequence[str], foreign: Sequence[str], limit: int = 0,
           out: str | os.PathLike | None = None, merge: dict[str, str] | None = None) -> str:
    engine = SegmentationEngine(str(model), intra_op_threads=1)
    stats = engine.meta.get('shift_stats')
    scorer = ShiftScorer(stats) if stats else None
    rows, results = [], {}
    for kind, specs in (('own', own), ('foreign', foreign)):
        for spec in specs:
            res = results[spec] = measure_set(engine, scorer, spec, limit, merge)
            smoothed = smooth(res['scores'], scorer.window) if scorer else None
            alarm = f'{100 * np.mean(scorer.alarmed(smoothed)):.1f} %' if scorer else 'n/a'
            accuracy, before, after = (('n/a (other classes)', 'n/a', 'n/a') if res['pixel_accuracy'] is None else
                                       (f'{res["pixel_accuracy"]:.3f}', f'{100 * res["ece_uncalibrated"]:.2f} %',
                                        f'{100 * res["ece_calibrated"]:.2f} %'))
            rows.append(f'| `{spec}` ({kind}) | {res["frames"]} | {accuracy} | {before} | {after} | '
                        f'{np.mean(res["scores"]) if scorer else float("nan"):.2f} | {alarm} |')
    temps = ' '.join(f'{t:.3f}' for t in engine.meta.get('temperature', [])) or 'none'
    temps += ''.join(f'; {k} scored as {v}' for k, v in (merge or {}).items())
    lines = [f'Model `{model}`: temperature {temps}; shift threshold '
             f'{scorer.threshold:.3f} (window {scorer.window}, features {" ".join(scorer.select) or "none"}, '
             f'taps {" ".join(name for name, _, _ in scorer.groups) or "none"}'
             f'{f", each by its k-th nearest training frame, k = {scorer.knn}" if scorer.knn else ""})' if scorer else
             f'Model `{model}`: temperature {temps}; no shift statistics', '',
             '| frames | n | pixel accuracy | ECE uncalibrated | ECE calibrated | mean shift score '
             '| alarm (smoothed) |',
             '|---|---:|---:|---:|---:|---:|---:|', *rows]
    summary = {spec: {k: v for k, v in r.items() if k not in ('scores', 'reliability')} for spec, r in results.items()}
    if scorer and own:
        lines.append('')
        base = results[own[0]]['scores']
        for spec in foreign:
            a = auroc(base, results[spec]['scores'])
            a_s = auroc(smooth(base, scorer.window), smooth(results[spec]['scores'], scorer.window))
            summary[spec]['auroc_vs_own'] = a
            lines.append(f'- AUROC `{own[0]}` vs `{spec}`: {a:.3f} per frame, {a_s:.3f} smoothed')
        first = results[own[0]]
        lines.append(f'- shift score cost: {first["shift_ms"]:.3f} ms per frame = '
                     f'{100 * first["shift_ms"] / first["frame_ms"]:.2f} % of the engine frame '
                     f'({first["frame_ms"]:.1f} ms median, 1 thread)')
    text = '\n'.join(lines)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'trust.md').write_text(text + '\n')
        (out / 'trust.json').write_text(json.dumps(summary, indent=2))
        for spec, res in results.items():
            if res['pixel_accuracy'] is None:
                continue
            name = spec.replace('/', '_').replace(':', '_').replace('.', '_')
            res['reliability'][0].save_png(out / f'reliability_{name}_uncalibrated.png', f'{spec} uncalibrated')
            res['reliability'][1].save_png(out / f'reliability_{name}_calibrated.png', f'{spec} calibrated')
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', required=True, help='a (calibrated) logits .onnx model')
    parser.add_argument('--own', action='append', default=None,
                        help=f'held-out frames of the training distribution, SPEC[:SPLIT] (default: {DEFAULT_OWN})')
    parser.add_argument('--foreign', action='append', default=None,
                        help=f'frames unlike the training data, SPEC[:SPLIT] (default: {DEFAULT_FOREIGN})')
    parser.add_argument('--limit', type=non_negative_int, default=0, help='frames per set (0 = all)')
    parser.add_argument('--out', default=None, help='folder for trust.md, trust.json, reliability diagrams')
    parser.add_argument('--merge', action='append', default=[], metavar='MODEL_CLASS:DATASET_CLASS',
                        help="score a model's class the sets lack as one they have (e.g. covered_floor:floor)")
    args = parser.parse_args(argv)
    from ...errors import UserError
    from .evaluate import parse_merge
    try:
        print(report(args.model, args.own or list(DEFAULT_OWN), args.foreign or list(DEFAULT_FOREIGN), args.limit,
                     args.out, parse_merge(args.merge)))
    except UserError as exc:
        print(f'trust: error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
