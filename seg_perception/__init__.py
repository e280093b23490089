"""seg_perception: semantic segmentation (and costmaps) for ROS 2 robots.

Robot side (numpy, OpenCV, onnxruntime, yaml, ROS; never torch, ``nets`` or ``offline``): ``node`` (the ROS
edge: parameters, QoS, message conversion, publishing, diagnostics) with its helpers beside it (``label_info``,
``tf_listener``, ``costmap_msgs``, ``launch_support``), and ``runtime`` (no ROS: the ONNX Runtime engine, the
model metadata, image message conversion, the costmap core, the worker and statistics).
Offline side (torch): ``nets`` (the PyTorch models) and ``offline`` (the ``seg-perception`` command: data,
training, deployment, evaluation). Shared by both: ``classes``, ``errors``, ``paths``.
"""
__version__ = '0.1.0'
