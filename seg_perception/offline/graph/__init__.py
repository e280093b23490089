"""ONNX graph surgery: rewrites of an exported model file that keep its weights (no checkpoint needed).

Owns the ONNX graph and metadata helpers (``onnx_graph``), the labels-to-logits conversion and per-pixel logits
(``logits_head``) and the network's Resize nodes as matrix products (``resize_matmul``): what export applies to
every file it writes, and what the benchmarks apply to the plain exports they compare with. May import onnx,
onnxruntime and ``seg_perception.runtime`` (the metadata schema); never the other offline packages, so that both
deployment and evaluation can use it.
"""
