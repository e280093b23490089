"""Evaluation: how good and how fast a model is.

Owns the metrics (``metrics``), scoring a model on a dataset or bag (``evaluate``), benchmarks (``bench``),
parameter and MAC counting (``flops``), bag replay through the engine and the live node with its report
(``replay``, ``replay_live``, ``replay_report``; ``demo`` is ``replay --live`` on the sample bag). May import
``seg_perception.runtime`` (the very engine the node runs), ``seg_perception.nets``, ``offline.data``,
``offline.predict`` and ``offline.graph`` (the rewrites export applies, for the benchmarks); never training or
deployment (export uses this package, not the other way round).
"""
