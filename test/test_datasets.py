"""Dataset readers on tiny fake trees of every layout, plus a rendered dataset and a bag."""
import cv2
import numpy as np
import pytest
import yaml

from seg_perception.classes import SCENE_CLASS_NAMES, SCENE_PALETTE
from seg_perception.errors import UserError
from seg_perception.offline.data import datasets
from seg_perception.offline.data.bags import write_bag

H, W = 8, 12


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write_rgb(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _write_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def _check(ds, n, n_classes):
    assert len(ds) == n and len(ds.names) == n
    assert len(ds.classes) == n_classes and len(ds.palette) == n_classes and ds.ignore_index == 255
    image, label = ds[0]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert label.shape == (H, W) and label.dtype == np.uint8
    return image, label


def test_ade20k(tmp_path):
    root = tmp_path / 'ade' / 'ADEChallengeData2016'
    raw = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 151
    for split, n in (('training', 3), ('validation', 2)):
        for k in range(n):
            _write_rgb(root / 'images' / split / f'ADE_{split}_{k:08d}.jpg', _image(k))
            _write_mask(root / 'annotations' / split / f'ADE_{split}_{k:08d}.png', raw)
    ds = datasets.open_dataset(tmp_path / 'ade')
    assert ds.layout == 'ade20k' and len(datasets.ADE20K_CLASSES) == 150
    _, label = _check(ds, 2, 150)
    expected = np.where(raw == 0, 255, raw.astype(int) - 1)
    np.testing.assert_array_equal(label, expected)
    assert len(datasets.open_dataset(tmp_path / 'ade', split='train')) == 3
    assert ds.names[0] == 'ADE_validation_00000000'


def test_cityscapes(tmp_path):
    root = tmp_path / 'cs'
    train_ids = np.full((H, W), 255, np.uint8)
    train_ids[:4] = 0
    train_ids[4:, :6] = 18
    for city, k in (('aachen', 0), ('bremen', 1)):
        stem = f'{city}_000000_00001{k}'
        _write_rgb(root / 'leftImg8bit' / 'val' / city / f'{stem}_leftImg8bit.png', _image(k))
        _write_mask(root / 'gtFine' / 'val' / city / f'{stem}_gtFine_labelTrainIds.png', train_ids)
    label_ids = np.full((H, W), 0, np.uint8)
    label_ids[:4] = 7
    label_ids[4:, :6] = 33
    stem = 'zurich_000000_000002'
    _write_rgb(root / 'leftImg8bit' / 'val' / 'zurich' / f'{stem}_leftImg8bit.png', _image(5))
    _write_mask(root / 'gtFine' / 'val' / 'zurich' / f'{stem}_gtFine_labelIds.png', label_ids)
    ds = datasets.open_dataset(root)
    assert ds.layout == 'cityscapes'
    image, label = _check(ds, 3, 19)
    np.testing.assert_array_equal(image, _image(0))
    np.testing.assert_array_equal(label, train_ids)
    np.testing.assert_array_equal(ds[2][1], train_ids)
    assert ds.names[0] == 'aachen/aachen_000000_000010' and ds.palette[0] == (128, 64, 128)


def test_camvid(tmp_path):
    root = tmp_path / 'CamVid'
    mask = (np.arange(H * W).reshape(H, W) % 12).astype(np.uint8)
    for split, n in (('train', 2), ('val', 3), ('test', 1)):
        for k in range(n):
            _write_rgb(root / split / f'0001TP_{k:06d}.png', _image(k))
            _write_mask(root / f'{split}annot' / f'0001TP_{k:06d}.png', mask)
    ds = datasets.open_dataset(root)
    assert ds.layout == 'camvid'
    image, label = _check(ds, 3, 11)
    np.testing.assert_array_equal(image, _image(0))
    np.testing.assert_array_equal(label, np.where(mask == 11, 255, mask))
    assert len(datasets.open_dataset(root, split='test')) == 1


def test_camvid_sequences_from_a_yaml(tmp_path):
    root = tmp_path / 'CamVid'
    for name in ('0001TP_000001', '0001TP_000002', 'Seq05VD_f00010'):
        _write_rgb(root / 'test' / f'{name}.png', _image(0))
        _write_mask(root / 'testannot' / f'{name}.png', np.ones((H, W), np.uint8))
    spec = tmp_path / 'seq.yaml'
    for sequences, n in ((['0001TP'], 2), (['Seq05VD'], 1), (['0001TP', 'Seq05VD'], 3)):
        spec.write_text(yaml.safe_dump({'layout': 'camvid', 'root': 'CamVid', 'split': 'test',
                                        'sequences': sequences}))
        assert len(datasets.open_dataset(spec)) == n
    spec.write_text(yaml.safe_dump({'layout': 'camvid', 'root': 'CamVid', 'split': 'test', 'sequences': '0001TP'}))
    with pytest.raises(UserError, match='sequences'):
        datasets.open_dataset(spec)


def test_generic_splits_label_map_and_colour_masks(tmp_path):
    root = tmp_path / 'gen'
    (root).mkdir()
    (root / 'classes.yaml').write_text(yaml.safe_dump({
        'names': ['ground', 'thing'], 'palette': [[10, 20, 30], [200, 100, 50]], 'ignore_index': 255,
        'label_map': {0: 0, 7: 1}}))
    mask = np.zeros((H, W), np.uint8)
    mask[2:5] = 7
    mask[0, 0] = 99
    for split, n in (('train', 2), ('val', 1)):
        for k in range(n):
            _write_rgb(root / 'images' / split / f'im{k}.jpg', _image(k))
            _write_mask(root / 'masks' / split / f'im{k}.png', mask)
    ds = datasets.open_dataset(root, split='train')
    assert ds.layout == 'generic' and ds.classes == ['ground', 'thing']
    _, label = _check(ds, 2, 2)
    expected = np.where(mask == 7, 1, 0).astype(np.uint8)
    expected[0, 0] = 255
    np.testing.assert_array_equal(label, expected)

    flat = tmp_path / 'flat'
    (flat).mkdir()
    (flat / 'classes.yaml').write_text(yaml.safe_dump({'names': ['ground', 'thing'],
                                                       'palette': [[10, 20, 30], [200, 100, 50]]}))
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:] = (10, 20, 30)
    colour[:, 6:] = (200, 100, 50)
    colour[0, 0] = (1, 2, 3)
    for k in range(3):
        _write_rgb(flat / 'images' / f'f{k}.png', _image(k))
        _write_rgb(flat / 'masks' / f'f{k}.png', colour)
    (flat / 'val.txt').write_text('f0\nf2\n')
    ds = datasets.open_dataset(flat)
    assert ds.names == ['f0', 'f2']
    _, label = _check(ds, 2, 2)
    assert label[0, 0] == 255 and label[1, 0] == 0 and label[1, 8] == 1


def test_dataset_yaml(tmp_path):
    root = tmp_path / 'data' / 'CamVid'
    for k in range(2):
        _write_rgb(root / 'val' / f'a{k}.png', _image(k))
        _write_mask(root / 'valannot' / f'a{k}.png', np.ones((H, W), np.uint8))
    spec = tmp_path / 'data' / 'camvid.yaml'
    spec.write_text(yaml.safe_dump({'layout': 'camvid', 'root': 'CamVid', 'split': 'val'}))
    ds = datasets.open_dataset(spec)
    assert ds.layout == 'camvid' and len(ds) == 2
    with pytest.raises(FileNotFoundError):
        datasets.open_dataset(spec, split='train')


def test_bag_dataset(tmp_path):
    frames = [{'image': _image(k), 'label': np.full((H, W), k, np.uint8)} for k in range(3)]
    write_bag(tmp_path / 'bag', frames, storage='sqlite3')
    ds = datasets.open_dataset(tmp_path / 'bag', image_topic='/camera/image_raw', gt_topic='/ground_truth/labels')
    assert ds.layout == 'rosbag' and ds.classes == list(SCENE_CLASS_NAMES)
    image, label = _check(ds, 3, len(SCENE_CLASS_NAMES))
    np.testing.assert_array_equal(ds[2][0], _image(2))
    assert (ds[2][1] == 2).all()


def test_rendered_dataset_reads_through_generic_reader(tmp_path):
    pytest.importorskip('pybullet')
    from seg_perception.offline import cli
    out = tmp_path / 'rendered'
    assert cli.main(['render', '--out', str(out), '--frames', '2', '--width', str(W), '--height', str(H),
                     '--seq-len', '2']) == 0
    ds = datasets.open_dataset(out)
    assert ds.layout == 'generic' and ds.classes == list(SCENE_CLASS_NAMES)
    assert ds.palette == [tuple(c) for c in SCENE_PALETTE]
    image, label = _check(ds, 2, len(SCENE_CLASS_NAMES))
    assert label.max() < len(SCENE_CLASS_NAMES)
