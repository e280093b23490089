"""The losses models train with (nets.losses) and the training hooks every model declares (SegmentationModel)."""
import pytest
import torch
import torch.nn.functional as F

from seg_perception.nets import SegmentationModel, create_model
from seg_perception.nets.losses import distill_loss, segmentation_loss, split_outputs


def _kl_map(student, teacher):
    return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), reduction='none', log_target=True).sum(1)


def test_distillation_ignores_unlabelled_pixels():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8)
    target = torch.randint(0, 6, (2, 64, 64))
    target[:, :, :32] = 255                        # the left half of every image has no label (void, padding)
    base = distill_loss(student, teacher, target)
    moved = teacher.clone()
    moved[..., :4] += 5 * torch.randn_like(moved[..., :4])   # the teacher changes its mind where nothing is labelled
    assert distill_loss(student, moved, target) == pytest.approx(float(base), rel=1e-6)
    moved = teacher.clone()
    moved[..., 4:] += 5 * torch.randn_like(moved[..., 4:])
    assert abs(float(distill_loss(student, moved, target)) - float(base)) > 1e-3
    # the value: mean KL over the labelled 1/8 pixels, T^2 scaled
    assert float(base) == pytest.approx(float(_kl_map(student, teacher)[..., 4:].mean()), rel=1e-5)
    t = 2.0
    expected = _kl_map(student / t, teacher / t)[..., 4:].mean() * t * t
    assert float(distill_loss(student, teacher, target, temperature=t)) == pytest.approx(float(expected), rel=1e-5)


def test_distillation_partial_cells_weigh_by_labelled_fraction_and_empty_batch_is_zero():
    torch.manual_seed(1)
    student, teacher = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[:, :8, :8] = 255                         # cell (0, 0) unlabelled
    target[:, :8, 8:12] = 255                       # cell (0, 1) half labelled
    kl = _kl_map(student, teacher)[0]
    expected = (0.5 * kl[0, 1] + kl[1, 0] + kl[1, 1]) / 2.5
    assert float(distill_loss(student, teacher, target)) == pytest.approx(float(expected), rel=1e-5)
    empty = torch.full((1, 16, 16), 255)
    assert float(distill_loss(student, teacher, empty)) == 0.0


def test_segmentation_loss_parts_for_every_output_form():
    torch.manual_seed(2)
    logits, aux = torch.randn(2, 4, 4, 4, requires_grad=True), torch.randn(2, 4, 4, 4)
    target = torch.randint(0, 4, (2, 32, 32))
    target[0, 0] = 255
    ce = F.cross_entropy(F.interpolate(logits.detach(), size=(32, 32), mode='bilinear'), target, ignore_index=255)
    ce_aux = F.cross_entropy(F.interpolate(aux, size=(32, 32), mode='bilinear'), target, ignore_index=255)
    for outputs in (logits, (logits, aux), {'logits': logits, 'aux': [aux]}):
        loss, parts = segmentation_loss(outputs, target, aux_weight=0.25)
        with_aux = not isinstance(outputs, torch.Tensor)
        assert float(loss.detach()) == pytest.approx(float(ce + 0.25 * ce_aux * with_aux), rel=1e-5)
        assert set(parts) == ({'ce', 'aux0'} if with_aux else {'ce'})
        assert len(split_outputs(outputs)[1]) == int(with_aux)
    teacher = torch.randn(2, 4, 4, 4)
    loss, parts = segmentation_loss(logits, target, teacher, kd_weight=0.5, kd_temperature=2.0)
    assert parts['kd'] == pytest.approx(float(distill_loss(logits.detach(), teacher, target, 2.0)), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(float(ce) + 0.5 * parts['kd'], rel=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['topformer_tiny', 'seaformer_tiny', 'rtformer_slim', 'static_vit_mini',
                                  'tokenpass_vit_mini'])
def test_models_declare_their_training_needs(name):
    model = create_model(name, num_classes=4)
    assert isinstance(model, SegmentationModel) and model.aux_loss_weight == 0.4
    model.set_threshold_schedule(5, 10)
    if name == 'tokenpass_vit_mini':
        assert model.train_threshold == pytest.approx(1 - 0.5 * (1 - model.exit_conf))
    torch.manual_seed(0)
    model.train()
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    loss, parts = model.training_loss(model(x), target, aux_weight=0.0)
    assert torch.isfinite(loss) and 'ce' in parts
    assert ('aux0' in parts) == (name in ('rtformer_slim', 'static_vit_mini', 'tokenpass_vit_mini'))



def test_class_weights_weigh_each_pixel_by_its_class_and_are_validated():
    torch.manual_seed(2)
    logits, aux = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :2] = 255
    weights = [0.5, 1.0, 3.0]
    loss, parts = segmentation_loss((logits, aux), target, aux_weight=0.4, class_weights=weights)
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction='none')
    w = torch.tensor(weights)[target.clamp(max=2)] * (target != 255)
    assert parts['ce'] == pytest.approx(float((per_pixel * w).sum() / w.sum()), rel=1e-5)
    plain, _ = segmentation_loss((logits, aux), target, aux_weight=0.4)
    same, _ = segmentation_loss((logits, aux), target, aux_weight=0.4, class_weights=[2.0, 2.0, 2.0])
    assert float(same) == pytest.approx(float(plain), rel=1e-6) and float(loss) != pytest.approx(float(plain))
    with pytest.raises(ValueError, match='2 values for 3 classes'):
        segmentation_loss(logits, target, class_weights=[1.0, 1.0])
