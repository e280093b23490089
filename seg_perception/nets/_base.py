"""The base class of every model: what the trainer needs from a model, declared by the model itself."""
import torch
import torch.nn as nn

from ..classes import IGNORE_INDEX
from .losses import segmentation_loss


class SegmentationModel(nn.Module):
    """A segmenter: eval-mode ``model(x)`` returns logits (N, num_classes, H/8, W/8).

    Training hooks (``seg_perception.offline.training`` calls them; override what differs):
      * ``aux_loss_weight``: weight of each auxiliary output's cross-entropy when the config leaves it to the
        model;
      * :meth:`training_loss`: the loss of a train-mode output (by default :func:`.losses.segmentation_loss`:
        cross-entropy, auxiliary outputs, distillation from a teacher's logits);
      * :meth:`set_threshold_schedule`: called before every iteration (no-op; token-pass models anneal their
        stopping threshold);
      * :meth:`freeze`: submodules that keep their weights and statistics (e.g. a trained trunk under a new head).
    """

    aux_loss_weight = 0.4
    frozen: tuple[str, ...] = ()

    def freeze(self, names: list[str] | tuple[str, ...]) -> None:
        """Keep the direct submodules ``names`` as they are: no gradients, and in eval mode (BatchNorm statistics,
        dropout, drop-path) even while the rest trains. Raises ValueError naming an unknown submodule."""
        children = dict(self.named_children())
        unknown = [n for n in names if n not in children]
        if unknown:
            raise ValueError(f'cannot freeze {unknown}: {type(self).__name__} has the submodules {list(children)}')
        for name in names:
            children[name].requires_grad_(False)
        self.frozen = tuple(names)
        self.train(self.training)

    def train(self, mode: bool = True) -> 'SegmentationModel':
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def training_loss(self, outputs: torch.Tensor | tuple | list | dict, target: torch.Tensor,
                      teacher_logits: torch.Tensor | None = None, *,
                      aux_weight: float | None = None, kd_weight: float = 0.0, kd_temperature: float = 1.0,
                      ignore_index: int = IGNORE_INDEX,
                      class_weights: list[float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, named parts as floats) of a train-mode output against labels ``target`` (N, H, W);
        ``aux_weight=None`` is the model's ``aux_loss_weight``; ``teacher_logits`` are a teacher's eval
        logits (any resolution); ``class_weights`` weight the cross-entropies per class."""
        weight = self.aux_loss_weight if aux_weight is None else aux_weight
        return segmentation_loss(outputs, target, teacher_logits, aux_weight=weight, kd_weight=kd_weight,
                                 kd_temperature=kd_temperature, ignore_index=ignore_index,
                                 class_weights=class_weights)

    def set_threshold_schedule(self, it: int, max_iters: int) -> None:
        """Training progress before iteration ``it`` of ``max_iters``; models with a schedule override it."""
