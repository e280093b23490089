"""Data: where labelled frames come from.

Owns scene rendering (``render``), rosbag2 reading and writing (``bags``) and the dataset readers
(``datasets``: ADE20K, Cityscapes, CamVid, generic folders, bags). May import numpy, OpenCV, pybullet, rosbags,
``seg_perception.classes`` and ``seg_perception.runtime`` (image message conversion); never torch, the models,
training, deployment or evaluation.
"""
