"""Issue 18, shift monitor on internal features: ``calibrate --taps`` adds pooled, whitened statistics of internal
tensors to the graph (``shift_features``); the engine returns them, the scorer adds their distances, labels and
logits stay as they were."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from seg_perception.offline.deploy import shift_features as sf
from seg_perception.runtime.engine import SegmentationEngine
from seg_perception.runtime.shift import (
    ShiftScorer,
    decode_reference,
    encode_reference,
    fit_statistics,
    frame_features,
    kth_nearest,
)

REPO = Path(__file__).resolve().parents[1]
SCENE_MODEL = REPO / 'models' / 'topformer_tiny_scenes.onnx'
SAMPLE_BAG = REPO / 'samples' / 'scenes_sample'
needs_scene_model = pytest.mark.skipif(not SCENE_MODEL.exists() or not SAMPLE_BAG.exists(),
                                       reason='needs models/topformer_tiny_scenes.onnx and samples/scenes_sample')


def test_parse_taps_names_the_bad_entry():
    assert sf.parse_taps('stem:std, trans:mean') == [('stem', 'std'), ('trans', 'mean')]
    assert sf.parse_taps('/model/x/:mean') == [('/model/x/', 'mean')]
    for bad in ('stem', 'stem:max', ':mean', ' , '):
        with pytest.raises(ValueError, match='tap|no taps'):
            sf.parse_taps(bad)


def test_graph_statistics_equal_numpy_and_whitening_gives_the_mahalanobis_distance(tiny_logits_model, tmp_path):
    proto = onnx.load(tiny_logits_model)
    taps = [('Conv', 'mean'), ('Conv', 'std')]     # the tiny graph's 1/8 logits conv, both statistics
    with pytest.raises(ValueError, match="no node name starts with 'Conv'"):
        sf.tap_tensor(proto.graph, 'Conv')
    for node in proto.graph.node:   # give the nodes names the taps can find
        node.name = node.name or node.op_type
    probe = np.zeros((1, 3, 64, 96), np.float32)
    channels = sf.tap_channels(proto, taps, probe)
    assert channels == [6, 6]
    groups = sf.add_shift_features(proto, taps, channels)
    assert [g['size'] for g in groups] == [6, 6]
    raw_path = tmp_path / 'raw.onnx'
    onnx.save(proto, str(raw_path))
    plain, raw = SegmentationEngine(tiny_logits_model), SegmentationEngine(str(raw_path))
    assert raw.has_shift_features and not plain.has_shift_features
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 72, 3), np.uint8) for _ in range(30)]
    stats = []
    for rgb in frames:
        a, b = plain.infer(rgb), raw.infer(rgb)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.logits, b.logits)
        z = b.logits.reshape(6, -1).astype(np.float64)
        expect = np.concatenate([z.mean(1), 0.5 * np.log(np.maximum((z ** 2).mean(1) - z.mean(1) ** 2, 1e-8))])
        assert np.allclose(b.shift_features, expect, atol=1e-4)
        stats.append(b.shift_features)
    stats = np.asarray(stats)
    fits = [sf.fit_whitening(block) for block in np.split(stats, [6], axis=1)]
    sf.set_whitening(proto, [c for c, _ in fits], [w for _, w in fits])
    onnx.save(proto, str(tmp_path / 'white.onnx'))
    white = SegmentationEngine(str(tmp_path / 'white.onnx')).infer(frames[0]).shift_features
    center, whiten = fits[0]
    x = stats[0, :6] - center
    precision = whiten @ whiten.T
    assert np.linalg.norm(white[:6]) == pytest.approx(np.sqrt(x @ precision @ x), rel=1e-4)


def test_scorer_adds_scaled_block_lengths_and_needs_the_graph_output():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (6, 8, 10)).astype(np.float32)
    feats = np.stack([frame_features(rng.normal(0, 1, (6, 8, 10))) for _ in range(40)])
    stats = fit_statistics(feats, ['mean0', 'entropy'])
    base = ShiftScorer(stats).score(logits)
    stats.update(logits_scale=2.0, graph_groups=[{'name': 'a', 'stat': 'mean', 'size': 2, 'scale': 5.0},
                                                 {'name': 'b', 'stat': 'std', 'size': 1, 'scale': 0.5}])
    scorer = ShiftScorer(stats)
    assert scorer.score(logits, np.array([3.0, 4.0, -1.0])) == pytest.approx(base / 2 + 5 / 5 + 1 / 0.5)
    with pytest.raises(ValueError, match='shift_features'):
        scorer.score(logits)
    with pytest.raises(ValueError, match='positive'):
        ShiftScorer({**stats, 'graph_groups': [{'name': 'a', 'stat': 'mean', 'size': 2, 'scale': 0}]})
    # no logit statistics: the taps' distances alone; with no taps either, nothing to score
    taps_only = {**fit_statistics(feats, []), 'graph_groups': stats['graph_groups']}
    assert ShiftScorer(taps_only).score(logits, np.array([3.0, 4.0, -1.0])) == pytest.approx(5 / 5 + 1 / 0.5)
    with pytest.raises(ValueError, match='nothing to score'):
        ShiftScorer(fit_statistics(feats, []))


def test_knn_scorer_takes_the_kth_nearest_training_block_of_each_tap():
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, (30, 3))
    groups = [{'name': 'a', 'stat': 'mean', 'size': 2, 'scale': 2.0}, {'name': 'b', 'stat': 'std', 'size': 1,
                                                                      'scale': 0.5}]
    stats = {**fit_statistics(np.zeros((4, 21)), []), 'graph_groups': groups, 'knn': 3,
             'reference': encode_reference(reference)}
    stored = decode_reference(stats['reference'])
    assert stored.shape == (30, 3) and np.abs(stored - reference).max() < 2e-3   # float16
    frame = np.array([0.3, -1.2, 2.5])
    expected = (np.sort(np.linalg.norm(stored[:, :2] - frame[:2], axis=1))[2] / 2.0
                + np.sort(np.abs(stored[:, 2] - frame[2]))[2] / 0.5)
    assert ShiftScorer(stats).score(None, frame) == pytest.approx(expected)
    # a training frame itself, left out of its own neighbours, against the same rule by brute force
    loo = kth_nearest(stored[:, :2], stored[:, :2], 1, leave_one_out=True)
    brute = [min(np.linalg.norm(stored[i, :2] - stored[j, :2]) for j in range(30) if j != i) for i in range(30)]
    assert np.allclose(loo, brute)
    # a reference that does not fit the taps, or fewer frames than k: refused, naming what is wrong
    with pytest.raises(ValueError, match='knn 3'):
        ShiftScorer({**stats, 'reference': encode_reference(reference[:, :2])})
    with pytest.raises(ValueError, match='knn 40'):
        ShiftScorer({**stats, 'knn': 40})
    with pytest.raises(ValueError, match='malformed'):
        ShiftScorer({**stats, 'reference': {'shape': [30, 3]}})


@needs_scene_model
def test_calibrate_with_taps_on_the_scene_model(tmp_path, capsys):
    from seg_perception.offline.cli import main
    out = tmp_path / 'tapped.onnx'
    args = ['calibrate', '--model', str(SCENE_MODEL), '--data', str(SAMPLE_BAG), '--limit', '20',
            '--pixels-per-frame', '200', '--shift', str(SAMPLE_BAG), '--shift-limit', '30']
    assert main([*args, '--taps', 'ppa:mean,trans:mean', '--costmap-min-confidence', '0.8', '-o', str(out)]) == 0
    assert 'taps in the graph: ppa:mean (208 channels), trans:mean (208 channels)' in capsys.readouterr().out
    engine, plain = SegmentationEngine(str(out)), SegmentationEngine(str(SCENE_MODEL))
    assert engine.meta['costmap_min_confidence'] == 0.8
    stats = engine.meta['shift_stats']
    assert [g['name'] for g in stats['graph_groups']] == ['ppa', 'trans'] and stats['logits_scale'] > 0
    from seg_perception.offline.data.datasets import open_dataset
    rgb = open_dataset(str(SAMPLE_BAG))[35][0]     # a frame the statistics did not see
    a, b = plain.infer(rgb), engine.infer(rgb)
    # the taps leave the network's logits untouched (labels may differ where the shipped file's per-class
    # temperatures, replaced here by one, flip a near tie)
    assert np.array_equal(a.logits, b.logits) and b.shift_features.shape == (416,)
    score = ShiftScorer(stats).score(b.logits, b.shift_features)
    assert 0 < score < 3 * stats['threshold']
    # a user's mistakes: one line, exit code 2, the bad value named
    capsys.readouterr()
    assert main([*args, '--taps', 'ppa:max', '-o', str(tmp_path / 'x.onnx')]) == 2
    assert "'ppa:max'" in capsys.readouterr().err
    assert main([*args, '--taps', 'nothere:mean', '-o', str(tmp_path / 'x.onnx')]) == 2
    assert "'nothere'" in capsys.readouterr().err
    assert main([*args, '--taps', 'ppa:mean', '--costmap-min-confidence', '1.5', '-o', str(tmp_path / 'x.onnx')]) == 2
    assert '--costmap-min-confidence 1.5' in capsys.readouterr().err
    assert not (tmp_path / 'x.onnx').exists()
    # a tapped model: --taps replaces its taps, --shift alone refits the same ones; nothing of the old ones stays
    import onnx
    for extra, names in ((['--taps', 'fuse:std'], ['fuse']), ([], ['ppa', 'trans']),
                         (['--choose-features', f'{SAMPLE_BAG}'], None)):
        again = tmp_path / f'again_{len(extra)}.onnx'
        assert main([*args, *extra, '--model', str(out), '-o', str(again)]) == 0
        refit = SegmentationEngine(str(again))
        groups = [g['name'] for g in refit.meta['shift_stats'].get('graph_groups', ())]
        assert groups == names if names else set(groups) <= {'ppa', 'trans'}   # chosen among the model's own
        graph = onnx.load(str(again)).graph
        assert sum(n.name.startswith('shift_features/') for n in graph.node) == (1 if groups else 0)
        assert [o.name for o in graph.output].count('shift_features') == (1 if groups else 0)
        assert np.array_equal(refit.infer(rgb).logits, a.logits)
    # --quantile: the threshold from that quantile of the held-out smoothed scores instead of their largest
    capsys.readouterr()
    assert main([*args, '--taps', 'ppa:mean,trans:mean', '--quantile', '0.5', '-o', str(tmp_path / 'q.onnx')]) == 0
    assert 'quantile 0.5:' in capsys.readouterr().out
    assert SegmentationEngine(str(tmp_path / 'q.onnx')).meta['shift_stats']['threshold'] < stats['threshold']
    assert main([*args, '--quantile', '0', '-o', str(tmp_path / 'y.onnx')]) == 2
    assert '--quantile (0.0)' in capsys.readouterr().err
    # --tap-knn: each tap scored by its k-th nearest training frame, the frames' blocks in the metadata
    assert main([*args, '--taps', 'ppa:mean,trans:mean', '--tap-knn', '2', '-o', str(tmp_path / 'k.onnx')]) == 0
    assert 'k-th nearest training frame, k = 2' in capsys.readouterr().out
    knn = SegmentationEngine(str(tmp_path / 'k.onnx'))
    knn_stats = knn.meta['shift_stats']
    assert knn_stats['knn'] == 2 and decode_reference(knn_stats['reference']).shape == (30, 416)
    result = knn.infer(rgb)
    assert 0 < ShiftScorer(knn_stats).score(result.logits, result.shift_features) < 3 * knn_stats['threshold']
    for bad, named in ((['--taps', 'ppa:mean', '--tap-knn', '30'], '--tap-knn 30'),   # 30 training frames
                       (['--tap-knn', '2', '--model', str(REPO / 'models' / 'topformer_tiny_scenes_mix.onnx')],
                        '--tap-knn scores graph taps')):                               # a model without taps
        assert main([*args, *bad, '-o', str(tmp_path / 'z.onnx')]) == 2, bad
        assert named in capsys.readouterr().err


@pytest.mark.skipif(not (REPO / 'models' / 'adaptive_topformer_tiny_scenes.onnx').exists(),
                    reason='models/adaptive_topformer_tiny_scenes.onnx not present')
def test_taps_of_a_model_with_a_knob_input():
    """The channel probe feeds the knob (refine_threshold) too; the shipped adaptive model carries its taps."""
    path = REPO / 'models' / 'adaptive_topformer_tiny_scenes.onnx'
    proto = onnx.load(str(path))
    sf.remove_shift_features(proto)
    assert 'shift_features' not in [o.name for o in proto.graph.output]
    assert sf.tap_channels(proto, [('/ppa/', 'mean'), ('/tpm/stem/', 'std')], np.zeros((1, 3, 64, 64), np.float32)) \
        == [208, 16]
    engine = SegmentationEngine(str(path))
    result = engine.infer(np.full((96, 128, 3), 90, np.uint8), refine_threshold=0.0)
    score = ShiftScorer(engine.meta['shift_stats']).score(result.logits, result.shift_features)
    assert np.isfinite(score) and score > 0
