"""Deployment: from a trained model to the single ONNX file the robot runs.

Owns ONNX export with metadata and parity checks (``export``), the ONNX graph and metadata helpers both
export and quantization use (``onnx_graph``) and static int8 quantization (``quantize``). May import torch, onnx,
onnxruntime, ``seg_perception.nets``, ``seg_perception.runtime`` (metadata schema, engine), ``offline.data``
(calibration frames), ``offline.predict`` (the preprocessing a checkpoint was trained with) and
``offline.evaluation`` (metrics, MAC counting); never training.
"""
