"""seg_perception: semantic segmentation for ROS 2 robots.

Robot side (numpy, OpenCV, onnxruntime, yaml, ROS): ``node``, ``runtime``, ``costmap``.
Offline side (torch): ``nets`` and ``offline`` (the ``seg-perception`` CLI).
"""
__version__ = '0.1.0'
