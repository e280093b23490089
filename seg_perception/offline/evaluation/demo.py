"""``seg-perception demo``: ``seg-perception replay --live`` on the shipped sample bag and model (``make demo``).

An alias, not a second implementation: it builds the replay command's arguments and runs it, so the report in
``--out`` (default ``out/demo``) is the replay report: report.md / report.json, plots, strip.png and overlay.mp4,
with the live section (the node in its own process and DDS domain). The shipped default model has a seventh class,
``covered_floor`` (floor under a table top or a shelf); the sample bag's ground truth has six, so on the default
model the demo scores that class as floor (``--merge covered_floor:floor``; the costmap keeps it).
"""
import argparse

from ...paths import find_share_file
from ..argtypes import positive_float
from . import replay

DEFAULT_BAG = 'samples/scenes_sample'
DEFAULT_MERGE = ['covered_floor:floor']     # the default model's 7th class, as the sample's 6-class truth counts it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--bag', default=None, help=f'rosbag2 folder (default: the shipped {DEFAULT_BAG})')
    parser.add_argument('--model', default=None, help='ONNX model (default: the shipped default model)')
    parser.add_argument('--merge', action='append', default=None, metavar='MODEL_CLASS:CLASS',
                        help='score a class of the model as a class of the ground truth (repeatable; default: '
                             f'{" ".join(DEFAULT_MERGE)} with the default model, none with --model)')
    parser.add_argument('--image-topic', default=None, help='camera topic (default: found from the bag)')
    parser.add_argument('--out', default='out/demo', help='report folder')
    parser.add_argument('--rate', type=positive_float, default=1.0, help='playback speed (1 = as recorded)')
    parser.add_argument('--timeout', type=positive_float, default=120.0,
                        help='give up on a node that does not come up within this many seconds')


def replay_argv(args: argparse.Namespace) -> list:
    """The ``seg-perception replay`` arguments this demo stands for."""
    bag = args.bag or find_share_file(*DEFAULT_BAG.split('/')) or DEFAULT_BAG
    argv = [bag, '--live', '--out', args.out, '--rate', str(args.rate), '--timeout', str(args.timeout)]
    merge = DEFAULT_MERGE if args.merge is None and not args.model else args.merge or []
    return argv + (['--model', args.model] if args.model else []) + [a for m in merge for a in ('--merge', m)] + (
        ['--image-topic', args.image_topic] if args.image_topic else [])


def run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser(prog='seg-perception replay')
    replay.add_arguments(parser)
    return replay.run(parser.parse_args(replay_argv(args)))
