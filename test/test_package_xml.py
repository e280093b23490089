"""package.xml declares exactly what the robot side (node, runtime, launch files) imports, as rosdep keys."""
import ast
import os
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Python modules whose rosdep key differs from the module name (keys from ros/rosdistro rosdep/python.yaml).
MODULE_KEYS = {'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml',
               'onnxruntime': 'python3-onnxruntime-pip'}
# The offline tools (seg-perception: torch, pybullet, ...) are pip extras ('.[train]'), not robot dependencies.
OFFLINE_DIRS = ('offline', 'nets')


def robot_side_files():
    files = [os.path.join(ROOT, 'launch', f) for f in os.listdir(os.path.join(ROOT, 'launch')) if f.endswith('.py')]
    for folder, dirs, names in os.walk(os.path.join(ROOT, 'seg_perception')):
        dirs[:] = [d for d in dirs if d not in OFFLINE_DIRS and d != '__pycache__']
        files += [os.path.join(folder, n) for n in names if n.endswith('.py')]
    return files


def imported_top_level(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split('.')[0]


def test_exec_depends_match_robot_side_imports():
    used = {}
    for path in robot_side_files():
        for module in imported_top_level(path):
            if module in sys.stdlib_module_names or module == 'seg_perception':
                continue
            used.setdefault(MODULE_KEYS.get(module, module), set()).add(os.path.relpath(path, ROOT))
    declared = {e.text.strip() for e in ET.parse(os.path.join(ROOT, 'package.xml')).getroot().iter('exec_depend')}
    missing = {k: sorted(v) for k, v in used.items() if k not in declared}
    assert not missing, f'imported but not an <exec_depend> in package.xml: {missing}'
    assert declared <= set(used), f'<exec_depend> nothing imports: {sorted(declared - set(used))}'
    assert 'torch' not in used


def test_package_xml_is_format_3_ament_python():
    root = ET.parse(os.path.join(ROOT, 'package.xml')).getroot()
    assert root.get('format') == '3' and root.findtext('export/build_type') == 'ament_python'
    assert root.findtext('name') == 'seg_perception'


def test_package_xml_version_matches_setup_py():
    with open(os.path.join(ROOT, 'setup.py')) as f:
        setup_py = f.read()
    version = ET.parse(os.path.join(ROOT, 'package.xml')).getroot().findtext('version')
    assert f"version='{version}'" in setup_py
