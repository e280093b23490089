"""Costmap evaluation against ground-truth occupancy (offline/evaluation/occupancy.py) on a small rendered bag."""
import numpy as np
import pytest

from seg_perception.classes import SCENE_CLASS_NAMES
from seg_perception.offline.evaluation.occupancy import (
    camera_poses,
    evaluate_bag,
    frame_counts,
    rates,
    side_by_side,
)


def test_frame_counts_and_rates():
    gt = np.array([[100, 100, 0, 0, -1]], np.int8)
    pred = np.array([[100, 0, 0, -1, 0]], np.int8)
    visible = np.ones_like(gt, bool)
    c = frame_counts(pred, gt, visible)
    assert (c['gt_occupied'], c['gt_free'], c['pred_free'], c['false_free'], c['hit_free']) == (2, 2, 2, 1, 1)
    r = rates(c)
    assert r['obstacle_recall'] == 0.5 and r['false_free_rate'] == 0.5 and r['free_recall'] == 0.5
    assert r['occupied_iou'] == 0.5 and r['obstacle_recall_1cell'] == 1.0
    hidden = frame_counts(pred, gt, np.zeros_like(visible))
    assert hidden['visible_cells'] == 0 and rates(hidden)['false_free_rate'] is None
    image = side_by_side(pred, gt, visible, np.zeros((8, 8, 3), np.uint8))
    assert image.ndim == 3 and image.shape[0] == 10


@pytest.fixture(scope='module')
def rendered_bag(tmp_path_factory):
    pytest.importorskip('pybullet')
    from seg_perception.offline.data.bags import write_bag
    from seg_perception.offline.data.render import render_frames
    frames = list(render_frames(3, seed=5, width=160, height=120, seq_len=3, layouts=('room',)))
    path = tmp_path_factory.mktemp('occ') / 'bag'
    write_bag(str(path), frames, depth=True)
    return path, frames


def test_bag_poses_are_the_rendered_camera(rendered_bag):
    path, frames = rendered_bag
    poses = camera_poses(str(path))
    assert sorted(poses) == [f['stamp_ns'] for f in frames]
    for f in frames:
        pose = poses[f['stamp_ns']]
        assert pose[2, 3] == pytest.approx(f['camera']['height'], abs=1e-6)       # camera above base_link
        assert np.allclose(pose[:2, 3], 0.0, atol=1e-6)
        optical_axis = pose[:3, 2]                                               # z of the optical frame
        assert np.degrees(np.arcsin(optical_axis[2])) == pytest.approx(f['camera']['pitch_deg'], abs=1e-3)


def test_ground_truth_labels_score_well_and_pngs_are_written(rendered_bag, tmp_path, tiny_model):
    path, _ = rendered_bag
    ev = evaluate_bag(tiny_model, str(path), out_dir=tmp_path, thresholds=(0.0, 0.9), gt_labels=True)
    s = ev.summary()
    assert s['frames'] == 3 and ev.skipped == 0 and s['visible_cells'] > 1000
    assert s['false_free_rate'] < 0.1 and s['free_recall'] > 0.1      # perfect labels: the geometry's own limit
    assert len(list((tmp_path / 'occupancy').glob('*.png'))) == 3
    assert [r['min_confidence'] for r in s['sweep']] == [0.0, 0.9]
    assert '| min confidence |' in ev.table_markdown()
    ev.save_sweep_png(tmp_path / 'sweep.png')
    assert (tmp_path / 'sweep.png').stat().st_size > 1000
    model = evaluate_bag(tiny_model, str(path), limit=2)          # through the engine
    assert model.summary()['frames'] == 2 and model.class_costs.tolist() == [0, 100, 100, 100, 100, -1]
    assert SCENE_CLASS_NAMES[0] == 'floor'


def test_depth_places_pixels_in_3d_and_a_bag_without_depth_is_a_user_error(rendered_bag, tmp_path, tiny_model):
    from seg_perception.errors import UserError
    from seg_perception.offline.data.bags import write_bag
    path, frames = rendered_bag
    flat = evaluate_bag(tiny_model, str(path), gt_labels=True).summary()
    depth = evaluate_bag(tiny_model, str(path), gt_labels=True, depth=True).summary()
    assert depth['frames'] == 3 and depth['visible_cells'] == flat['visible_cells']
    assert depth['obstacle_recall'] > flat['obstacle_recall']   # obstacles at their measured points, not contacts
    wide = evaluate_bag(tiny_model, str(path), gt_labels=True, overhang_margin=3.0).summary()
    assert wide['free_recall'] < flat['free_recall']             # more floor kept unknown in front of contacts
    write_bag(str(tmp_path / 'nodepth'), frames)
    with pytest.raises(UserError, match="no topic '/camera/depth'"):
        evaluate_bag(tiny_model, str(tmp_path / 'nodepth'), depth=True)


def test_bag_without_poses_is_a_user_error(tmp_path, tiny_model):
    from seg_perception.errors import UserError
    from seg_perception.offline.data.bags import write_bag
    frame = {'image': np.zeros((16, 16, 3), np.uint8), 'stamp_ns': 10**9}
    write_bag(str(tmp_path / 'bag'), [frame])
    with pytest.raises(UserError, match='no base_link -> camera transform'):
        evaluate_bag(tiny_model, str(tmp_path / 'bag'))


def test_shift_gate_withholds_free_cells_while_the_alarm_is_up(rendered_bag, tmp_path, tiny_model,
                                                              tiny_logits_model):
    from onnx_models import with_shift_threshold

    from seg_perception.errors import UserError
    path, _ = rendered_bag
    for name, threshold in (('quiet', 1e9), ('alarmed', -1.0)):   # never / always above the threshold
        with_shift_threshold(tiny_logits_model, tmp_path / f'{name}.onnx', threshold)
    plain = evaluate_bag(str(tmp_path / 'quiet.onnx'), str(path))
    quiet = evaluate_bag(str(tmp_path / 'quiet.onnx'), str(path), shift_gate=True)
    alarmed = evaluate_bag(str(tmp_path / 'alarmed.onnx'), str(path), shift_gate=True)
    assert quiet.frames == plain.frames and not any(f['free_withheld'] for f in quiet.frames)
    assert plain.summary()['pred_free'] > 0
    assert all(f['free_withheld'] for f in alarmed.frames) and alarmed.summary()['pred_free'] == 0
    for key in ('hit_occupied', 'union_occupied'):                                   # obstacles as always
        assert alarmed.summary()[key] == plain.summary()[key]
    with pytest.raises(UserError, match='no shift statistics'):
        evaluate_bag(tiny_model, str(path), shift_gate=True)
    with pytest.raises(UserError, match='--gt-labels'):
        evaluate_bag(str(tmp_path / 'quiet.onnx'), str(path), shift_gate=True, gt_labels=True)
