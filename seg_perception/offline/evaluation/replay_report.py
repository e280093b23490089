"""What ``seg-perception replay`` writes: report.md, report.json, PNG plots, overlay video and frame strip.

Files in the report folder:

* ``report.md`` / ``report.json``: the same numbers (JSON adds per-frame rows and confusion matrices);
* ``latency.png`` (engine latency per frame and its histogram), ``iou_per_class.png``, ``miou_per_frame.png``,
  ``cost_vs_difficulty.png`` (latency and, for models that report it, MACs per frame against the frame's
  difficulty), ``confusion_<model>.png``; plots needing ground truth are skipped without it;
* ``overlay.mp4`` (every frame: input | each model's colour mask over the input | ground truth, with a colour
  legend naming the classes) and ``strip.png`` (six frames of it, always written: Markdown shows it).
"""
import argparse
import json
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ...runtime.engine import SegResult, colorize, overlay
from .calibration import ReliabilityStats
from .metrics import compute_metrics, save_confusion_png

if TYPE_CHECKING:
    from .replay import BagTopics, Frame, FrameSource, ModelRun

TILE_HEIGHT = 240
STRIP_ROWS = 6
FONT = cv2.FONT_HERSHEY_SIMPLEX


# ----------------------------------------------------------------------------------------------- frames
def legend(names: list, palette: list, width: int) -> np.ndarray:
    """An RGB bar of colour swatches with the class names, wrapped to ``width`` pixels."""
    items, line, rows = [], 0, 1
    for name, colour in zip(names, palette):
        w = 22 + cv2.getTextSize(name, FONT, 0.45, 1)[0][0] + 14
        if line + w > width and line:
            rows, line = rows + 1, 0
        items.append((line, rows - 1, name, colour))
        line += w
    bar = np.full((rows * 22 + 4, width, 3), 255, np.uint8)
    for x, row, name, colour in items:
        y = 4 + row * 22
        cv2.rectangle(bar, (x + 4, y), (x + 20, y + 14), tuple(int(c) for c in colour), -1)
        cv2.rectangle(bar, (x + 4, y), (x + 20, y + 14), (0, 0, 0), 1)
        cv2.putText(bar, name, (x + 24, y + 12), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def _titled(tile, title):
    bar = np.full((18, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title[:max(4, tile.shape[1] // 8)], (4, 13), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], axis=0)


def panel(image: np.ndarray, label_maps: list, titles: list, palettes: list) -> np.ndarray:
    """One row: input | each labels map coloured (its own palette) over the input | (a map titled 'ground truth':
    plain colours)."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image
    scale = TILE_HEIGHT / rgb.shape[0]
    size = (max(1, round(rgb.shape[1] * scale)), TILE_HEIGHT)
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    tiles = [_titled(small, 'input')]
    for labels, title, palette in zip(label_maps, titles, palettes):
        lab = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        colour = colorize(lab, palette)
        tiles.append(_titled(colour if title == 'ground truth' else overlay(small, colour, 0.55), title))
    return np.concatenate(tiles, axis=1)


class OverlayWriter:
    """Writes overlay.mp4 frame by frame (when the OpenCV build has an mp4 codec) and keeps the strip's rows."""

    def __init__(self, out, models, count, fps, video=True):
        self.out, self.models = out, models
        self.palettes = [m.engine.palette for m in models]
        entries = []    # the legend: every model's (class, colour), once each (models may differ in classes)
        for m in models:
            entries += [e for e in zip(m.engine.names, m.engine.palette) if e not in entries]
        self.names, self.palette = [n for n, _ in entries], [c for _, c in entries]
        self.strip_at = set(np.linspace(0, max(count - 1, 0), min(STRIP_ROWS, count)).round().astype(int).tolist())
        self.rows, self.size, self.frames = [], None, 0
        self.video_path = os.path.join(out, 'overlay.mp4')
        self.want_video, self.fps = video, max(1.0, float(fps))
        self.video, self.video_note = None, None if video else 'not asked for (--no-video)'
        self._legend = None

    def add(self, frame: 'Frame', results: list[SegResult]) -> None:
        maps = [r.labels for r in results]
        titles = [m.name for m in self.models]
        palettes = list(self.palettes)
        if frame.label is not None:     # ground-truth ids coloured as the first model's classes
            maps.append(frame.label)
            titles.append('ground truth')
            palettes.append(self.palettes[0])
        row = panel(frame.image, maps, titles, palettes)
        if frame.index in self.strip_at:
            self.rows.append(row)
        if self.want_video:
            if self._legend is None or self._legend.shape[1] != row.shape[1]:
                self._legend = legend(self.names, self.palette, row.shape[1])
            self._write(np.concatenate([row, self._legend], axis=0))
        self.frames += 1

    def _write(self, row):
        if self.size is None:
            self.size = (row.shape[1] + row.shape[1] % 2, row.shape[0] + row.shape[0] % 2)
            self.video = cv2.VideoWriter(self.video_path, cv2.VideoWriter_fourcc(*'mp4v'), self.fps, self.size)
            if not self.video.isOpened():
                self.video, self.want_video = None, False
                self.video_note = 'this OpenCV build has no mp4 encoder; see strip.png'
                return
        if (row.shape[1], row.shape[0]) != self.size:
            row = cv2.resize(row, self.size, interpolation=cv2.INTER_AREA)
        self.video.write(cv2.cvtColor(row, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.video is not None:
            self.video.release()
            self.video = None
        if self.rows:
            width = max(r.shape[1] for r in self.rows)
            rows = [r if r.shape[1] == width else cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1])))
                    for r in self.rows]
            strip = np.concatenate(rows + [legend(self.names, self.palette, width)])
            cv2.imwrite(os.path.join(self.out, 'strip.png'), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))

    @property
    def video_file(self) -> str | None:
        return 'overlay.mp4' if self.want_video and self.frames and os.path.isfile(self.video_path) else None


# ----------------------------------------------------------------------------------------------- numbers
def percentiles(values: Iterable[float | None]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    a = np.asarray(values, np.float64)
    return {'p50': float(np.percentile(a, 50)), 'p90': float(np.percentile(a, 90)),
            'p99': float(np.percentile(a, 99)), 'mean': float(a.mean())}


def absent_from_truth(matrix: np.ndarray, names: list) -> dict:
    """{class: pixels} the model predicted but the ground truth never has over the whole bag (e.g. the default
    model's ``covered_floor`` on a 6-class bag): each such pixel counts as wrong and the class's IoU of 0 lowers
    the mean."""
    matrix = np.asarray(matrix)
    truth, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    return {str(names[i]): int(predicted[i]) for i in range(len(names)) if truth[i] == 0 and predicted[i] > 0}


def model_summary(m: 'ModelRun') -> dict:
    rows = m.per_frame
    scored = [r for r in rows if r['mIoU'] is not None or r['pixel_accuracy'] is not None]
    static = m.engine.static_macs
    gmacs = [r['gmacs'] for r in rows if r['gmacs'] is not None]
    kept = [r['kept_fraction'] for r in rows if r['kept_fraction'] is not None]
    refined = [r['refined_fraction'] for r in rows if r['refined_fraction'] is not None]
    return {
        'name': m.name, 'path': m.path, 'arch': m.engine.meta.get('arch', ''), 'provider': m.engine.provider,
        'classes': list(m.engine.names), 'merged': m.merged, 'frames': len(rows), 'frames_scored': len(scored),
        'metrics': compute_metrics(m.confusion.matrix, m.engine.names) if scored else None,
        'absent_from_truth': absent_from_truth(m.confusion.matrix, m.engine.names) if scored else {},
        'latency_ms': percentiles([r['latency_ms'] for r in rows]),
        'model_ms': percentiles([r['model_ms'] for r in rows]),
        'gmacs_static': None if static is None else float(static) / 1e9,
        'gmacs_per_frame': percentiles(gmacs),
        'kept_fraction_mean': float(np.mean(kept)) if kept else None,
        'refined_fraction_mean': float(np.mean(refined)) if refined else None,
        'per_frame': rows,
        'confusion_matrix': m.confusion.matrix.tolist() if scored else None,
        'ece': m.reliability.ece() if scored else None,
        'calibration': ('temperature ' + ' '.join(f'{t:.3f}' for t in m.engine.meta['temperature'])
                        if m.engine.calibrated else 'uncalibrated'),
        'reliability': m.reliability.summary() if scored else None,
    }


def _f(value, fmt='{:.1f}', scale=1.0):
    return '-' if value is None else fmt.format(value * scale)


def _lat(p):
    return '-' if p is None else f'{p["p50"]:.1f} / {p["p90"]:.1f} / {p["p99"]:.1f}'


def _cost(s):
    if s['gmacs_per_frame']:
        static = f' of {s["gmacs_static"]:.3f}' if s['gmacs_static'] else ''
        return f'{s["gmacs_per_frame"]["mean"]:.3f}{static} (p90 {s["gmacs_per_frame"]["p90"]:.3f})'
    return _f(s['gmacs_static'], '{:.3f} (static)')


def _adaptive(s):
    """Token-pass: mean share of tokens kept to the last stage; adaptive TopFormer: mean share of tiles refined."""
    if s['kept_fraction_mean'] is not None:
        return f'kept {s["kept_fraction_mean"]:.3f}'
    return '-' if s['refined_fraction_mean'] is None else f'refined {s["refined_fraction_mean"]:.3f}'


def models_table(summaries: list[dict]) -> str:
    lines = ['| model | arch | mIoU | pixel acc. | ECE (15 bins) | latency p50 / p90 / p99 (ms) | GMACs per frame | '
             'kept / refined fraction | provider |', '|---|---|---:|---:|---:|---|---|---:|---|']
    for s in summaries:
        met = s['metrics'] or {}
        merged = ''.join(f' ({k} scored as {v})' for k, v in s['merged'].items())
        lines.append(f'| {s["name"]}{merged} | {s["arch"]} | {_f(met.get("mIoU"), scale=100)} | '
                     f'{_f(met.get("aAcc"), scale=100)} | {_f(s["ece"], "{:.2f} %", 100)} ({s["calibration"]}) | '
                     f'{_lat(s["latency_ms"])} | {_cost(s)} | '
                     f'{_adaptive(s)} | {s["provider"]} |')
    return '\n'.join(lines)


def class_table(summaries: list[dict]) -> str:
    scored = [s for s in summaries if s['metrics']]
    names = []
    for s in scored:
        names += [n for n in s['metrics']['IoU'] if n not in names]
    lines = ['| class | ' + ' | '.join(s['name'] for s in scored) + ' | GT pixels |',
             '|---|' + '---:|' * len(scored) + '---:|']
    for n in names:
        ious = [_f(s['metrics']['IoU'].get(n), scale=100) for s in scored]
        pixels = next((s['metrics']['pixels'][n] for s in scored if n in s['metrics']['pixels']), 0)
        lines.append(f'| {n} | ' + ' | '.join(ious) + f' | {pixels} |')
    return '\n'.join(lines)


def live_table(live: list[dict]) -> str:
    lines = ['| model | frames sent | labels received | dropped | output rate (Hz) | age p50 / p99 (ms) | '
             'stamps kept | labels equal to offline | mIoU (published labels) | node latency p50 / p99 (ms) |',
             '|---|---:|---:|---:|---:|---|---|---|---:|---|']
    for r in live:
        age = '-' if r['age_ms'] is None else f'{r["age_ms"]["p50"]:.1f} / {r["age_ms"]["p99"]:.1f}'
        diag = r['node_diagnostics']
        lines.append(
            f'| {r["model"]} | {r["frames_sent"]} | {r["labels_received"]} | {r["frames_dropped"]} | '
            f'{_f(r["output_rate_hz"], "{:.2f}")} | '
            f'{age} | '
            f'{"yes" if r["stamps_kept"] else "NO"} ({r["stamps_matched"]}/{r["labels_received"]}) | '
            f'{r["labels_equal_offline"]}/{r["labels_compared"]} | {_f(r["mIoU"], scale=100)} | '
            f'{diag.get("latency_p50_ms", "-")} / {diag.get("latency_p99_ms", "-")} |')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_latency(summaries: list[dict], path: str | os.PathLike) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    for k, s in enumerate(summaries):
        lat = [r['latency_ms'] for r in s['per_frame']]
        ax1.plot(range(len(lat)), lat, label=s['name'], lw=1, color=f'C{k}')
        ax2.hist(lat, bins=min(40, max(5, len(lat) // 3)), alpha=0.5, label=s['name'], color=f'C{k}')
    ax1.set(xlabel='frame', ylabel='engine latency (ms)', title='Latency over the bag')
    ax2.set(xlabel='engine latency (ms)', ylabel='frames', title='Latency histogram')
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_live_age(live: list[dict], path: str | os.PathLike) -> None:
    """Age (image published -> labels received) per frame sent, one line per model; dropped frames marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for k, r in enumerate(live):
        ages = r.get('age_per_frame_ms') or []
        ax.plot(range(len(ages)), [np.nan if a is None else a for a in ages], marker='.', lw=1, color=f'C{k}',
                label=f'{r["model"]} ({r["frames_dropped"]} dropped)')
        dropped = [i for i, a in enumerate(ages) if a is None]
        ax.scatter(dropped, [0] * len(dropped), marker='x', color=f'C{k}')
    ax.set(xlabel='frame sent', ylabel='age (ms)', title='Live: image published -> labels received (x: dropped)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_iou(summaries: list[dict], path: str | os.PathLike) -> None:
    plt = _plt()
    scored = [s for s in summaries if s['metrics']]
    names = list(scored[0]['metrics']['IoU'])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) * max(1, len(scored)) / 2 + 2), 3.6))
    width = 0.8 / len(scored)
    for k, s in enumerate(scored):
        ious = [100 * (s['metrics']['IoU'].get(n) or 0) for n in names]
        ax.bar(np.arange(len(names)) + k * width - 0.4 + width / 2, ious, width, color=f'C{summaries.index(s)}',
               label=f'{s["name"]} (mIoU {100 * s["metrics"]["mIoU"]:.1f})')
    ax.set_xticks(range(len(names)), names, rotation=30, ha='right')
    ax.set(ylabel='IoU (%)', ylim=(0, 100), title='Per-class IoU')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_miou_per_frame(summaries: list[dict], path: str | os.PathLike) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for k, s in enumerate(summaries):
        rows = [(i, r['mIoU']) for i, r in enumerate(s['per_frame']) if r['mIoU'] is not None]
        ax.plot([i for i, _ in rows], [100 * v for _, v in rows], marker='.', lw=1, label=s['name'], color=f'C{k}')
    ax.set(xlabel='frame', ylabel='mIoU (%)', ylim=(0, 100), title='mIoU per frame (classes present in the frame)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_cost(summaries: list[dict], path: str | os.PathLike, difficulty_label: str) -> None:
    plt = _plt()
    with_macs = [s for s in summaries if s['gmacs_per_frame'] or s['gmacs_static']]
    fig, axes = plt.subplots(1, 2 if with_macs else 1, figsize=(11 if with_macs else 6, 3.6), squeeze=False)
    for k, s in enumerate(summaries):
        d = [r['difficulty'] for r in s['per_frame']]
        axes[0, 0].scatter(d, [r['latency_ms'] for r in s['per_frame']], s=10, label=s['name'], color=f'C{k}')
    axes[0, 0].set(xlabel=difficulty_label, ylabel='engine latency (ms)', title='Latency against difficulty')
    axes[0, 0].legend(fontsize=8)
    if with_macs:
        ax = axes[0, 1]
        for k, s in enumerate(summaries):
            d = [r['difficulty'] for r in s['per_frame']]
            if s['gmacs_per_frame']:
                ax.scatter(d, [r['gmacs'] for r in s['per_frame']], s=10, label=s['name'], color=f'C{k}')
            elif s['gmacs_static']:
                ax.plot([min(d), max(d)], [s['gmacs_static']] * 2, ls='--', label=f'{s["name"]} (static)',
                        color=f'C{k}')
        ax.set(xlabel=difficulty_label, ylabel='GMACs per frame', title='Compute against difficulty')
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _safe(name):
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)


def write_plots(out: str | os.PathLike, summaries: list[dict], has_gt: bool) -> dict[str, str]:
    files = {'latency': 'latency.png', 'cost_vs_difficulty': 'cost_vs_difficulty.png'}
    plot_latency(summaries, os.path.join(out, files['latency']))
    label = 'difficulty (share of GT pixels on a class boundary)' if has_gt else 'difficulty (share of edge pixels)'
    plot_cost(summaries, os.path.join(out, files['cost_vs_difficulty']), label)
    if has_gt:
        files['iou_per_class'] = 'iou_per_class.png'
        files['miou_per_frame'] = 'miou_per_frame.png'
        plot_iou(summaries, os.path.join(out, files['iou_per_class']))
        plot_miou_per_frame(summaries, os.path.join(out, files['miou_per_frame']))
        for s in summaries:
            if s['confusion_matrix'] is not None:
                name = f'confusion_{_safe(s["name"])}.png'
                save_confusion_png(s['confusion_matrix'], s['classes'], os.path.join(out, name),
                                   title=f'{s["name"]}: confusion (rows: ground truth)')
                files[f'confusion {s["name"]}'] = name
            if s['ece'] is not None:
                name = f'reliability_{_safe(s["name"])}.png'
                ReliabilityStats.from_summary(s['reliability']).save_png(os.path.join(out, name),
                                                                         f'{s["name"]} ({s["calibration"]})')
                files[f'reliability {s["name"]}'] = name
    return files


# ----------------------------------------------------------------------------------------------- report
def write_report(out: str | os.PathLike, args: argparse.Namespace, topics: 'BagTopics', source: 'FrameSource',
                 models: list, writer: OverlayWriter, live: list | None, occupancy: dict | None) -> str:
    """Write report.json, report.md and the plots; returns the Markdown text."""
    summaries = [model_summary(m) for m in models]
    has_gt = any(s['metrics'] for s in summaries)
    files = write_plots(out, summaries, has_gt)
    if live and any(r.get('age_per_frame_ms') for r in live):
        files['live_age'] = 'live_age.png'
        plot_live_age(live, os.path.join(out, files['live_age']))
    files['strip'] = 'strip.png'
    if writer.video_file:
        files['video'] = writer.video_file
    skipped = topics.skipped()
    report = {
        'bag': topics.path, 'frames': len(summaries[0]['per_frame']), 'frames_unusable': source.unusable,
        'restamped': source.restamped,
        'topics': {'image': topics.image, 'image_type': topics.image_type, 'gt': topics.gt,
                   'camera_info': topics.camera_info, 'occupancy': topics.occupancy},
        'topic_notes': topics.notes,
        'frames_without': {side: n for side, n in source.unmatched.items()},
        'skipped_topics': skipped,
        'skipped_messages': sum(v['messages'] for v in skipped.values()),
        'skipped_unknown_type_messages': sum(v['messages'] for v in skipped.values() if not v['known_type']),
        'camera_rate_hz': round((len(source) - 1) / ((source.stamps[-1] - source.stamps[0]) / 1e9), 3)
        if len(source) > 1 and source.stamps[-1] > source.stamps[0] else None,
        'threads': args.threads, 'exit_threshold': args.exit_threshold,
        'models': summaries, 'live': live, 'occupancy': occupancy, 'video_note': writer.video_note, 'files': files,
    }
    with open(os.path.join(out, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1)
    text = markdown(report, has_gt)
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write(text)
    return text


def markdown(report: dict, has_gt: bool) -> str:
    t = report['topics']
    lines = [f'# Replay of `{report["bag"]}`', '',
             f'{report["frames"]} camera frames from `{t["image"]}` ({t["image_type"].rsplit("/", 1)[-1]}'
             f'{", " + str(report["camera_rate_hz"]) + " Hz" if report["camera_rate_hz"] else ""}); ground truth: '
             f'{"`" + t["gt"] + "`" if t["gt"] else "none"}; CameraInfo: '
             f'{"`" + t["camera_info"] + "`" if t["camera_info"] else "none"}; occupancy: '
             f'{"`" + t["occupancy"] + "`" if t["occupancy"] else "none"}. Engine threads: '
             f'{report["threads"] or "ONNX Runtime default"}.']
    if report['restamped']:
        lines.append('')
        lines.append('The camera\'s header stamps repeat: frames and side messages were paired by bag time, and each '
                     'frame carries its bag time as its stamp (live: in the messages sent to the node too).')
    if report['frames_unusable']:
        lines.append('')
        lines.append('Left out (no model can use them; the node rejects such frames too): ' + '; '.join(
            f'{n} x {reason}' for reason, n in report['frames_unusable'].items()) + '.')
    missing = {k: v for k, v in report['frames_without'].items() if v}
    if missing:
        lines.append('')
        lines.append('Frames with no matching message: ' + ', '.join(f'{k} {v}' for k, v in missing.items()) + '.')
    if report['skipped_topics']:
        unknown = report['skipped_unknown_type_messages']
        lines.append('')
        lines.append(f'Not used: {report["skipped_messages"]} messages on {len(report["skipped_topics"])} topics ('
                     + ', '.join(f'`{k}` {v["type"]} x{v["messages"]}{"" if v["known_type"] else " (unknown type)"}'
                                 for k, v in report['skipped_topics'].items())
                     + (f'; {unknown} of unknown types' if unknown else '') + ').')
    lines += ['', f'## Models on the same {report["frames"]} frames', '', models_table(report['models']), '',
              'Latency: the engine\'s `infer()` (pre-processing, ONNX Runtime, post-processing) per frame, after two '
              'warm-up frames. mIoU and pixel accuracy: intersections and unions summed over the bag.']
    if has_gt:
        lines += ['', '## Per-class IoU (%)', '', class_table(report['models'])]
        for s in report['models']:
            if s['absent_from_truth']:
                classes = ', '.join(f'`{k}` ({v} pixels)' for k, v in s['absent_from_truth'].items())
                lines += ['', f'{s["name"]} predicts classes the ground truth never has: {classes}. Each such pixel '
                          'counts as wrong and their IoU of 0 lowers the mean; if the bag\'s truth has no such class, '
                          'score it as one it has: `--merge CLASS:GROUND_TRUTH_CLASS` (e.g. `--merge '
                          'covered_floor:floor`).']
    if report['live']:
        live = report['live']
        lines += ['', '## Live: the node in its own process', '',
                  'Each model ran in `segmentation_node` started for this replay, in DDS domain '
                  + ', '.join(f'{r["domain_id"]}' + (f' ({r["model"]})' if len(live) > 1 else '') for r in live)
                  + f' ({live[0]["isolation"]}); the bag\'s '
                  f'{", ".join("`" + t + "`" for t in live[0]["played"])} messages were published at '
                  f'{live[0]["rate"]}x the recorded speed, after {live[0].get("warmup_frames", 0)} warm-up copies '
                  'of the first frame (left out here; in the node\'s counters). Age: image published -> labels '
                  'received.', '',
                  live_table(live), '',
                  'Dropped: frames sent whose labels did not come back (the node segments the newest frame). mIoU: '
                  'over the frames whose labels came back. Node latency: from its `/diagnostics`. The node\'s log: '
                  f'{", ".join("`" + r["node_log"] + "`" for r in live)}.', '']
        for r in live:
            if r.get('other_participants'):
                lines.append(f'- {r["model"]}: other participants seen in domain {r["domain_id"]} before the node '
                             f'started: {", ".join(r["other_participants"])}')
            for problem in r['problems']:
                lines.append(f'- **{r["model"]}: {problem}**')
            if r.get('record'):
                lines.append(f'- {r["model"]}: outputs recorded to `{r["record"]}` ({r["record_topics"]})')
    occ = report['occupancy']
    if occ:
        lines += ['', '## Costmap against ground-truth occupancy', '']
        if occ['note'] and not any(r['frames'] for r in occ['models'].values()):
            lines.append(f'Not scored: {occ["note"]} (bags rendered by this version of `seg-perception render` '
                         'carry it).')
        else:
            lines += [occ['table'], '', 'The node\'s costmap (`runtime/costmap.py`) from each model\'s labels and '
                      'confidence, scored on the camera\'s visible ground (see `seg-perception occupancy --help`); '
                      f'frames without CameraInfo, occupancy or camera pose: {occ["frames_skipped"]}. '
                      'Side by side (costmap | ground truth | image): `costmap/<model>/occupancy/`.']
    files = report['files']
    lines += ['', '## Plots', '']
    for key in ('latency', 'live_age', 'cost_vs_difficulty', 'iou_per_class', 'miou_per_frame'):
        if key in files:
            lines.append(f'![{key}]({files[key]})')
    lines += [f'![{k}]({v})' for k, v in files.items() if k.startswith(('confusion', 'reliability'))]
    lines += ['', '## Frames', '', 'input | each model\'s colour mask over the input | ground truth; legend: class '
              'colours.', '', '![strip](strip.png)', '']
    lines.append(f'Every frame: `{files["video"]}`' if 'video' in files else f'No video: {report["video_note"]}')
    return re.sub(r'\n{3,}', '\n\n', '\n'.join(lines)) + '\n'
