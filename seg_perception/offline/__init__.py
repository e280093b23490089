"""Offline side (needs torch): rendering, datasets, training, export, evaluation, replay and benchmarks."""
