"""Confusion-matrix metrics against hand-computed values (numpy only, no torch)."""
import json

import numpy as np
import pytest

from seg_perception.offline.evaluation.metrics import (
    ConfusionMatrix,
    compute_metrics,
    metrics_table,
    save_confusion_png,
)

# 3 classes, one ignored pixel (255)
LABEL = np.array([[0, 0, 1, 1],
                  [0, 2, 2, 255]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 1]])


def test_hand_computed_example():
    cm = ConfusionMatrix(3).update(PRED, LABEL)
    # rows ground truth, columns prediction; the pixel labelled 255 is not counted
    assert cm.matrix.tolist() == [[2, 1, 0],
                                  [0, 2, 0],
                                  [1, 0, 1]]
    m = cm.compute(['a', 'b', 'c'])
    # class a: TP 2, FP 1 (c->a), FN 1 (a->b): 2/4; b: TP 2, FP 1, FN 0: 2/3; c: TP 1, FP 0, FN 1: 1/2
    assert m['IoU'] == pytest.approx({'a': 0.5, 'b': 2 / 3, 'c': 0.5})
    assert m['mIoU'] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert m['aAcc'] == pytest.approx(5 / 7)
    assert m['Acc'] == pytest.approx({'a': 2 / 3, 'b': 1.0, 'c': 0.5})
    assert m['num_pixels'] == 7
    json.dumps(m)


def test_summed_over_dataset_not_averaged_per_image():
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((1, 10), int), np.zeros((1, 10), int))   # image 1: 10 floor pixels, all right
    cm.update(np.array([[0, 0]]), np.array([[1, 0]]))           # image 2: one of two wrong
    m = cm.compute()
    # class 0: I 11, U 12; class 1: I 0, U 1
    assert m['IoU']['0'] == pytest.approx(11 / 12)
    assert m['IoU']['1'] == 0.0
    assert m['mIoU'] == pytest.approx(11 / 24)


def test_absent_class_is_left_out_of_the_mean():
    m = compute_metrics(np.array([[3, 0, 0], [1, 4, 0], [0, 0, 0]]), ['x', 'y', 'z'])
    assert m['IoU']['z'] is None and m['Acc']['z'] is None
    assert m['mIoU'] == pytest.approx((3 / 4 + 4 / 5) / 2)


def test_ignore_index_and_errors():
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(np.array([1, 1]), np.array([255, 255]))
    assert cm.matrix.sum() == 0
    assert cm.compute()['mIoU'] is None
    with pytest.raises(ValueError, match='shape'):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r'\[0, 2\)'):
        cm.update(np.array([5]), np.array([0]))


def test_merge_and_png_and_table(tmp_path):
    a = ConfusionMatrix(3).update(PRED[:1], LABEL[:1])
    b = ConfusionMatrix(3).update(PRED[1:], LABEL[1:])
    assert a.merge(b).matrix.tolist() == ConfusionMatrix(3).update(PRED, LABEL).matrix.tolist()
    path = save_confusion_png(a.matrix, ['a', 'b', 'c'], tmp_path / 'confusion.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = metrics_table(a.compute(['a', 'b', 'c']), [('latency p50 (ms)', '1.0')])
    assert '| a | 50.00 |' in table and '| mIoU | 55.56 |' in table and 'latency p50' in table


def test_bootstrap_interval_brackets_the_miou_and_narrows_with_more_frames():
    """The frame-bootstrap interval holds the dataset mIoU, is reproducible (fixed seed), is wider for a few
    frames of uneven quality than for many, and is None for a single frame."""
    from seg_perception.offline.evaluation.metrics import FrameAreas, bootstrap_miou

    rng = np.random.default_rng(1)

    def frames(count):
        areas, total = FrameAreas(), ConfusionMatrix(3)
        for _ in range(count):
            label = rng.integers(0, 3, (20, 20))
            wrong = rng.random(label.shape) < rng.uniform(0.05, 0.6)   # frames from easy to hard
            pred = np.where(wrong, (label + 1) % 3, label)
            frame = ConfusionMatrix(3).update(pred, label)
            areas.add(frame.matrix)
            total.merge(frame)
        return areas, total.compute()['mIoU']

    few, few_miou = frames(8)
    many, many_miou = frames(400)
    lo, hi = bootstrap_miou(few)
    assert lo < few_miou < hi
    assert bootstrap_miou(few) == (lo, hi)
    lo_many, hi_many = bootstrap_miou(many)
    assert lo_many < many_miou < hi_many and hi_many - lo_many < (hi - lo) / 3
    single = FrameAreas()
    single.add(np.eye(3, dtype=np.int64))
    assert bootstrap_miou(single) is None
