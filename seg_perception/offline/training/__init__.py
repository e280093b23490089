"""Training: the config schema, the losses and the training loop (``train``).

Owns turning a flat YAML experiment into a checkpoint. May import torch, ``seg_perception.nets``,
``offline.data`` (datasets), ``offline.predict`` (torch inference) and ``offline.evaluation.metrics``
(validation mIoU); never deployment or the evaluation commands.
"""
