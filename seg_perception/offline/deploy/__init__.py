"""Deployment: from a trained model to the single ONNX file the robot runs.

Owns ONNX export with metadata and parity checks (``export``) and static int8 quantization (``quantize``).
May import torch, onnx, onnxruntime, ``seg_perception.nets``, ``seg_perception.runtime`` (metadata schema,
engine), ``offline.graph`` (graph and metadata helpers, the rewrites export applies), ``offline.data``
(calibration frames), ``offline.predict`` (the preprocessing a checkpoint was trained with) and
``offline.evaluation`` (metrics, MAC counting); never training.
"""
