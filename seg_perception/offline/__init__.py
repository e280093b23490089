"""Offline side (torch): the ``seg-perception`` command and the pipeline behind it.

    data/        rendering, rosbag IO, dataset readers
    training/    config schema, training batches, training loop, checkpoint averaging
    predict.py   torch inference of checkpoints with the runtime engine's geometry
    graph/       ONNX graph surgery that keeps the weights: graph and metadata helpers, logits head and
                 layout, Resize as matrix products
    deploy/      ONNX export, int8 quantization, calibration
    evaluation/  metrics, evaluate, benchmarks, MAC counting, the node demo
    cli.py       one sub-command per job
    argtypes.py  the sub-commands' numeric option types (range-checked while parsing)

Import rule (``A <- B``: B imports A): data, predict <- training, deploy, evaluation; graph <- deploy, evaluation;
evaluation <- deploy; argtypes (which imports none of them) <- data, deploy, evaluation; no cycles; nothing here
is imported by the robot side (``seg_perception.runtime``, ``seg_perception.node``) or by ``seg_perception.nets``.
``test/test_layout.py`` checks it.
"""
