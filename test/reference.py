"""Where the official-architecture reference data lives (../shared/reference beside the checkout, or
$SEG_PERCEPTION_REFERENCE), and its numpy-only weight generator."""
import importlib.util
import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(os.environ.get('SEG_PERCEPTION_REFERENCE', _REPO.parent / 'shared' / 'reference'))
needs_reference = pytest.mark.skipif(not (REFERENCE / 'gen_weights.py').is_file(),
                                     reason=f'official reference data not found at {REFERENCE}')


def gen_weights():
    """The reference's gen_weights module (make_state_dict, read_keys_file)."""
    path = REFERENCE / 'gen_weights.py'
    if not path.is_file():
        pytest.skip(f'reference data not found at {REFERENCE}')
    spec = importlib.util.spec_from_file_location('gen_weights', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
