"""``seg-perception evaluate`` on a tiny generated dataset: an exported ONNX model through the runtime engine and
a training checkpoint in torch, writing metrics.json, report.md and confusion.png."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_config, write_scenes

from seg_perception.errors import UserError
from seg_perception.offline import cli
from seg_perception.offline.evaluation.evaluate import evaluate, open_predictor
from seg_perception.offline.predict import load_checkpoint
from seg_perception.offline.training import train as tr

SIZE = (64, 96)


def _dataset_folder(root: Path, frames: list) -> Path:
    """Rendered ``frames`` stored as ``render --out root`` stores them (no split), with their ``meta/`` files."""
    from seg_perception.offline.data.render import DATASET_FOLDERS, save_frame, write_classes_yaml

    for sub in DATASET_FOLDERS:
        (root / sub).mkdir(parents=True)
    write_classes_yaml(root / 'classes.yaml')
    for f in frames:
        save_frame(root, f)
    return root


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(dataset folder, checkpoint, exported .onnx) from a few training steps on 3 images."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('eval')
    data = write_scenes(root / 'data', n=3, size=SIZE)
    tr.train(tiny_config(data, root / 'run', iters=15, lr=1e-2, warmup_iters=0, val_data='none',
                         scale_range=[1.0, 1.0], log_interval=5))
    checkpoint = root / 'run' / 'last.pt'
    from seg_perception.offline.deploy.export import build_metadata, export_model
    model, ckpt = load_checkpoint(checkpoint)
    meta = build_metadata(ckpt['num_classes'], ckpt['input_size'], names=ckpt['classes'], palette=ckpt['palette'],
                          mean=ckpt['mean'], std=ckpt['std'], resize_mode='resize', arch=ckpt['arch'])
    onnx_path = root / 'model.onnx'
    export_model(model, onnx_path, meta, ckpt['input_size'])
    return data, checkpoint, onnx_path


def test_onnx_through_engine_writes_reports(trained, tmp_path, capsys):
    data, _, onnx_path = trained
    out = tmp_path / 'eval'
    assert cli.main(['evaluate', '--model', str(onnx_path), '--data', str(data), '--out', str(out),
                     '--threads', '1', '--warmup', '1']) == 0
    printed = capsys.readouterr().out
    assert '| floor |' in printed and '| mIoU |' in printed and 'p50 / p90 / p99' in printed
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['images'] == 3 and 0.0 <= metrics['mIoU'] <= 1.0 and 0.0 <= metrics['aAcc'] <= 1.0
    assert set(metrics['IoU']) == {'floor', 'wall', 'obstacle', 'person', 'robot', 'background'}
    lat = metrics['latency_ms']
    assert 0 < lat['p50'] <= lat['p90'] <= lat['p99']
    assert metrics['runner'].startswith('onnx') and metrics['kept_fraction'] is None
    assert np.asarray(metrics['confusion_matrix']).sum() == 3 * SIZE[0] * SIZE[1]
    assert (out / 'confusion.png').read_bytes()[:4] == b'\x89PNG'
    assert '| mIoU |' in (out / 'report.md').read_text()


def test_checkpoint_in_torch_matches_onnx(trained):
    data, checkpoint, onnx_path = trained
    from_onnx = evaluate(onnx_path, data, threads=1, warmup=0, progress=False)
    from_torch = evaluate(checkpoint, data, threads=1, warmup=0, progress=False)
    assert from_torch['runner'].startswith('torch topformer_tiny')
    assert from_torch['mIoU'] == pytest.approx(from_onnx['mIoU'], abs=0.01)
    assert from_torch['aAcc'] == pytest.approx(from_onnx['aAcc'], abs=0.01)


def test_limit_and_class_mismatch(trained, tmp_path):
    data, checkpoint, _ = trained
    assert evaluate(checkpoint, data, limit=1, warmup=0, progress=False)['images'] == 1
    other = write_scenes(tmp_path / 'other', n=1, size=SIZE)
    (other / 'classes.yaml').write_text('names: [a, b]\n')
    with pytest.raises(ValueError, match='classes'):
        evaluate(checkpoint, other, warmup=0, progress=False)


def test_rosbag_raw_and_compressed_topics(trained, tmp_path):
    """A labelled recording evaluates in one command; raw frames give the same numbers as the same frames read
    from files, jpeg frames run through the same path."""
    from seg_perception.offline.data.bags import write_bag
    from seg_perception.offline.data.datasets import open_dataset
    from seg_perception.offline.data.render import render_frames

    _, _, onnx_path = trained
    frames = list(render_frames(4, seed=5, width=SIZE[1], height=SIZE[0], seq_len=2))
    bag = tmp_path / 'bag'
    write_bag(str(bag), frames, jpeg=True)
    folder = _dataset_folder(tmp_path / 'files', frames)
    assert len(open_dataset(str(folder))) == 4
    from_files = evaluate(onnx_path, folder, warmup=0, progress=False)
    raw = evaluate(onnx_path, bag, image_topic='/camera/image_raw', gt_topic='/ground_truth/labels', warmup=0,
                   progress=False)
    jpeg = evaluate(onnx_path, bag, image_topic='/camera/image_raw/compressed', gt_topic='/ground_truth/labels',
                    warmup=0, progress=False)
    assert raw['images'] == jpeg['images'] == 4
    assert raw['mIoU'] == pytest.approx(from_files['mIoU'], abs=1e-9)
    assert abs(jpeg['aAcc'] - raw['aAcc']) < 0.1


def test_merge_table_scores_a_class_the_dataset_lacks_as_one_it_has():
    from seg_perception.offline.evaluation.evaluate import merge_table

    model = ['floor', 'wall', 'covered_floor']
    table = merge_table(model, ['floor', 'wall'], {'covered_floor': 'floor'})
    assert table.tolist() == [0, 1, 0]
    with pytest.raises(UserError, match='--merge covered_floor:CLASS'):
        merge_table(model, ['floor', 'wall'], {})
    with pytest.raises(UserError, match="no class 'grass'"):
        merge_table(model, ['floor', 'wall'], {'covered_floor': 'grass'})
    with pytest.raises(UserError, match='the model predicts 3 classes'):
        merge_table(model, ['wall', 'floor'], {'covered_floor': 'floor'})     # another order


def test_input_size_reaches_the_engine(trained, tmp_path, capsys):
    """``--input-size`` runs an .onnx file at that size as it does a checkpoint; bad or inapplicable values are
    refused in one line."""
    data, checkpoint, onnx_path = trained
    size = [96, 128]
    assert open_predictor(onnx_path, threads=1, input_size=size).engine.net_hw == tuple(size)
    from_onnx = evaluate(onnx_path, data, threads=1, warmup=0, progress=False, input_size=size)
    from_torch = evaluate(checkpoint, data, threads=1, warmup=0, progress=False, input_size=size)
    assert from_torch['mIoU'] == pytest.approx(from_onnx['mIoU'], abs=0.01)
    assert cli.main(['evaluate', '--model', str(onnx_path), '--data', str(data), '--input-size', '100', '100']) == 2
    assert 'multiples of 32' in capsys.readouterr().err
    with pytest.raises(UserError, match='two positive sizes'):   # the torch path: one side 0
        evaluate(checkpoint, data, threads=1, warmup=0, progress=False, input_size=[0, 64])
    from seg_perception.offline.deploy.export import build_metadata, export_model
    model, ckpt = load_checkpoint(checkpoint)
    fixed = tmp_path / 'fixed.onnx'
    export_model(model, fixed, build_metadata(ckpt['num_classes'], ckpt['input_size'], names=ckpt['classes']),
                 ckpt['input_size'], dynamic=False)
    assert cli.main(['evaluate', '--model', str(fixed), '--data', str(data), '--input-size', '96', '128']) == 2
    err = capsys.readouterr().err
    assert '--input-size 96 128: fixed.onnx has a fixed input size (64x96)' in err and 'Traceback' not in err


def test_baseline_on_the_same_frames(trained, capsys):
    """--baseline: the model against itself differs by 0 on every resample; against its checkpoint in torch the
    difference is the two mIoUs' and lies in its paired interval; a missing baseline file or one with other
    classes exits 2 naming it."""
    data, checkpoint, onnx_path = trained
    itself = evaluate(onnx_path, data, threads=1, warmup=0, progress=False, baseline=onnx_path)
    assert itself['baseline']['difference'] == 0 and itself['baseline']['difference_interval95'] == (0.0, 0.0)
    assert itself['mIoU_interval95'][0] <= itself['mIoU'] <= itself['mIoU_interval95'][1]
    other = evaluate(onnx_path, data, threads=1, warmup=0, progress=False, baseline=checkpoint)
    alone = evaluate(checkpoint, data, threads=1, warmup=0, progress=False)
    assert other['baseline']['mIoU'] == pytest.approx(alone['mIoU'])
    lo, hi = other['baseline']['difference_interval95']
    assert lo - 1e-9 <= other['baseline']['difference'] <= hi + 1e-9
    assert 'mIoU - baseline' in other['table']
    assert cli.main(['evaluate', '--model', str(onnx_path), '--data', str(data), '--baseline', 'missing.onnx']) == 2
    assert 'missing.onnx' in capsys.readouterr().err
    camvid = Path(__file__).resolve().parents[1] / 'models' / 'topformer_tiny_camvid.onnx'   # 11 classes, not 6
    assert cli.main(['evaluate', '--model', str(onnx_path), '--data', str(data), '--baseline', str(camvid)]) == 2
    assert '--baseline' in capsys.readouterr().err


def test_by_camera_thirds_by_field_of_view_and_height(trained, tmp_path, capsys):
    """``--by-camera``: each third of the frames, by vertical field of view and by camera height, scores as the
    same frames evaluated on their own; a dataset without camera metadata is refused before the run."""
    from seg_perception.offline.data.render import render_frames

    _, _, onnx_path = trained
    frames = list(render_frames(6, seed=7, width=SIZE[1], height=SIZE[0], seq_len=1))
    report = evaluate(onnx_path, _dataset_folder(tmp_path / 'all', frames), warmup=0, progress=False, by_camera=True)
    groups = report['camera_groups']
    reads = {'vertical field of view (deg)': lambda f: f['intrinsics']['fov_y_deg'],
             'camera height (m)': lambda f: f['pose']['position'][2]}
    assert list(groups) == list(reads)
    for key, read in reads.items():
        ordered = sorted(frames, key=read)
        for k, third in enumerate(groups[key]):
            members = ordered[2 * k:2 * k + 2]
            assert third['frames'] == 2 and third['range'] == (read(members[0]), read(members[1]))
            alone = evaluate(onnx_path, _dataset_folder(tmp_path / f'{key[:6]}{k}', members), warmup=0, progress=False)
            assert third['mIoU'] == pytest.approx(alone['mIoU'], abs=1e-12)
    assert cli.main(['evaluate', '--model', str(onnx_path), '--data', str(tmp_path / 'all'), '--by-camera',
                     '--warmup', '0']) == 0
    assert 'vertical field of view (deg): lowest third' in capsys.readouterr().out

    data, _, _ = trained   # 3 frames without meta/
    with pytest.raises(UserError, match='without camera metadata'):
        evaluate(onnx_path, data, warmup=0, progress=False, by_camera=True)
    assert cli.main(['evaluate', '--model', str(onnx_path), '--data', str(data), '--by-camera', '--limit', '2']) == 2
    assert 'at least 3 frames' in capsys.readouterr().err
