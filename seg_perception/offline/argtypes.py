"""argparse types for the sub-commands' numeric options: a value out of its range is a usage error that names the
option and the value (one line, exit code 2) before any work starts, instead of a traceback from deep inside
(``torch.set_num_threads(0)``, ``np.zeros`` of a negative size) or a run that quietly does nothing
(``render --frames -1``).

``type=int`` / ``type=float`` stay only where the command checks the value itself with its own message; where
any finite number means something (a camera pitch, an RGB mean) ``finite_float`` refuses NaN and infinity. A test
walks every parser and holds the options to these.
"""
import argparse
import math


def _number(kind, text: str, ok, requirement: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not {"an integer" if kind is int else "a number"}') from None
    if not ok(value):   # NaN fails every comparison, so it never gets through
        raise argparse.ArgumentTypeError(f'{text} must be {requirement}')
    return value


def positive_int(text: str) -> int:
    """Counts and sizes that cannot be zero: frames to render, threads of a benchmark, a side in pixels."""
    return _number(int, text, lambda v: v > 0, 'a positive integer')


def non_negative_int(text: str) -> int:
    """Counts where 0 means something (``--limit 0`` = all frames, ``--warmup 0``) and seeds."""
    return _number(int, text, lambda v: v >= 0, 'an integer >= 0')


def positive_float(text: str) -> float:
    """Rates, durations, lengths in metres."""
    return _number(float, text, lambda v: v > 0, 'a positive number')


def non_negative_float(text: str) -> float:
    """Tolerances and margins, where 0 is the strictest."""
    return _number(float, text, lambda v: v >= 0, 'a number >= 0')


def finite_float(text: str) -> float:
    """Numbers of any sign or size that must still be numbers: a camera pitch, an RGB mean."""
    return _number(float, text, math.isfinite, 'a finite number')


def share(text: str) -> float:
    """Fractions and probabilities: shares of sequences, confidence thresholds, quantiles."""
    return _number(float, text, lambda v: 0 <= v <= 1, 'in [0, 1]')


def ros_domain_id(text: str) -> int:
    """A ROS_DOMAIN_ID (0-232: the ids whose ports fit under 65535 with Fast DDS's and Cyclone's defaults)."""
    return _number(int, text, lambda v: 0 <= v <= 232, 'a ROS domain id in [0, 232]')
