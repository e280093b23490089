"""Adaptive TopFormer (issue 9): cheap path == TopFormer-tiny, always-refine == the full model, tile
gather/scatter, buckets, MACs against count_macs, ONNX Runtime choosing the same tiles as torch, engine, training."""
import numpy as np
import pytest
import torch
import yaml

from seg_perception.classes import SCENE_CLASS_NAMES
from seg_perception.nets import create_model, list_models
from seg_perception.nets.adaptive import AdaptiveTopFormer, select_tiles
from seg_perception.offline.evaluation.flops import count_macs

torch.set_num_threads(1)

SIZE = (192, 256)   # 1/8 map 24x32 -> 3x4 tiles of 8x8 cells


ARCHS = ('adaptive_topformer_tiny', 'adaptive_topformer_cells')   # deep head on 8x8-cell tiles / on single cells


def _model(seed=0, arch='adaptive_topformer_tiny', **kw):
    """Random weights; the early classifier scaled up so cell confidences vary smoothly over the frame."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=6, **kw).eval()
    with torch.no_grad():
        model.decode_head.conv_seg.weight.normal_(0, 5.0)
    return model


def _image(seed=0, size=SIZE, batch=1):
    """Half smooth, half noisy: the early head is sure of some tiles and not of others."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *size, generator=g) * 0.2
    x[..., size[1] // 2:] = torch.randn(batch, 3, size[0], size[1] - size[1] // 2, generator=g) * 2.0
    return x


def _cell_confidences(model, x):
    with torch.no_grad():
        early, _ = model.trunk(x)
    return early.softmax(1).amax(1).flatten()


def _partial_threshold(model, x, margin=1e-4):
    """A threshold that refines some tiles but not all, not within ``margin`` of any cell's confidence."""
    conf = _cell_confidences(model, x)
    for q in np.linspace(0.005, 0.95, 64):
        t = float(torch.quantile(conf, float(q)))
        t = t + margin * 3
        if (conf - t).abs().min() <= margin:
            continue
        with torch.no_grad():
            _, fraction, _ = model.forward_with_stats(x, t)
        if 0 < float(fraction) < 1:
            return t
    pytest.fail('no threshold refines part of the frame')


@pytest.fixture(scope='module', params=ARCHS)
def model(request):
    return _model(arch=request.param)


@pytest.mark.parametrize('arch', ARCHS)
def test_registered_and_trunk_is_topformer_tiny(arch):
    assert {'adaptive_topformer_tiny', 'adaptive_topformer_small', 'adaptive_topformer_cells'} <= set(list_models())
    m = create_model(arch, num_classes=6)
    tiny_keys = set(create_model('topformer_tiny', num_classes=6).state_dict())
    assert tiny_keys == {k for k in m.state_dict() if not k.startswith('deep.')}


def test_never_refine_equals_topformer_tiny_exactly(model):
    tiny = create_model('topformer_tiny', num_classes=6).eval()
    tiny.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('deep.')})
    x = _image(1)
    with torch.no_grad():
        logits, fraction, macs = model.forward_with_stats(x, 0.0)
        assert torch.equal(logits, tiny(x))
    assert float(fraction) == 0.0
    # one masked window still runs (never an empty gather)
    assert float(macs) == pytest.approx(model.cheap_macs(*SIZE) + model.window_macs, rel=1e-7)


@pytest.mark.parametrize('threshold', [1.0, 1.5])
def test_always_refine_equals_full_model_exactly(model, threshold):
    x = _image(2)
    with torch.no_grad():
        full = model(x)
        logits, fraction, _ = model.forward_with_stats(x, threshold)
    assert torch.equal(logits, full)
    assert float(fraction) == 1.0


def test_partial_refinement_takes_full_model_on_refined_tiles_only(model):
    x = _image(3)
    t = _partial_threshold(model, x)
    with torch.no_grad():
        early, features = model.trunk(x)
        full = model.full(early, features)
        logits, selected, _ = model.refine(early, features, t)
    tile = model.tile
    refined = selected[0].reshape(SIZE[0] // 8 // tile, SIZE[1] // 8 // tile)
    mask = refined.repeat_interleave(tile, 0).repeat_interleave(tile, 1)
    assert 0 < refined.sum() < refined.numel()
    if model.cells:   # the MLP's matrix products over fewer rows may round differently
        assert torch.allclose(logits[0][:, mask], full[0][:, mask], rtol=0, atol=1e-5)
    else:
        assert torch.equal(logits[0][:, mask], full[0][:, mask])
    assert torch.equal(logits[0][:, ~mask], early[0][:, ~mask])
    # the rule: a tile is refined when more than min_uncertain of its cells are below the threshold
    conf = early.softmax(1).amax(1)[0]
    counts = (conf < t).float().reshape(refined.shape[0], tile, refined.shape[1], tile).sum((1, 3))
    assert torch.equal(refined, counts > model.min_uncertain * tile * tile)


def test_buckets_change_cost_not_output():
    plain, bucketed = _model(0), _model(0, tile_buckets=(0.25, 0.5, 1.0))
    x = _image(4)
    for t in (0.0, _partial_threshold(plain, x), 1.0):
        with torch.no_grad():
            a, fa, ma = plain.forward_with_stats(x, t)
            b, fb, mb = bucketed.forward_with_stats(x, t)
        assert torch.equal(a, b) and torch.equal(fa, fb)
        assert float(mb) >= float(ma)
    ids, valid = select_tiles(torch.zeros(1, 12, dtype=torch.bool), (0.25, 0.5, 1.0))
    assert ids.shape == (1, 3) and not valid.any()          # no tile: one bucket of masked slots
    ids, valid = select_tiles(torch.tensor([[True] * 4 + [False] * 8]), (0.25, 0.5, 1.0))
    assert ids.shape == (1, 6) and valid.sum() == 4 and ids[0, :4].tolist() == [0, 1, 2, 3]


def test_batch_equals_images_one_by_one(model):
    x = torch.cat([_image(5), _image(6) * 0.1])
    t = _partial_threshold(model, x[:1])
    with torch.no_grad():
        batch = model(x, t)
        single = torch.cat([model(x[i:i + 1], t) for i in range(2)])
    assert torch.allclose(batch, single, atol=1e-5)


class _OnImage(torch.nn.Module):
    """count_macs feeds zeros: this runs the model on ``zeros + x`` so it counts the run on ``x``."""

    def __init__(self, model, x):
        super().__init__()
        self.model = model
        self.register_buffer('x', x)

    def forward(self, zeros, **kwargs):
        return self.model(zeros + self.x, **kwargs)


@pytest.mark.parametrize('size', [SIZE, (160, 224)])
def test_reported_macs_equal_counted_macs(model, size):
    x = _image(7, size)
    for t in (0.0, _partial_threshold(model, x), 1.0, None):
        with torch.no_grad():
            _, fraction, macs = model.forward_with_stats(x, t)
        knob = {} if t is None else {'refine_threshold': t}
        counted, _ = count_macs(_OnImage(model, x).eval(), (1, 3, *size), **knob)
        assert float(macs) == pytest.approx(counted, rel=1e-7), (t, float(fraction))
    assert model.trunk_macs(*size) == count_macs(create_model('topformer_tiny', num_classes=6), (1, 3, *size))[0]


@pytest.fixture(scope='module')
def exported(model, tmp_path_factory):
    from seg_perception.offline.deploy.export import build_metadata, export_model

    path = tmp_path_factory.mktemp('adaptive') / 'adaptive.onnx'
    arch = 'adaptive_topformer_cells' if model.cells else 'adaptive_topformer_tiny'
    report = export_model(model, path, build_metadata(6, SIZE, arch=arch), SIZE, check=False)
    return path, report


def test_export_inputs_outputs_and_metadata(model, exported):
    import onnx

    from seg_perception.runtime import metadata as md

    path, report = exported
    assert report['inputs'] == ['images', 'refine_threshold']
    assert report['outputs'] == ['labels', 'confidence', 'refined_fraction', 'macs']
    meta = md.decode({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    assert meta['refine_threshold'] == pytest.approx(model.refine_conf)
    assert meta['cheap_macs'] == model.cheap_macs(*SIZE)
    assert (meta['cheap_macs'] > model.trunk_macs(*SIZE)) == model.cells   # the cell head's dense part
    assert meta['static_macs'] == count_macs(model, (1, 3, *SIZE))[0]


def test_onnx_runtime_chooses_the_same_tiles_as_torch(model, exported):
    from seg_perception.offline.deploy.export import check_parity

    path, _ = exported
    x = _image(0)      # check_parity's inputs are random; choose thresholds on an image of ours too
    thresholds = (0.0, _partial_threshold(model, x), 1.0)
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for t in thresholds:
        labels, conf, fraction, macs = session.run(None, {'images': x.numpy(), 'refine_threshold':
                                                          np.asarray(t, np.float32)})
        with torch.no_grad():
            logits, ref_fraction, ref_macs = model.forward_with_stats(x, t)
        ref_labels = torch.nn.functional.interpolate(logits, size=SIZE, mode='bilinear').argmax(1)
        assert fraction[0] == pytest.approx(float(ref_fraction), abs=0) and macs == pytest.approx(float(ref_macs))
        assert (labels == ref_labels.numpy()).mean() > 0.999
    rows = check_parity(model, path, [SIZE, (224, 320)], exit_thresholds=thresholds)
    assert all(r['ok'] for r in rows)


def test_tile_buckets_tool_changes_cost_not_output(exported, tmp_path, capsys):
    """``python -m seg_perception.offline.deploy.tile_buckets``: new buckets on an exported file, outputs equal at
    every knob, fewer MACs where the padding shrinks; a file without buckets or bad fractions: one line, exit 2."""
    import onnxruntime as ort

    from seg_perception.offline.deploy import tile_buckets
    from seg_perception.offline.deploy.export import build_metadata, export_model

    plain, _ = exported
    coarse, fine = tmp_path / 'coarse.onnx', tmp_path / 'fine.onnx'
    model = _model(0, tile_buckets=(0.5, 1.0))
    export_model(model, coarse, build_metadata(6, SIZE, arch='adaptive_topformer_tiny'), SIZE, check=False)
    assert tile_buckets.main([str(coarse), '-o', str(fine), '--tile-buckets', '0.1', '0.25', '0.5', '1']) == 0
    assert '[0.5, 1.0] -> [0.1, 0.25, 0.5, 1.0]' in capsys.readouterr().out
    x = _image(0)
    t = _partial_threshold(model, x)
    with torch.no_grad():
        _, fraction, _ = model.forward_with_stats(x, t)
    assert float(fraction) <= 0.25              # 3 of 12 tiles or fewer: padded to 6 before, to 2 or 3 now
    runs = []
    for path in (coarse, fine):
        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        runs.append(session.run(None, {'images': x.numpy(), 'refine_threshold': np.asarray(t, np.float32)}))
    (labels_a, conf_a, frac_a, macs_a), (labels_b, conf_b, frac_b, macs_b) = runs
    assert np.array_equal(labels_a, labels_b) and np.array_equal(conf_a, conf_b) and frac_a == frac_b
    assert macs_b < macs_a
    assert tile_buckets.main([str(plain), '-o', str(tmp_path / 'x.onnx'), '--tile-buckets', '1']) == 2
    assert '0 tile-bucket constants found' in capsys.readouterr().out
    assert tile_buckets.main([str(coarse), '-o', str(tmp_path / 'x.onnx'), '--tile-buckets', '0.5', '2']) == 2
    assert 'must be fractions in (0, 1] including 1.0' in capsys.readouterr().out
    assert not (tmp_path / 'x.onnx').exists()


def test_engine_runs_the_knob_and_reports_stats(exported):
    from seg_perception.runtime.engine import SegmentationEngine

    path, _ = exported
    engine = SegmentationEngine(path, intra_op_threads=1)
    assert engine.has_refine_threshold and not engine.has_exit_threshold
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    never, always = engine.infer(rgb, refine_threshold=0.0), engine.infer(rgb, refine_threshold=1.0)
    default = engine.infer(rgb)
    assert never.refined_fraction == 0.0 and always.refined_fraction == 1.0
    assert 0.0 <= default.refined_fraction <= 1.0
    assert never.macs < default.macs + 1 and default.macs <= always.macs
    assert always.macs == pytest.approx(engine.static_macs, rel=1e-6)
    assert never.labels.shape == rgb.shape[:2]


@pytest.mark.parametrize('arch', ARCHS)
def test_training_output_loss_and_gradients(arch):
    m = _model(8, arch).train()
    x, target = torch.randn(2, 3, 64, 96), torch.randint(0, 6, (2, 64, 96))
    target[:, :4] = 255
    out = m(x)
    assert set(out) == {'logits', 'aux'} and out['logits'].shape == (2, 6, 8, 12) and len(out['aux']) == 1
    loss, parts = m.training_loss(out, target)
    assert torch.isfinite(loss) and {'ce', 'aux0'} <= set(parts)
    loss.backward()
    classifier = m.deep.cls if m.cells else m.deep.conv_seg
    assert classifier.weight.grad.abs().sum() > 0 and m.decode_head.conv_seg.weight.grad.abs().sum() > 0
    assert m.backbone.tpm.stem[0].c.weight.grad.abs().sum() > 0


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match='tile_buckets'):
        AdaptiveTopFormer(num_classes=6, tile_buckets=(0.25, 0.5))
    with pytest.raises(ValueError, match="deep_kind 'cells' must be .* tile 1, not 8"):
        AdaptiveTopFormer(num_classes=6, deep_kind='cells')


def test_cell_neighbourhoods_gathered_as_unfolded():
    """The cells' neighbourhoods the refine path gathers are the ones the full model unfolds (zeros outside)."""
    from seg_perception.nets.adaptive import gather_neighbourhoods, unfold_neighbourhoods

    x = torch.randn(2, 3, 5, 7)
    every = unfold_neighbourhoods(x, 2).reshape(2, 35, 25, 3)
    ids = torch.tensor([[0, 34, 17], [6, 28, 3]])
    gathered = gather_neighbourhoods(x, ids, 2).reshape(2, 3, 25, 3)
    assert torch.equal(gathered, torch.stack([every[b, ids[b]] for b in range(2)]))
    corner = gathered[0, 0].reshape(5, 5, 3)                  # cell (0, 0): two rows and columns of zeros
    assert torch.equal(corner[2:, 2:], x[0, :, :3, :3].permute(1, 2, 0)) and not corner[:2].any()


def _labelled_folder(root, count=4, size=SIZE, names=None):
    """``count`` frames with random masks and a clutter level each; ``names``: the folder's own classes (a
    classes.yaml), else the scene classes."""
    import cv2

    for sub in ('images', 'masks', 'meta'):
        (root / sub).mkdir(parents=True)
    if names:
        (root / 'classes.yaml').write_text(yaml.safe_dump({'names': list(names)}))
    rng = np.random.default_rng(0)
    for i in range(count):
        image = (_image(i, size)[0].permute(1, 2, 0).numpy() * 40 + 120).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'images' / f'{i:03d}.png'), image)
        cv2.imwrite(str(root / 'masks' / f'{i:03d}.png'), rng.integers(0, len(names or SCENE_CLASS_NAMES), size,
                                                                         dtype=np.uint8))
        (root / 'meta' / f'{i:03d}.json').write_text(f'{{"clutter": {i / count}}}')
    return root


def test_bench_and_evaluate_report_cost_per_complexity_group(model, exported, tmp_path, capsys):
    import json

    from seg_perception.offline.cli import main
    from seg_perception.offline.deploy.export import build_metadata, export_model
    from seg_perception.offline.evaluation.evaluate import evaluate

    path, _ = exported
    tiny = create_model('topformer_tiny', num_classes=6).eval()
    tiny.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('deep.')})
    export_model(tiny, tmp_path / 'tiny.onnx', build_metadata(6, SIZE, arch='topformer_tiny'), SIZE, check=False)
    data = _labelled_folder(tmp_path / 'data')
    assert main(['bench', 'adaptive', '--model', str(path), '--static', str(tmp_path / 'tiny.onnx'), '--data',
                 str(data), '--thresholds', '0', '1', '--warmup', '0', '--plot', str(tmp_path / 'curve.png'),
                 '--json', str(tmp_path / 'bench.json'), '--clock', 'cpu', '--markdown', str(tmp_path / 'b.md')]) == 0
    out = capsys.readouterr().out
    assert '| easy half | 2 |' in out and '| cluttered half | 2 |' in out and 'halves split by clutter' in out
    assert '(cpu clock;' in out
    written = (tmp_path / 'b.md').read_text()
    assert '| easy half | 2 |' in written and 'Command: `seg-perception bench adaptive --model' in written
    assert main(['bench', 'adaptive', '--model', str(path), '--static', str(tmp_path / 'tiny.onnx'),
                 f'{tmp_path / "tiny.onnx"}@64x96', '--data', str(data), '--warmup', '0', '--input-size', '128', '192',
                 '--json', str(tmp_path / 'b2.json')]) == 0
    other = json.loads((tmp_path / 'b2.json').read_text())['groups']['all']
    assert other['tiny']['gmacs'] * 1e9 == pytest.approx(count_macs(tiny, (1, 3, 128, 192))[0])   # at the size run
    # a static model at its own network input: its own row, counted at that size
    assert other['tiny@64x96']['gmacs'] * 1e9 == pytest.approx(count_macs(tiny, (1, 3, 64, 96))[0])
    capsys.readouterr()
    assert main(['bench', 'adaptive', '--model', str(path), '--static', f'{tmp_path / "tiny.onnx"}@100x96',
                 '--data', str(data)]) == 2
    assert "size '100x96': H and W must be multiples of 32" in capsys.readouterr().err
    assert other['tiny']['engine_ms_mean'] > 0
    assert main(['bench', 'adaptive', '--model', str(path), '--data', str(data), '--threads', '2',
                 '--clock', 'cpu']) == 2                 # the calling thread's CPU time is not a 2-thread latency
    assert 'use it with --threads 1, not 2' in capsys.readouterr().err
    report = json.loads((tmp_path / 'bench.json').read_text())
    groups = report['groups']['all']
    never, always, static = groups['adaptive refine_threshold=0'], groups['adaptive refine_threshold=1'], \
        groups['tiny']
    assert never['miou'] == static['miou']           # the cheap path is TopFormer-tiny: same labels
    assert never['refined_tiles'] == 0.0 and always['refined_tiles'] == 1.0 and always['refined_frames'] == 1.0
    assert never['gmacs'] < always['gmacs'] and (tmp_path / 'curve.png').stat().st_size > 0
    metrics = evaluate(path, data, split='', refine_threshold=1.0, progress=False, threads=1)
    assert metrics['refined_fraction'] == 1.0 and metrics['refined_frames_fraction'] == 1.0
    assert set(metrics['groups']) == {'easy half', 'cluttered half'}
    assert metrics['groups']['easy half']['frames'] == 2
    assert 'cluttered half (2 frames, by clutter)' in metrics['table']


def test_bench_adaptive_scores_every_model_in_the_datasets_classes_with_merge(exported, tmp_path, capsys):
    """--merge: every model's labels are scored in the dataset's classes (here a 5-class dataset without robot),
    each through the entries it has, as `evaluate --merge` scores them: the 6-class adaptive model beside a
    5-class static one. Without --merge such a static model is refused; a merge nobody can take is a user error."""
    import json

    from seg_perception.offline.cli import main
    from seg_perception.offline.deploy.export import build_metadata, export_model
    from seg_perception.offline.evaluation.evaluate import evaluate

    path, _ = exported
    names = [n for n in SCENE_CLASS_NAMES if n != 'robot']
    data = _labelled_folder(tmp_path / 'data', names=names)
    torch.manual_seed(1)
    static = tmp_path / 'five.onnx'
    export_model(create_model('topformer_tiny', num_classes=5).eval(), static,
                 build_metadata(5, SIZE, names=names, arch='topformer_tiny'), SIZE, check=False)
    assert main(['bench', 'adaptive', '--model', str(path), '--static', str(static), '--data', str(data),
                 '--thresholds', '0', '1', '--warmup', '0', '--merge', 'robot:obstacle',
                 '--json', str(tmp_path / 'b.json')]) == 0
    report = json.loads((tmp_path / 'b.json').read_text())
    assert report['merge'] == {'robot': 'obstacle'}
    for knob in (0.0, 1.0):
        expected = evaluate(path, data, split='', refine_threshold=knob, progress=False, threads=1,
                            merge={'robot': 'obstacle'})['mIoU']
        assert report['groups']['all'][f'adaptive refine_threshold={knob:g}']['miou'] == pytest.approx(expected)
    expected = evaluate(static, data, split='', progress=False, threads=1)['mIoU']
    assert report['groups']['all']['five']['miou'] == pytest.approx(expected)
    capsys.readouterr()
    assert main(['bench', 'adaptive', '--model', str(path), '--static', str(static), '--data', str(data)]) == 2
    assert '(--merge scores models with other classes' in capsys.readouterr().err
    assert main(['bench', 'adaptive', '--model', str(path), '--data', str(data), '--merge', 'robot:sky']) == 2
    assert "--merge robot:sky: the model has no class 'robot' or the dataset no class 'sky'" in \
        capsys.readouterr().err
    assert main(['bench', 'adaptive', '--model', str(path), '--data', str(data), '--merge', 'robot:obstacle',
                 '--merge', 'robt:obstacle']) == 2          # a misspelt class is not dropped silently
    assert "--merge robt:obstacle: no model predicts a class 'robt'" in capsys.readouterr().err


def test_refine_rule_on_the_shipped_tiny_model():
    """The rule on a trained early head (the shipped TopFormer-tiny, the adaptive trunk's arithmetic) and the
    sample bag: 0 refines nothing, 1 everything (every error covered), more tiles as the threshold rises."""
    import os

    from seg_perception.offline.evaluation.bench_adaptive import bench_refine_rule

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = bench_refine_rule(os.path.join(repo, 'models', 'topformer_tiny_scenes.onnx'),
                             os.path.join(repo, 'samples', 'scenes_sample'), [0.0, 0.7, 0.9, 1.0],
                             image_topic='/camera/image_raw', gt_topic='/ground_truth/labels', limit=4)
    tiles = [r['tiles'] for r in rows]
    assert tiles[0] == 0.0 and tiles[-1] == 1.0 and tiles == sorted(tiles) and 0 < tiles[2] < 1
    assert rows[0]['errors_covered'] == 0.0 and rows[-1]['errors_covered'] == 1.0
    assert rows[2]['errors_covered'] > rows[2]['tiles']     # the uncertain tiles hold more than their share
