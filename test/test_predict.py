"""A checkpoint and its export agree: torch prediction (``offline.predict``) uses the engine's geometry, and the
preprocessing a model was trained with (input size, mean/std, resize mode) travels from the training checkpoint
into the exported file unless a flag overrides it."""
import numpy as np
import pytest
import torch
from test_train import tiny_config, write_scenes

from seg_perception.offline import cli
from seg_perception.offline.data.datasets import open_dataset
from seg_perception.offline.evaluation.evaluate import evaluate
from seg_perception.offline.graph.logits_head import convert_file
from seg_perception.offline.graph.onnx_graph import read_metadata
from seg_perception.offline.predict import checkpoint_preprocessing, load_checkpoint, predict
from seg_perception.offline.training import train as tr
from seg_perception.runtime.engine import SegmentationEngine

TRAIN_SIZE = (64, 96)
EVAL_SIZE = (90, 120)     # neither the network size nor a multiple of the stride, another aspect ratio


@pytest.fixture(scope='module')
def letterboxed(tmp_path_factory):
    """(eval dataset, checkpoint, {output kind: export made without --resize-mode}) of a model trained
    letterboxed; the 'logits' file is the 'labels' one with its tail cut off (graph.logits_head)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('predict')
    data = write_scenes(root / 'train', n=3, size=TRAIN_SIZE)
    cfg = tiny_config(data, root / 'run', iters=15, lr=1e-2, warmup_iters=0, val_data='none',
                      scale_range=[1.0, 1.0], log_interval=5, resize_mode='letterbox', mean=[100.0, 110.0, 120.0])
    tr.train(cfg)
    checkpoint = root / 'run' / 'last.pt'
    onnx_path = root / 'model.onnx'
    assert cli.main(['export', '--checkpoint', str(checkpoint), '-o', str(onnx_path)]) == 0
    convert_file(str(onnx_path), str(root / 'model_logits.onnx'))
    exports = {'labels': onnx_path, 'logits': root / 'model_logits.onnx'}
    return write_scenes(root / 'eval', n=3, size=EVAL_SIZE, seed=7), checkpoint, exports


def test_export_takes_preprocessing_from_checkpoint(letterboxed, tmp_path):
    _, checkpoint, exports = letterboxed
    onnx_path = exports['labels']
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt['resize_mode'] == 'letterbox' and ckpt['input_size'] == list(TRAIN_SIZE)
    meta = read_metadata(onnx_path)
    assert meta['resize_mode'] == 'letterbox' and meta['input_size'] == list(TRAIN_SIZE)
    assert meta['mean'] == [100.0, 110.0, 120.0] and meta['std'] == ckpt['std']
    # explicit flags override the checkpoint
    out = tmp_path / 'flags.onnx'
    assert cli.main(['export', '--checkpoint', str(checkpoint), '--resize-mode', 'resize', '--input-size', '96',
                     '128', '--mean', '1', '2', '3', '-o', str(out)]) == 0
    meta = read_metadata(out)
    assert meta['resize_mode'] == 'resize' and meta['input_size'] == [96, 128] and meta['mean'] == [1.0, 2.0, 3.0]


def test_checkpoints_without_resize_mode_were_stretched():
    """Our trainer always stretched before checkpoints recorded it; weights from elsewhere get letterbox."""
    old = {'arch': 'topformer_tiny', 'input_size': [64, 96]}
    assert checkpoint_preprocessing(old)['resize_mode'] == 'resize'
    assert checkpoint_preprocessing({})['resize_mode'] == 'letterbox'
    assert checkpoint_preprocessing({**old, 'resize_mode': 'letterbox'})['resize_mode'] == 'letterbox'
    with pytest.raises(ValueError, match='resize_mode'):
        checkpoint_preprocessing({'resize_mode': 'crop'})


@pytest.mark.parametrize('kind', ['labels', 'logits'])
@pytest.mark.parametrize('mode', ['letterbox', 'resize', 'whole image'])
def test_torch_labels_equal_engine_labels(letterboxed, mode, kind):
    data, checkpoint, exports = letterboxed
    onnx_path = exports[kind]
    model, ckpt = load_checkpoint(checkpoint)
    prep = checkpoint_preprocessing(ckpt)
    input_size = None if mode == 'whole image' else prep['input_size']
    resize_mode = 'resize' if mode == 'resize' else prep['resize_mode']
    engine = SegmentationEngine(onnx_path, intra_op_threads=1, input_size=(0, 0) if input_size is None else None)
    engine.meta['resize_mode'] = resize_mode   # the engine reads the mode from its metadata
    dataset = open_dataset(str(data), split='val')
    agreement, mismatch_mode = [], []
    for i in range(len(dataset)):
        image, _ = dataset[i]
        ours = predict(model, image, input_size, prep['mean'], prep['std'], resize_mode, output_kind=kind)
        theirs = engine.infer(image).labels
        assert ours.shape == theirs.shape == EVAL_SIZE and ours.dtype == theirs.dtype
        agreement.append(float((ours == theirs).mean()))
        other = 'resize' if resize_mode == 'letterbox' else 'letterbox'
        mismatch_mode.append(float((predict(model, image, prep['input_size'], prep['mean'], prep['std'], other,
                                            output_kind=kind) == theirs).mean()))
    assert min(agreement) >= 0.999, agreement
    if input_size is not None:   # the other geometry is measurably worse: the test can fail
        assert np.mean(mismatch_mode) < np.mean(agreement) - 0.005, (agreement, mismatch_mode)


def test_checkpoint_and_export_score_the_same(letterboxed):
    data, checkpoint, exports = letterboxed
    from_onnx = evaluate(exports['labels'], data, threads=1, warmup=0, progress=False)
    from_torch = evaluate(checkpoint, data, threads=1, warmup=0, progress=False)
    assert 'letterbox' in from_torch['runner']
    assert from_torch['mIoU'] == pytest.approx(from_onnx['mIoU'], abs=1e-3)
    assert from_torch['aAcc'] == pytest.approx(from_onnx['aAcc'], abs=1e-3)


def test_white_balance_travels_from_training_to_the_engine(tmp_path):
    """A model trained with gray-world white balance records it in its checkpoint and in its export; the engine
    then balances each frame (its logits change when the key is taken away), as torch prediction does (the same
    labels) on frames with a colour cast. Checkpoints without the key mean no balance."""
    torch.set_num_threads(1)
    data = write_scenes(tmp_path / 'train', n=2, size=TRAIN_SIZE)
    tr.train(tiny_config(data, tmp_path / 'run', iters=4, val_data='none', white_balance='gray_world'))
    checkpoint = tmp_path / 'run' / 'last.pt'
    model, ckpt = load_checkpoint(checkpoint)
    prep = checkpoint_preprocessing(ckpt)
    assert ckpt['white_balance'] == prep['white_balance'] == 'gray_world'
    assert checkpoint_preprocessing({})['white_balance'] == 'none'
    out = tmp_path / 'balanced.onnx'
    assert cli.main(['export', '--checkpoint', str(checkpoint), '--head', 'logits', '-o', str(out)]) == 0
    engine = SegmentationEngine(out, intra_op_threads=1)
    assert engine.meta['white_balance'] == 'gray_world'
    dataset = open_dataset(str(write_scenes(tmp_path / 'eval', n=2, size=EVAL_SIZE, seed=3)), split='val')
    for i in range(len(dataset)):
        image = np.clip(dataset[i][0] * [1.25, 1.0, 0.75], 0, 255).astype(np.uint8)   # a warm cast
        ours = predict(model, image, prep['input_size'], prep['mean'], prep['std'], prep['resize_mode'],
                       output_kind='logits', white_balance='gray_world')
        balanced = engine.infer(image)
        assert (ours == balanced.labels).mean() >= 0.999
        engine.meta['white_balance'] = 'none'
        assert np.abs(engine.infer(image).logits - balanced.logits).max() > 1e-5   # a 4-iteration model's
        engine.meta['white_balance'] = 'gray_world'
