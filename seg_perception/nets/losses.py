"""The losses a segmentation model trains with; :class:`~seg_perception.nets.SegmentationModel` combines them.

Every loss takes logits at any resolution and labels ``target`` (N, H, W) in which ``ignore_index`` marks
pixels without a label (void classes, and the padding of a training crop): those pixels count in no loss.

  * :func:`seg_ce`: cross-entropy on logits upsampled bilinearly to the labels' size, optionally weighted per class;
  * :func:`distill_loss`: the one distillation loss, KL(teacher || student), on labelled pixels only;
  * :func:`segmentation_loss`: main cross-entropy + weighted auxiliary outputs + weighted distillation.
"""
import torch
import torch.nn.functional as F

from ..classes import IGNORE_INDEX

__all__ = ['seg_ce', 'distill_loss', 'segmentation_loss', 'split_outputs']


def split_outputs(outputs: torch.Tensor | tuple | list | dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main logits, auxiliary logits) of a train-mode output: a tensor, ``(logits, aux, ...)`` or
    ``{'logits': ..., 'aux': [...]}``."""
    if isinstance(outputs, dict):
        return outputs['logits'], list(outputs.get('aux', ()))
    if isinstance(outputs, (tuple, list)):
        return outputs[0], list(outputs[1:])
    return outputs, []


def seg_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
           class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``logits`` (N, C, h, w), upsampled bilinearly to ``target`` (N, H, W); with
    ``class_weights`` (C,) each pixel weighs its class's weight and the mean is over those weights."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode='bilinear', align_corners=False)
    return F.cross_entropy(logits, target.long(), weight=class_weights, ignore_index=ignore_index)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` at the student's resolution,
    averaged over labelled pixels.

    The teacher's logits are resized bilinearly to the student's. Each student pixel weighs the fraction of
    labelled pixels of ``target`` it covers (area downsampling of the label mask), so pixels the labels ignore
    teach nothing: they are void classes the teacher never learnt, or the constant padding of a training crop,
    and neither the cross-entropy nor the mIoU looks at them. A batch without labelled pixels gives 0."""
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode='bilinear', align_corners=False)
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.detach().to(student.dtype) / t, dim=1),
                  reduction='none', log_target=True).sum(1)
    labelled = (target != ignore_index)[:, None].to(kl.dtype)
    weight = F.interpolate(labelled, size=kl.shape[-2:], mode='area')[:, 0]
    return (kl * weight).sum() / weight.sum().clamp(min=1e-6) * (t * t)


def segmentation_loss(outputs: torch.Tensor | tuple | list | dict, target: torch.Tensor,
                      teacher_logits: torch.Tensor | None = None, *, aux_weight: float = 0.4, kd_weight: float = 0.0,
                      kd_temperature: float = 1.0, ignore_index: int = IGNORE_INDEX,
                      class_weights: list[float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE(main) + aux_weight * sum_i CE(aux_i) + kd_weight * distill_loss(main, teacher)`` and its parts
    (``ce``, ``aux0``..., ``kd``: floats, for logging). Distillation runs when ``teacher_logits`` are given
    and ``kd_weight > 0``. ``class_weights`` (one per class, e.g. from a training config's ``loss_kwargs``)
    weight the cross-entropies, not the distillation."""
    logits, aux = split_outputs(outputs)
    if class_weights is not None:
        if len(class_weights) != logits.shape[1]:
            raise ValueError(f'class_weights has {len(class_weights)} values for {logits.shape[1]} classes')
        class_weights = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    loss = seg_ce(logits, target, ignore_index, class_weights)
    parts = {'ce': float(loss.detach())}
    for i, extra in enumerate(aux):
        aux_loss = seg_ce(extra, target, ignore_index, class_weights)
        loss = loss + aux_weight * aux_loss
        parts[f'aux{i}'] = float(aux_loss.detach())
    if teacher_logits is not None and kd_weight > 0:
        kd = distill_loss(logits, teacher_logits, target, kd_temperature, ignore_index)
        loss = loss + kd_weight * kd
        parts['kd'] = float(kd.detach())
    return loss, parts
