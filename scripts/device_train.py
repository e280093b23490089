"""Train several configs side by side on one lent accelerator inside a wall-clock budget.

    python scripts/device_train.py --budget 520 --out $OUT \
        'NAME=CONFIG.yaml [key=value ...]' ['NAME=CONFIG.yaml [key=value ...]' ...]

A lease is short and ends hard, so the iteration count is not guessed: every run first trains a few iterations in
a throwaway directory (all runs at once, so the probe sees the same contention as the real runs), then each run
gets the iterations that fit what is left of ``--budget`` (times ``--margin``), its poly schedule planned for that
count from the start. A run still going at the deadline is stopped and its last checkpoint kept. What comes back
is small (a lease returns few files): per run the model weights and the training history (the optimizer state
left behind), split into parts of at most ``--part-mib`` MiB, and the log; the probes' logs stay in ``--scratch``
unless a probe fails. ``merge`` joins the parts into one checkpoint that
``export`` and ``evaluate`` read:

    python scripts/device_train.py merge OUT_DIR/NAME -o runs/NAME/last.pt
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from seg_perception.offline.argtypes import non_negative_float, positive_float, share

PROBE_ITERS = 60


def parse_run(spec: str) -> tuple[str, str, list[str]]:
    """'NAME=CONFIG.yaml key=value ...' -> (name, config, overrides)."""
    name, _, rest = spec.partition('=')
    config, *overrides = rest.split() or ['']
    if not name or not config:
        raise argparse.ArgumentTypeError(f'run {spec!r} is not "NAME=CONFIG.yaml [key=value ...]"')
    return name, config, overrides


def run_dir(config: str, overrides: list[str]) -> Path:
    """The run's ``out`` folder: the config's, or its ``out=`` override."""
    from seg_perception.offline.training.config import load_config

    return Path(load_config(config, overrides)['out'])


def launch(config: str, overrides: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with open(log, 'w') as out:   # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, '-m', 'seg_perception.offline.cli', 'train', config, *overrides],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | None]:
    """Exit codes; a run still going at ``deadline`` is stopped (SIGINT, then SIGKILL) and reported as None."""
    codes = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            codes[name] = None
    return codes


def save_parts(checkpoint: Path, dest: Path, part_mib: float) -> list[str]:
    """The checkpoint's model weights in parts of at most ``part_mib`` MiB, the first part with the rest of the
    checkpoint except the optimizer state."""
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=True)
    dest.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in ckpt.items() if k not in ('model', 'optimizer')}
    parts, current, size = [], {}, 0
    for key, value in ckpt['model'].items():
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > part_mib * 2 ** 20:
            parts.append(current)
            current, size = {}, 0
        current[key] = value
        size += nbytes
    parts.append(current)
    names = []
    for i, part in enumerate(parts):
        names.append(f'part{i}.pt')
        torch.save({'model': part, **(meta if i == 0 else {})}, dest / names[-1])
    return names


def merge(folder: Path, output: Path) -> None:
    parts = sorted(folder.glob('part*.pt'), key=lambda p: int(p.stem[4:]))
    if not parts:
        raise FileNotFoundError(f'{folder}: no part*.pt')
    ckpt = torch.load(parts[0], map_location='cpu', weights_only=True)
    for part in parts[1:]:
        ckpt['model'].update(torch.load(part, map_location='cpu', weights_only=True)['model'])
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, output)
    print(f'{output}: {len(ckpt["model"])} tensors from {len(parts)} parts, iteration {ckpt["iter"]}')


def train_all(args: argparse.Namespace) -> int:
    start = time.time()
    deadline = start + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = args.runs
    probe_dir = Path(args.scratch)
    probe_dir.mkdir(parents=True, exist_ok=True)
    probes = {name: launch(config, [*overrides, f'out={probe_dir / name}', f'iters={PROBE_ITERS}', 'warmup_iters=10',
                                    f'save_interval={PROBE_ITERS}', 'exist_ok=true'], probe_dir / f'{name}.log')
              for name, config, overrides in runs}
    codes = wait_all(probes, deadline)
    speed = {}
    for name, code in codes.items():
        metrics = probe_dir / name / 'metrics.json'
        if code != 0 or not metrics.exists():
            print(f'{name}: probe failed (exit {code}):\n' + (probe_dir / f'{name}.log').read_text()[-3000:])
            return 1
        speed[name] = json.loads(metrics.read_text())['sec_per_iter']
    left = deadline - time.time() - args.reserve
    iters = {name: max(100, int(left * args.margin / speed[name])) for name in speed}
    print(f'probe after {time.time() - start:.0f} s: ' + ', '.join(
        f'{n} {1000 * s:.0f} ms/iter -> {iters[n]} iterations' for n, s in speed.items()), flush=True)
    procs = {name: launch(config, [*overrides, f'iters={iters[name]}', f'save_interval={max(1, iters[name] // 8)}',
                                   'exist_ok=true'], out / f'{name}.log')
             for name, config, overrides in runs}
    codes = wait_all(procs, deadline - args.reserve / 2)
    status = 0
    for (name, config, overrides), code in zip(runs, codes.values()):
        last = run_dir(config, overrides) / 'last.pt'
        state = {0: 'finished', None: 'stopped at the deadline'}.get(code, f'failed (exit {code}; see {name}.log)')
        if code not in (0, None):
            status = 1
        if not last.exists():
            print(f'{name}: {state}, no checkpoint')
            status = 1
            continue
        parts = save_parts(last, out / name, args.part_mib)
        print(f'{name}: {state}; {last} -> {name}/{", ".join(parts)}', flush=True)
    print(f'total {time.time() - start:.0f} s')
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['merge']:
        parser = argparse.ArgumentParser(prog='device_train.py merge')
        parser.add_argument('folder', type=Path)
        parser.add_argument('-o', '--output', type=Path, required=True)
        args = parser.parse_args(argv[1:])
        try:
            merge(args.folder, args.output)
        except FileNotFoundError as exc:
            parser.error(str(exc))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs='+', type=parse_run,
                        help='"NAME=CONFIG.yaml [key=value ...]", one quoted word per run')
    parser.add_argument('--budget', type=positive_float, required=True, help='seconds for everything, probe included')
    parser.add_argument('--out', required=True, help='folder for what comes back')
    parser.add_argument('--scratch', default='/tmp/device_probe', help='folder for the probe runs')
    parser.add_argument('--reserve', type=non_negative_float, default=40.0,
                        help='seconds kept for saving what comes back')
    parser.add_argument('--margin', type=share, default=0.85, help='share of the time left planned for training')
    parser.add_argument('--part-mib', type=positive_float, default=15.0, help='largest part that comes back')
    return train_all(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
