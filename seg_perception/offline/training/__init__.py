"""Training: turning a flat YAML experiment into a checkpoint.

Owns the config schema (``config``: every key, its type and default), the training batches (``augment``:
augmentation, the deterministic resumable sampler) and the loop with the ``train`` command (``train``). The
losses are declared by the models themselves (``seg_perception.nets.SegmentationModel.training_loss``, built from
``seg_perception.nets.losses``). May import torch, ``seg_perception.nets``, ``seg_perception.runtime``,
``offline.data`` (datasets), ``offline.predict`` (torch inference with the engine's geometry) and
``offline.evaluation.metrics`` (validation mIoU); never deployment or the other evaluation modules.
"""
