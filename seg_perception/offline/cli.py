"""The seg-perception command: one sub-command per offline module.

Each module listed in COMMANDS defines ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only
when its sub-command runs, so ``seg-perception render`` does not pay for torch, and so on. Every sub-command
has an entry in EXAMPLES (shown by ``seg-perception --help``).

User mistakes end as one line on stderr and exit code 2, never a traceback: code that finds one raises
``UserError`` (``from seg_perception.errors import UserError``); missing files and folders
(``FileNotFoundError`` and its kin), unusable model files (``EngineError``) and YAML files that do not parse
(or ask for Python objects: YAML is only ever read with ``safe_load``) are treated the same way.
Anything else is a programming error and keeps its traceback.
"""
import argparse
import difflib
import importlib
import re
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from ..errors import UserError

COMMANDS = {
    'render': ('seg_perception.offline.data.render',
               'render labelled scenes (pybullet, or the independent ray-cast generator) to a dataset and/or bag'),
    'cover': ('seg_perception.offline.data.covered',
              "relabel a rendered dataset's floor seen under things as covered_floor (for monocular costmaps)"),
    'train': ('seg_perception.offline.training.train', 'train a model from a YAML config'),
    'average': ('seg_perception.offline.training.average',
                'average training checkpoints of one network tensor by tensor (a weight soup)'),
    'evaluate': ('seg_perception.offline.evaluation.evaluate', 'mIoU, per-class IoU and latency on a dataset or bag'),
    'export': ('seg_perception.offline.deploy.export', 'export a model to ONNX with its metadata'),
    'calibrate': ('seg_perception.offline.deploy.calibrate',
                  "fit a logits model's confidence temperature and domain-shift statistics into its metadata"),
    'recover': ('seg_perception.offline.deploy.recover',
                'rebuild a training checkpoint from an exported .onnx (to fine-tune a shipped model)'),
    'flops': ('seg_perception.offline.evaluation.flops', 'count parameters and MACs of a model'),
    'bench': ('seg_perception.offline.evaluation.bench', 'benchmarks printed as tables'),
    'demo': ('seg_perception.offline.evaluation.demo', 'run the node on a bag and write what it publishes'),
    'replay': ('seg_perception.offline.evaluation.replay',
               'replay a bag through one or more models (offline, or --live through the node): report + plots'),
    'occupancy': ('seg_perception.offline.evaluation.occupancy',
                  'the camera costmap against ground-truth occupancy of a rendered bag (safety metrics, PNGs)'),
    'soak': ('seg_perception.offline.evaluation.soak',
             'the node under 4x overload for minutes: memory growth, output age, counters (pass/fail)'),
}

# one example per sub-command, for the top-level help (a test checks every command has one)
EXAMPLES = {
    'render': 'seg-perception render --out data/scenes --split train --frames 200 --seed 1',
    'cover': 'seg-perception cover data/scenes --split val --out data/scenes_cover',
    'train': 'seg-perception train config/train/topformer_tiny_scenes.yaml iters=500 out=runs/try',
    'average': 'seg-perception average runs/a/last.pt:2 runs/b/last.pt -o runs/soup.pt',
    'evaluate': 'seg-perception evaluate --model models/topformer_tiny_scenes.onnx --data samples/scenes_sample',
    'export': 'seg-perception export --checkpoint runs/try/best.pt --resize-mode resize -o model.onnx',
    'calibrate': 'seg-perception calibrate --model models/topformer_tiny_scenes.onnx --data data/scenes --split val '
                 '--shift data/scenes -o runs/calibrated.onnx',
    'recover': 'seg-perception recover models/topformer_tiny_scenes.onnx --arch topformer_tiny '
               '--calib data/scenes/images/train -o runs/recovered.pt',
    'flops': 'seg-perception flops --arch topformer_tiny --input-size 512 512',
    'bench': 'seg-perception bench tokenpass --model models/tokenpass_vit_mini_scenes.onnx '
             '--static models/static_vit_mini_scenes.onnx --data data/scenes',
    'demo': 'seg-perception demo --out out/demo',
    'replay': 'seg-perception replay samples/scenes_sample --model models/topformer_tiny_scenes.onnx '
              '--model models/tokenpass_vit_mini_scenes.onnx --out out/replay',
    'occupancy': 'seg-perception occupancy data/costmap_eval_bag --out out/occupancy',
    'soak': 'seg-perception soak --minutes 10',
}

DESCRIPTION = """\
Offline tools of seg_perception: render data, train, export to ONNX, evaluate, benchmark, and run the
node on a bag. Run `seg-perception COMMAND --help` for the options of one command."""


# what else counts as a user's mistake: file system errors about the paths they gave
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (plain text) and every option's default shown, unless its help already says."""

    def _get_help_string(self, action):
        text = action.help or ''
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if 'default' in text.lower() or no_default or (not action.option_strings and action.nargs not in '?*'):
            return text
        return f'{text} (default: %(default)s)'


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (what is wrong, and where to look)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('formatter_class', HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:  # a misspelt sub-command or choice: suggest the nearest
            choices = re.findall(r"'([^']*)'", match.group(2))
            close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.5)
            if close:
                message += f"; did you mean '{close[0]}'?"
        match = re.match(r'unrecognized arguments: (--?[\w-]+)', message)
        if match:  # a misspelt option: suggest the nearest of this command's
            close = difflib.get_close_matches(match.group(1), list(self._option_string_actions), n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def _user_error_types():
    import yaml

    from ..runtime.engine import EngineError
    return (UserError, EngineError, yaml.YAMLError) + USER_OS_ERRORS


def user_error_message(exc: BaseException) -> str:
    """One line for a user's mistake (file system errors as 'PATH: reason')."""
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        text = f'{exc.filename}: not found'
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f'{exc.filename}: {exc.strerror}'
    else:
        text = str(exc) or type(exc).__name__
    return ' '.join(text.split())


def _top_level_parser():
    width = max(len(name) for name in COMMANDS)
    lines = ['commands (one example each):']
    for name, (_, help_text) in COMMANDS.items():
        lines.append(f'  {name:<{width}}  {help_text}')
        if name in EXAMPLES:
            lines.append(f'  {"":<{width}}    {EXAMPLES[name]}')
    parser = Parser(prog='seg-perception', description=DESCRIPTION, epilog='\n'.join(lines),
                    usage='seg-perception COMMAND [options]   (seg-perception COMMAND --help for its options)')
    return parser


def _apply_formatter(parser):
    """Nested sub-commands (``bench NAME``) get the same formatter and one-line errors."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.formatter_class = HelpFormatter
                _apply_formatter(child)


def build_parser(name: str) -> tuple[ModuleType, Parser]:
    """The argument parser of one sub-command (imports its module)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = Parser(prog=f'seg-perception {name}', description=COMMANDS[name][1])
    module.add_arguments(parser)
    _apply_formatter(parser)
    return module, parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        _top_level_parser().print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ''
        print(f"seg-perception: error: unknown command '{name}'; {hint}commands: {', '.join(COMMANDS)} "
              '(see seg-perception --help)', file=sys.stderr)
        return 2
    module, parser = build_parser(name)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f'seg-perception {name}: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _user_error_types()):
            raise
        print(f'seg-perception {name}: error: {user_error_message(exc)}', file=sys.stderr)
        return 2


if __name__ == '__main__':  # python -m / torchrun: use the package's module, so UserError is one class
    from seg_perception.offline.cli import main as package_main
    sys.exit(package_main())
