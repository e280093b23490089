"""Offline side (torch): the ``seg-perception`` command and the pipeline behind it.

    data/        rendering, rosbag IO, dataset readers
    training/    config schema, losses, training loop
    deploy/      ONNX export, graph and metadata helpers, int8 quantization
    evaluation/  metrics, evaluate, benchmarks, MAC counting, the node demo
    cli.py       one sub-command per job

Import rule: data <- training, deploy, evaluation; evaluation <- deploy; nothing here is imported by the robot
side (``seg_perception.runtime``, ``seg_perception.node``).
"""
