"""Issue 18 (know when not to trust the labels): confidence calibration and the domain-shift monitor, from the
numpy core through the engine and ``seg-perception calibrate`` to the node's topic and diagnostics."""
from pathlib import Path

import numpy as np
import pytest

from seg_perception.offline.evaluation.calibration import (
    ReliabilityStats,
    auroc,
    fit_temperature,
    nll,
    sample_ece,
)
from seg_perception.runtime import metadata as md
from seg_perception.runtime.shift import ShiftScorer, feature_names, fit_statistics, frame_features, smooth

REPO = Path(__file__).resolve().parents[1]
SCENE_MODEL = REPO / 'models' / 'topformer_tiny_scenes.onnx'
SAMPLE_BAG = REPO / 'samples' / 'scenes_sample'
SCENES = REPO / 'data' / 'scenes'
try:
    from test_node import ros  # the node fixture (real rclpy, own context)
except (ImportError, pytest.skip.Exception):
    ros = None
CAMVID_TEST = REPO.parent / 'shared' / 'datasets' / 'camvid' / 'test'


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_ece_of_known_bins():
    stats = ReliabilityStats()
    conf = np.array([0.95] * 10 + [0.55] * 10, np.float32)
    labels = np.zeros(20, np.int64)
    gt = np.array([0] * 9 + [1] + [0] * 3 + [1] * 7)   # 90 % right at 0.95, 30 % right at 0.55
    stats.add(conf, labels, gt)
    assert stats.ece() == pytest.approx(0.5 * 0.05 + 0.5 * 0.25)
    stats.add(conf, labels, np.full(20, 255))          # ignored pixels change nothing
    assert stats.pixels == 20 and ReliabilityStats().ece() is None


def test_temperature_fit_recovers_the_true_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (20000, 6)).astype(np.float32)        # overconfident logits: truth is softmax(z / 2.5)
    p = _softmax(z / 2.5)
    y = (rng.random(len(z))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    inv = fit_temperature(z, y)
    assert 1 / inv[0] == pytest.approx(2.5, rel=0.05)
    assert nll(z, y, inv) < nll(z, y, 1.0)
    assert sample_ece(z, y, inv) < 0.02 < sample_ece(z, y)
    # the engine's confidence (corners' max softmax, interpolated) equals softmax(z) where the corners agree
    same = np.stack([z] * 4)
    weights = np.random.default_rng(1).dirichlet(np.ones(4), len(z)).astype(np.float32)
    assert sample_ece(z, y, inv, same, weights) == pytest.approx(sample_ece(z, y, inv), abs=1e-6)
    per_class = fit_temperature(z, y, per_class=True)
    assert per_class.shape == (6,) and np.allclose(1 / per_class, 2.5, rtol=0.15)


def test_metadata_temperature_and_shift_stats_are_validated():
    base = {'names': ['a', 'b'], 'palette': [[0, 0, 0], [1, 1, 1]], 'mean': [0, 0, 0], 'std': [1, 1, 1],
            'input_size': [32, 32], 'resize_mode': 'resize', 'output_kind': 'logits'}
    assert md.decode(md.encode({**base, 'temperature': [1.5]}))['temperature'] == [1.5]
    for bad in ([0.0], [1.0, 2.0, 3.0], 2.0):
        with pytest.raises(ValueError, match='temperature'):
            md.decode(md.encode({**base, 'temperature': bad}))
    with pytest.raises(ValueError, match='shift_stats'):
        md.decode(md.encode({**base, 'shift_stats': [1, 2]}))


def test_shift_scorer_separates_shifted_logits_and_smooths():
    rng = np.random.default_rng(1)
    own = [rng.normal(0, 1, (4, 8, 10)) + np.array([3, 0, 0, 0])[:, None, None] for _ in range(200)]
    other = [rng.normal(0, 1, (4, 8, 10)) * 2.0 for _ in range(20)]
    feats = np.stack([frame_features(x) for x in own])
    assert feats.shape[1] == len(feature_names(4)) == 15
    scorer = ShiftScorer({**fit_statistics(feats[:150], ['std0', 'share0', 'energy']), 'window': 3, 'threshold': 5.0})
    held = [scorer.score(x) for x in own[150:]]
    far = [scorer.score(x) for x in other]
    assert auroc(held, far) > 0.99 and auroc(far, held) < 0.01
    neg, pos = rng.integers(0, 5, 30), rng.integers(2, 7, 25)   # ties count half: the pairwise definition
    pairs = (pos[None] > neg[:, None]).mean() + 0.5 * (pos[None] == neg[:, None]).mean()
    assert auroc(neg, pos) == pytest.approx(pairs)
    assert smooth([1.0, 2.0, 3.0, 4.0], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    values = [scorer.update(x)[1] for x in own[:3]]
    assert values[-1] == pytest.approx(np.mean([scorer.score(x) for x in own[:3]]))
    with pytest.raises(ValueError, match='unknown shift features'):
        fit_statistics(feats, ['std9'])


# ------------------------------------------------------------------ the shipped scene model
needs_scene_model = pytest.mark.skipif(not SCENE_MODEL.exists(), reason=f'{SCENE_MODEL} not present')


def _camvid_images(count):
    """The first ``count`` CamVid test photos (spread over the split), RGB."""
    import cv2
    images = sorted((CAMVID_TEST / 'images').iterdir())
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in images[::len(images) // count][:count]]


@pytest.fixture(scope='module')
def calibrated_model(tmp_path_factory):
    """The scene model with calibration and shift statistics: as shipped when it carries them, else fitted here
    on a few held-out (temperature, threshold) and training (statistics) frames of data/scenes."""
    if not SCENE_MODEL.exists():
        pytest.skip(f'{SCENE_MODEL} not present')
    from seg_perception.offline.graph.onnx_graph import read_metadata
    meta = read_metadata(str(SCENE_MODEL))
    if meta.get('temperature') and meta.get('shift_stats'):
        return str(SCENE_MODEL)
    if not (SCENES / 'images' / 'train').is_dir() or not (SCENES / 'images' / 'val').is_dir():
        pytest.skip('the scene model has no calibration and data/scenes (train, val) is not rendered to fit one')
    from seg_perception.offline.deploy.calibrate import calibrate
    out = tmp_path_factory.mktemp('trust') / 'scenes_calibrated.onnx'
    calibrate(str(SCENE_MODEL), str(SCENES), 'val', limit=60, pixels_per_frame=500, shift=str(SCENES),
              shift_limit=150, out=str(out), progress=False)
    return str(out)


def test_features_are_chosen_by_the_worst_auroc_against_foreign_frames():
    from seg_perception.offline.deploy.calibrate import choose_features
    names = feature_names(2)   # 9 features
    rng = np.random.default_rng(4)
    train, held = rng.normal(0, 1, (200, 9)), rng.normal(0, 1, (60, 9))
    shifted_a, shifted_b = rng.normal(0, 1, (40, 9)), rng.normal(0, 1, (40, 9))
    shifted_a[:, names.index('std1')] += 4.0      # one foreign set moves std1, the other energy
    shifted_b[:, names.index('energy')] -= 4.0
    chosen, taps, scores = choose_features(train, held, {'a': shifted_a, 'b': shifted_b}, max_size=2)
    assert sorted(chosen) == ['energy', 'std1'] and taps == [] and min(scores.values()) > 0.95
    alone, _, _ = choose_features(train, held, {'a': shifted_a}, max_size=1)
    assert alone == ['std1']
    # candidate taps: set b moves only tap 2's distance, which no logits feature sees
    plain_b = rng.normal(0, 1, (40, 9))
    graph = {'train': np.abs(rng.normal(1, 0.2, (200, 3))), 'held': np.abs(rng.normal(1, 0.2, (60, 3))),
             'a': np.abs(rng.normal(1, 0.2, (40, 3))), 'b': np.abs(rng.normal(1, 0.2, (40, 3)))}
    graph['b'][:, 2] += 3.0
    chosen, taps, scores = choose_features(train, held, {'a': shifted_a, 'b': plain_b}, max_size=1, graph=graph)
    assert chosen == ['std1'] and taps == [2] and min(scores.values()) > 0.9
    without, _, worse = choose_features(train, held, {'a': shifted_a, 'b': plain_b}, max_size=1)
    assert min(worse.values()) < 0.75
    stats = fit_statistics(train, ['share0'])   # one feature: a 1x1 precision
    assert np.asarray(stats['precision']).shape == (1, 1)


def test_features_are_chosen_by_the_worst_margin_above_each_sets_target():
    from seg_perception.offline.deploy.calibrate import choose_features, parse_foreign
    names = feature_names(2)
    rng = np.random.default_rng(5)
    train, held = rng.normal(0, 1, (400, 9)), rng.normal(0, 1, (400, 9))
    a, b = rng.normal(0, 1, (400, 9)), rng.normal(0, 1, (400, 9))
    a[:, names.index('std1')] += 2.5   # std1 separates both sets alike (AUROC 0.92-0.93)
    b[:, names.index('std1')] += 2.5
    a[:, names.index('energy')] -= 6.0   # energy: set a all but perfectly (1.0), set b less (0.87)
    b[:, names.index('energy')] -= 1.9
    plain, _, scores = choose_features(train, held, {'a': a, 'b': b}, max_size=1)
    assert plain == ['std1'] and min(scores.values()) > 0.9
    aimed, _, scores = choose_features(train, held, {'a': a, 'b': b}, max_size=1, targets={'a': 0.99, 'b': 0.85})
    assert aimed == ['energy'] and scores['a'] > 0.99 and scores['b'] > 0.85
    assert parse_foreign('data/raycast_sel:val@0.95') == ('data/raycast_sel', 'val', 0.95)
    assert parse_foreign('bag') == ('bag', '', 0.0)
    with pytest.raises(ValueError, match="not '1.5'"):
        parse_foreign('bag@1.5')
    # logit statistics that see nothing foreign only add noise: the taps alone win
    noise = [rng.normal(0, 1, (n, 9)) for n in (300, 300, 200, 200)]
    graph = {key: np.abs(rng.normal(1, 0.2, (len(x), 3))) for key, x in zip(('train', 'held', 'a', 'b'), noise)}
    graph['a'][:, 0] += 0.4
    graph['b'][:, 2] += 0.4
    chosen, taps, scores = choose_features(noise[0], noise[1], {'a': noise[2], 'b': noise[3]}, max_size=1,
                                           graph=graph)
    assert chosen == [] and taps == [0, 2] and min(scores.values()) > 0.75


def test_engine_applies_the_temperature_labels_unchanged(tmp_path):
    import onnx

    from seg_perception.offline.graph.onnx_graph import read_metadata, set_metadata
    from seg_perception.runtime.engine import SegmentationEngine
    from seg_perception.runtime.upsample import coarse_label_confidence
    proto = onnx.load(str(SCENE_MODEL))
    meta = read_metadata(proto)
    meta.pop('temperature', None)
    set_metadata(proto, meta)
    plain_path, hot_path = tmp_path / 'plain.onnx', tmp_path / 'hot.onnx'
    onnx.save(proto, str(plain_path))
    set_metadata(proto, {**meta, 'temperature': [2.0]})
    onnx.save(proto, str(hot_path))
    plain, hot = SegmentationEngine(str(plain_path)), SegmentationEngine(str(hot_path))
    assert not plain.calibrated and hot.calibrated
    rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)
    a, b = plain.infer(rgb), hot.infer(rgb)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert b.confidence.mean() < a.confidence.mean()
    # 240x320 -> 256x320 'resize' -> the coarse confidence of logits / 2, interpolated
    coarse = coarse_label_confidence(a.logits / 2.0)[1]
    assert abs(float(b.confidence.mean()) - float(coarse.mean())) < 0.01


@needs_scene_model
def test_calibration_lowers_ece_on_held_out_frames(calibrated_model, tmp_path):
    """On held-out frames of the training renderer (data/scenes test when rendered, else the first 80 frames of
    that split rendered here: the same seed gives the same frames). 80, not fewer: with per-class temperatures
    the ECE of 40 frames is noise (the shipped model: 1.25 -> 1.42 % on the first 40, 1.27 -> 1.04 % on 80,
    1.85 -> 1.35 % on all 300)."""
    from seg_perception.offline.data.datasets import open_dataset
    from seg_perception.offline.evaluation.calibration import collect
    from seg_perception.runtime.engine import SegmentationEngine
    if (SCENES / 'images' / 'test').is_dir():
        test = open_dataset(str(SCENES), split='test')
    else:
        pytest.importorskip('pybullet', reason='rendering held-out frames needs pybullet (the train extra)')
        from seg_perception.offline.data.render import DATASET_FOLDERS, render_frames, save_frame, write_classes_yaml
        for sub in DATASET_FOLDERS:
            (tmp_path / sub / 'test').mkdir(parents=True)
        write_classes_yaml(tmp_path / 'classes.yaml')
        for frame in render_frames(80, seed=2, width=320, height=240):
            save_frame(tmp_path, frame, 'test')
        test = open_dataset(str(tmp_path), split='test')
    raw = SegmentationEngine(str(SCENE_MODEL))
    raw.inv_temperature = None   # as exported, whatever the shipped file carries
    before = collect(raw, test, limit=80, progress=False, pixels=False)['reliability'].ece()
    after = collect(SegmentationEngine(calibrated_model), test, limit=80, progress=False,
                    pixels=False)['reliability'].ece()
    assert after < before, (before, after)


@needs_scene_model
@pytest.mark.skipif(not SAMPLE_BAG.exists() or not CAMVID_TEST.is_dir(),
                    reason='needs samples/scenes_sample and ../shared/datasets/camvid/test')
def test_alarm_fires_on_camvid_photos_and_stays_quiet_on_own_frames(calibrated_model):
    from seg_perception.offline.data.datasets import open_dataset
    from seg_perception.runtime.engine import SegmentationEngine
    engine = SegmentationEngine(calibrated_model)
    scorer = ShiftScorer(engine.meta['shift_stats'])
    bag = open_dataset(str(SAMPLE_BAG))

    def score(rgb):
        result = engine.infer(rgb)
        return scorer.score(result.logits, result.shift_features)   # the graph's taps, where the model has them

    own = smooth([score(bag[i][0]) for i in range(0, len(bag), 2)], scorer.window)
    photos = smooth([score(rgb) for rgb in _camvid_images(scorer.window)], scorer.window)
    assert len(photos) == scorer.window
    assert np.all(own <= scorer.threshold), (own.max(), scorer.threshold)
    assert photos[-1] > scorer.threshold, (photos, scorer.threshold)


# ------------------------------------------------------------------ the node over real rclpy
@needs_scene_model
@pytest.mark.skipif(ros is None, reason='ROS 2 rclpy not installed (pip install .[ros])')
@pytest.mark.skipif(not SAMPLE_BAG.exists() or not CAMVID_TEST.is_dir(),
                    reason='needs samples/scenes_sample and ../shared/datasets/camvid/test')
def test_node_publishes_shift_score_and_warns_in_diagnostics(ros, calibrated_model):  # noqa: F811
    from diagnostic_msgs.msg import DiagnosticStatus
    from std_msgs.msg import Float32

    from seg_perception.offline.data.datasets import open_dataset
    from seg_perception.shift_node import ALARM_MESSAGE
    node, h = ros(model_path=calibrated_model, diagnostics_period=0.1)
    scores = []
    h.node.create_subscription(Float32, 'segmentation/shift_score', lambda m: scores.append(m.data), 10)
    assert h.wait_for(lambda: node.shift.pub.get_subscription_count() > 0)

    def feed(frames):
        for rgb in frames:
            done = node.frame_counts()['processed']
            h.publish(rgb, 'rgb8')
            assert h.wait_for(lambda d=done: node.frame_counts()['processed'] > d, timeout=20)

    def diag():
        for m in reversed(h.received['diagnostics']):
            for s in m.status:
                if 'segmentation' in s.name:
                    return s, {kv.key: kv.value for kv in s.values}
        return None, {}
    def diag_after(n):
        # the first diagnostics message that reports the n-th published score (under load it can lag a period)
        assert h.wait_for(lambda: len(scores) == n)
        assert h.wait_for(lambda: abs(float(diag()[1].get('shift_score', 'nan')) - scores[-1]) <= 1e-3), \
            (diag()[1].get('shift_score'), scores[-1])
        return diag()
    bag = open_dataset(str(SAMPLE_BAG))
    feed([bag[i][0] for i in range(0, 10, 2)])
    status, values = diag_after(5)
    assert values['shift_monitor'] == 'ok' and values['confidence_calibration'].startswith('temperature')
    assert status.level == DiagnosticStatus.OK and ALARM_MESSAGE not in status.message
    assert scores[-1] <= float(values['shift_threshold'])
    feed(_camvid_images(node.shift._scorer.window))
    status, values = diag_after(5 + node.shift._scorer.window)
    assert status.level == DiagnosticStatus.WARN and ALARM_MESSAGE in status.message, status.message
    assert scores[-1] > float(values['shift_threshold'])


@needs_scene_model
@pytest.mark.skipif(not SAMPLE_BAG.exists(), reason='samples/scenes_sample not present')
def test_evaluate_and_replay_report_ece_and_reliability_diagram(calibrated_model, tmp_path):
    from seg_perception.offline.cli import main
    from seg_perception.offline.evaluation.evaluate import evaluate
    report = evaluate(calibrated_model, str(SAMPLE_BAG), limit=6, out=str(tmp_path / 'eval'), progress=False)
    assert 0 <= report['ece'] < 0.2 and report['calibration'].startswith('temperature')
    assert (tmp_path / 'eval' / 'reliability.png').stat().st_size > 0 and 'pixel ECE' in report['table']
    out = tmp_path / 'replay'
    assert main(['replay', str(SAMPLE_BAG), '--model', calibrated_model, '--limit', '6', '--no-video',
                 '--out', str(out)]) == 0
    text = (out / 'report.md').read_text()
    assert 'ECE (15 bins)' in text and '(temperature ' in text
    assert list(out.glob('reliability_*.png'))


@pytest.mark.skipif(not (REPO / 'models' / 'static_vit_mini_scenes.onnx').exists(), reason='labels model absent')
def test_calibrate_refuses_a_labels_model_in_one_line(tmp_path, capsys):
    from seg_perception.offline.cli import main
    code = main(['calibrate', '--model', str(REPO / 'models' / 'static_vit_mini_scenes.onnx'), '--data',
                 str(SAMPLE_BAG), '-o', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'needs a logits model' in err[0]
    assert not (tmp_path / 'x.onnx').exists()
    code = main(['calibrate', '--model', str(SCENE_MODEL), '--data', str(SAMPLE_BAG), '--choose-features',
                 str(SAMPLE_BAG), '-o', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and '--choose-features needs --shift' in err[0]
    code = main(['calibrate', '--model', str(SCENE_MODEL), '--data', str(SAMPLE_BAG), '--shift', str(SAMPLE_BAG),
                 '--choose-features', f'{SAMPLE_BAG}@high', '-o', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not 'high'" in err[0] and not (tmp_path / 'x.onnx').exists()


def test_features_chosen_for_a_model_without_graph_taps(tmp_path):
    """``--choose-features`` on a file with no internal taps (and none asked for): logit statistics only."""
    from seg_perception.offline.cli import main
    from seg_perception.runtime.engine import SegmentationEngine
    out = tmp_path / 'mix.onnx'
    assert main(['calibrate', '--model', str(REPO / 'models' / 'topformer_tiny_scenes_mix.onnx'), '--data',
                 str(SAMPLE_BAG), '--shift', str(SAMPLE_BAG), '--shift-limit', '8', '--choose-features',
                 str(SAMPLE_BAG), '-o', str(out)]) == 0
    stats = SegmentationEngine(str(out)).meta['shift_stats']
    assert stats['features'] and not stats.get('graph_groups')


@needs_scene_model
def test_a_model_without_calibration_or_statistics_runs_and_diagnostics_say_so(tmp_path, tiny_model):
    pytest.importorskip('std_msgs', reason='ROS 2 messages not installed (pip install .[ros])')
    import onnx

    from seg_perception.offline.graph.onnx_graph import read_metadata, set_metadata
    from seg_perception.runtime.engine import SegmentationEngine
    from seg_perception.shift_node import ShiftOutput
    proto = onnx.load(str(SCENE_MODEL))
    meta = {k: v for k, v in read_metadata(proto).items() if k not in ('temperature', 'shift_stats')}
    set_metadata(proto, meta)
    onnx.save(proto, str(tmp_path / 'bare.onnx'))
    bare = SegmentationEngine(str(tmp_path / 'bare.onnx'))
    assert bare.infer(np.zeros((48, 64, 3), np.uint8)).labels.shape == (48, 64)
    shift = ShiftOutput(None, lambda *args: None, None)
    values = shift.diagnostics(bare)
    assert values['confidence_calibration'] == 'uncalibrated'
    assert values['shift_monitor'].startswith('no shift statistics') and 'shift_score' not in values
    labels_model = shift.diagnostics(SegmentationEngine(tiny_model))
    assert labels_model['shift_monitor'].startswith('not available (labels model')


@pytest.mark.skipif(not (REPO / 'models' / 'topformer_tiny_scenes_cover.onnx').exists() or not SAMPLE_BAG.exists(),
                    reason='needs models/topformer_tiny_scenes_cover.onnx and samples/scenes_sample')
def test_trust_merges_a_class_the_frames_lack(tmp_path, capsys):
    """A 7-class model on 6-class frames: the alarm only, unless --merge maps covered_floor onto floor; then the
    ECE is measured on the merged labels; a malformed --merge is one line, exit 2."""
    from seg_perception.offline.evaluation import trust
    cover = REPO / 'models' / 'topformer_tiny_scenes_cover.onnx'
    plain = trust.report(cover, [str(SAMPLE_BAG)], [], limit=4)
    assert '| n/a (other classes) |' in plain
    merged = trust.report(cover, [str(SAMPLE_BAG)], [], limit=4, out=tmp_path, merge={'covered_floor': 'floor'})
    assert 'covered_floor scored as floor' in merged and 'n/a' not in merged.split('(own)')[1].split('\n')[0]
    assert len(list(tmp_path.glob('reliability_*.png'))) == 2   # uncalibrated and calibrated, of the one set
    argv = ['--model', str(cover), '--own', str(SAMPLE_BAG), '--limit', '2', '--merge', 'covered_floor']
    assert trust.main(argv) == 2
    assert 'expected MODEL_CLASS:DATASET_CLASS' in capsys.readouterr().err
