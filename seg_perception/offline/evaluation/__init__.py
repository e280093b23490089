"""Evaluation: how good and how fast a model is.

Owns the metrics (``metrics``), scoring a model on a dataset or bag (``evaluate``), benchmarks (``bench``),
parameter and MAC counting (``flops``) and the node demo on a bag (``demo``). May import
``seg_perception.runtime`` (the very engine the node runs), ``seg_perception.nets``, ``offline.data`` and
``offline.predict``; never training or deployment (export uses this package, not the other way round).
"""
