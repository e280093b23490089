"""Data for models that must work off their training renderer: dataset mixes with label maps, CamVid in the
shared layout, domain-randomization augmentation, and rebuilding a checkpoint from a shipped .onnx."""
import cv2
import numpy as np
import pytest
import torch
import yaml

from seg_perception.offline.data import datasets
from seg_perception.offline.training.augment import (
    TrainDataset,
    add_haze,
    add_shadows,
    random_convolution,
    recolor_classes,
)
from seg_perception.offline.training.config import check_config

H, W = 16, 24


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _camvid_shared_layout(root, splits=(('train', 2), ('val', 1), ('test', 1))):
    mask = (np.arange(H * W).reshape(H, W) % 12).astype(np.uint8)
    for split, n in splits:
        for k in range(n):
            _write(root / split / 'images' / f'f{split}{k}.jpg', np.full((H, W, 3), 40 * k, np.uint8))
            _write(root / split / 'labels' / f'f{split}{k}.png', mask)
    return mask


def test_camvid_shared_layout_and_joined_splits(tmp_path):
    mask = _camvid_shared_layout(tmp_path / 'camvid')
    assert datasets.detect_layout(tmp_path / 'camvid') == 'camvid'
    joined = datasets.open_dataset(tmp_path / 'camvid', split='train+val')
    assert len(joined) == 3 and len(joined.classes) == 11
    np.testing.assert_array_equal(joined[0][1], np.where(mask == 11, 255, mask))


def test_mix_maps_labels_and_serves_only_its_splits(tmp_path):
    gen = tmp_path / 'gen'
    (gen).mkdir()
    (gen / 'classes.yaml').write_text(yaml.safe_dump({'names': ['a', 'b', 'c'], 'ignore_index': 255}))
    for split in ('train', 'val'):
        _write(gen / 'images' / split / 'x.png', np.zeros((H, W, 3), np.uint8))
        _write(gen / 'masks' / split / 'x.png', np.ones((H, W), np.uint8))
    mask = _camvid_shared_layout(tmp_path / 'camvid')
    spec = tmp_path / 'mix.yaml'
    spec.write_text(yaml.safe_dump({'mix': [
        {'root': 'gen'},
        {'root': 'camvid', 'layout': 'camvid', 'split': {'train': 'train+val'}, 'label_map': {3: 0, 9: 2}}]}))
    train = datasets.open_dataset(spec, split='train')
    assert len(train) == 1 + 3 and train.classes == ['a', 'b', 'c']
    assert (train[0][1] == 1).all()
    expected = np.where(mask == 3, 0, np.where(mask == 9, 2, 255))
    np.testing.assert_array_equal(train[1][1], expected)
    assert len(datasets.open_dataset(spec, split='val')) == 1      # the CamVid part serves train only


def test_recolor_changes_colours_per_class_and_keeps_shape():
    rng = np.random.default_rng(0)
    image = np.full((H, W, 3), (120, 80, 40), np.uint8)
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2:] = 1
    out = recolor_classes(image, label, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    left, right = out[:, :W // 2].reshape(-1, 3).mean(0), out[:, W // 2:].reshape(-1, 3).mean(0)
    assert np.abs(left - right).max() > 1          # the two classes were recoloured differently
    np.testing.assert_array_equal(out, recolor_classes(image, label, np.random.default_rng(1)))
    hazy = add_haze(image, rng)
    assert hazy.shape == image.shape and hazy[0].mean() > image[0].mean()


def test_grain_flat_haze_and_shadows():
    """Fine grain adds pixel-scale variation inside a class; flat haze lowers contrast evenly; shadows only
    darken, softly, and leave most of the frame alone."""
    image = np.full((H, W, 3), (120, 80, 40), np.uint8)
    image[:, W // 2:] = (40, 60, 200)
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2:] = 1

    def local_variation(img):
        grey = img.astype(np.float32).mean(2)
        return np.abs(np.diff(grey, axis=1))[:, :W // 2 - 1].mean()

    plain = recolor_classes(image, label, np.random.default_rng(3), grain=0.0)
    grainy = recolor_classes(image, label, np.random.default_rng(3), grain=1.0)
    assert local_variation(grainy) > local_variation(plain) + 0.5
    rng = np.random.default_rng(0)
    fog = add_haze(image, rng, flat=True)
    contrast = lambda img: np.ptp(img.astype(np.float32).mean(2))   # noqa: E731
    assert contrast(fog) < contrast(image)
    top, bottom = (fog[0].astype(int) - image[0]).mean(), (fog[-1].astype(int) - image[-1]).mean()
    assert abs(top - bottom) < 1                   # even veil, unlike the default haze
    shaded = add_shadows(image, np.random.default_rng(1))
    assert shaded.shape == image.shape and (shaded <= image).all() and (shaded < image).any()
    # a random convolution changes the look but keeps each channel's level and spread and the boundary's place
    for seed in range(8):
        mixed = random_convolution(image, np.random.default_rng(seed))
        assert mixed.shape == image.shape and mixed.dtype == np.uint8
        assert np.array_equal(mixed, random_convolution(image, np.random.default_rng(seed)))
        assert np.abs(mixed.reshape(-1, 3).mean(0) - image.reshape(-1, 3).mean(0)).max() < 6   # clipping moves it
        step = np.abs(np.diff(mixed.astype(np.float32).mean(2), axis=1)).mean(0)
        assert step.argmax() in range(W // 2 - 4, W // 2 + 3) or step.max() < 1
    assert any(not np.array_equal(random_convolution(image, np.random.default_rng(s)), image) for s in range(8))


def test_domain_randomized_training_samples_are_deterministic(tmp_path):
    _camvid_shared_layout(tmp_path / 'camvid')
    ds = datasets.open_dataset(tmp_path / 'camvid', split='train')
    cfg = check_config({'data': 'x', 'input_size': [32, 32], 'crop_size': [32, 32], 'domain_randomization': 1.0,
                        'class_recolor': 1.0, 'texture_grain': 1.0, 'haze': 1.0, 'flat_haze': 0.5, 'shadows': 1.0,
                        'random_conv': 1.0})
    train = TrainDataset(ds, cfg)
    a, b = train[(0, 5)], train[(0, 5)]
    assert a[0].shape == (3, 32, 32) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(TypeError):
        check_config({'data': 'x', 'class_recolor': 'often'})


@pytest.mark.parametrize('arch', ['topformer_tiny', 'adaptive_topformer_tiny'])
def test_recover_rebuilds_a_checkpoint_from_an_export(arch, tmp_path):
    """BatchNorm folded at export is unfolded with measured statistics: same 1/8 logits as the file (an adaptive
    file compared at knob 1, the full model)."""
    from seg_perception.nets import create_model
    from seg_perception.offline.deploy.export import build_metadata, export_model
    from seg_perception.offline.deploy.recover import recover

    torch.manual_seed(0)
    model = create_model(arch, num_classes=3).eval()
    for m in model.modules():                      # non-trivial BatchNorms so that folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / 'm.onnx'
    export_model(model, path, build_metadata(3, [64, 96], arch=arch, resize_mode='resize'), [64, 96],
                 check=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(6)]
    report = recover(path, arch, images, tmp_path / 'new' / 'ckpt.pt')   # the folder is created
    assert report['labels_agree'] >= 0.999 and report['max_rel_diff'] < 1e-3
    ckpt = torch.load(tmp_path / 'new' / 'ckpt.pt', weights_only=True)
    rebuilt = create_model(arch, num_classes=3).eval()
    rebuilt.load_state_dict(ckpt['model'])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-3, atol=1e-4)
