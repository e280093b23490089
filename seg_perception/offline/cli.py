"""The ``seg-perception`` command: one sub-command per offline module.

Each module listed in COMMANDS defines ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when its sub-command runs, so ``seg-perception render`` does not pay for torch, and so on."""
import argparse
import importlib
import sys

COMMANDS = {
    'render': ('seg_perception.offline.data.render', 'render labelled scenes with pybullet (dataset and/or rosbag)'),
    'train': ('seg_perception.offline.training.train', 'train a model from a YAML config'),
    'evaluate': ('seg_perception.offline.evaluation.evaluate', 'mIoU, per-class IoU and latency on a dataset or bag'),
    'export': ('seg_perception.offline.deploy.export', 'export a model to ONNX with its metadata'),
    'flops': ('seg_perception.offline.evaluation.flops', 'count parameters and MACs of a model'),
    'bench': ('seg_perception.offline.evaluation.bench', 'benchmarks printed as tables'),
    'demo': ('seg_perception.offline.evaluation.demo', 'run the node on a bag and write what it publishes'),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog='seg-perception', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ('-h', '--help') or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ('-h', '--help') else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f'seg-perception {name}', description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
