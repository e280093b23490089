"""PyTorch segmentation models (offline side only: the robot never imports this package).

One file per model family (blocks, model, variants table, registered constructors). Every model:
  * is a ``SegmentationModel`` (``_base.py``): it declares what training needs from it (``training_loss``,
    ``aux_loss_weight``, ``set_threshold_schedule``), built from the losses in ``losses.py``;
  * ``model(x)`` in eval mode returns logits at 1/8 of the input, shape (N, num_classes, H/8, W/8);
  * has ``checkpoint_filter_fn(state_dict) -> state_dict`` mapping an official checkpoint to our keys;
  * has ``checkpoint_format`` ('mmseg' or 'paddle').
"""
from . import adaptive, rtformer, seaformer, tokenpass, topformer  # noqa: F401,E402  (fills the registry)
from ._base import SegmentationModel
from ._registry import create_model, list_models, register_model
from .checkpoint import load_official_checkpoint, read_checkpoint_file

__all__ = ['SegmentationModel', 'create_model', 'list_models', 'register_model', 'load_official_checkpoint',
           'read_checkpoint_file']
