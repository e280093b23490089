"""The package layout keeps its rules: every import of every module (function-level ones included) is read with
``ast`` and checked against the rules the sub-package docstrings state (``seg_perception/offline/*/__init__.py``).
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'seg_perception'
OFFLINE_PARTS = ('data', 'graph', 'training', 'deploy', 'evaluation', 'predict', 'cli', 'argtypes')
TORCH = ('torch', 'torchvision', 'onnx', 'onnxscript')   # onnx(script): the export side only


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports, anywhere in the file; ``from X import y`` gives ``X`` and
    ``X.y`` (y may be a module)."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f'{base}.{alias.name}' for alias in node.names)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob('*.py'))}
PACKAGES = {module_name(p) for p in PACKAGE.rglob('__init__.py')}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + '.')


def _offline_part(name: str) -> str | None:
    """'data', 'training', ... for a module of seg_perception.offline (None for others)."""
    if not _under(name, 'seg_perception.offline') or name == 'seg_perception.offline':
        return None
    return name.split('.')[2]


def modules_under(prefix: str) -> list[str]:
    return [n for n in MODULES if _under(n, prefix)]


def violations(sources, forbidden) -> list[str]:
    """'A imports B' for each module A named in ``sources`` importing something under ``forbidden``."""
    out = []
    for name, imported in MODULES.items():
        if name not in sources:
            continue
        for target in sorted(imported):
            if any(_under(target, f) for f in forbidden):
                out.append(f'{name} imports {target}')
    return out


def test_the_modules_were_found():
    assert {'seg_perception.node', 'seg_perception.runtime.engine', 'seg_perception.nets',
            'seg_perception.offline.training.train', 'seg_perception.offline.predict'} <= set(MODULES)
    assert 'seg_perception.nets.losses' in MODULES['seg_perception.nets._base']   # relative imports resolved


def test_robot_side_never_imports_torch_nets_or_offline():
    """Robot side: every module outside nets/ and offline/ (node*, runtime/ with the costmap core, the node's
    helpers, and what both sides share)."""
    robot = [n for n in MODULES if n != 'seg_perception' and not _under(n, 'seg_perception.nets')
             and not _under(n, 'seg_perception.offline')]
    assert 'seg_perception.runtime.engine' in robot and 'seg_perception.node' in robot
    assert violations(robot, TORCH + ('seg_perception.nets', 'seg_perception.offline')) == []
    assert violations(['seg_perception'], TORCH) == []   # the package's __init__ imports nothing heavy


def test_models_never_import_offline_code():
    assert violations(modules_under('seg_perception.nets'), ['seg_perception.offline']) == []


@pytest.mark.parametrize('part, forbidden', [
    ('data', ['training', 'deploy', 'evaluation', 'predict', 'cli']),
    ('graph', ['data', 'training', 'deploy', 'evaluation', 'predict', 'cli']),
    ('predict', ['data', 'training', 'deploy', 'evaluation', 'cli']),
    ('training', ['deploy', 'evaluation.evaluate', 'evaluation.bench', 'evaluation.demo', 'evaluation.replay',
                  'cli']),
    ('evaluation', ['training', 'deploy', 'cli']),
    ('deploy', ['training', 'cli']),
    ('argtypes', ['data', 'graph', 'training', 'deploy', 'evaluation', 'predict', 'cli']),
])
def test_offline_import_rules(part, forbidden):
    found = violations(modules_under(f'seg_perception.offline.{part}'),
                       [f'seg_perception.offline.{f}' for f in forbidden])
    assert found == []


def test_data_needs_neither_torch_nor_models():
    assert violations(modules_under('seg_perception.offline.data'), TORCH + ('seg_perception.nets',)) == []


def test_no_import_cycles_between_offline_parts():
    edges = {part: set() for part in OFFLINE_PARTS}
    for name, imported in MODULES.items():
        source = _offline_part(name)
        for target in imported:
            dest = _offline_part(target)
            if source in edges and dest in edges and dest != source:
                edges[source].add(dest)
    assert 'cli' not in set().union(*edges.values())   # the command imports its modules, not the reverse
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 'open':
                raise AssertionError('import cycle: ' + ' -> '.join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 'done'

    for part in OFFLINE_PARTS:
        if part not in state:
            visit(part, [])


@pytest.mark.parametrize('package', ['offline', 'offline/data', 'offline/graph', 'offline/training',
                                     'offline/deploy', 'offline/evaluation', 'nets', 'runtime'])
def test_packages_say_what_they_own_and_may_import(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / '__init__.py').read_text()))
    assert doc and len(doc.split()) >= 10, f'{package}/__init__.py needs a docstring saying what it owns'
    if package.startswith('offline/'):
        assert 'May import' in doc and 'never' in doc, f'{package}: state the import rule'


def test_every_offline_module_is_in_a_sub_package_or_named_for_its_job():
    loose = sorted(n for n in MODULES if _offline_part(n) and n.count('.') == 2 and n not in PACKAGES)
    assert loose == ['seg_perception.offline.argtypes', 'seg_perception.offline.cli',
                     'seg_perception.offline.predict'], loose
